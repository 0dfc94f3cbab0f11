"""Check a Canvas Data 2 (Instructure DAP) key against the live gateway.

The check does what the official client (`instructure-dap-client`) does before
any query: log in with the key, then list the tables of the `canvas`
namespace. Only a 200 on both proves that the key really reaches CD2.

Every outcome comes back as a `CheckResult`; nothing here raises for network
errors, HTTP errors or odd bodies. The result, its summary and the log lines
are safe to store: they never hold the Client ID, the secret, the access token
or an Authorization header. Messages are our own wording; of the gateway's
error body only its machine-readable `type` and `uuid` are kept, and only when
they look like identifiers that cannot carry what we sent.
"""

from __future__ import annotations

import base64
import enum
import json
import logging
import math
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import requests
from requests.auth import AuthBase

from credentials.signals import gateway_request, key_checked

logger = logging.getLogger(__name__)

USER_AGENT = "edpotential-cd2-registry/1.0"
LOGIN_PATH = "/ids/auth/login"
TABLES_PATH = "/dap/query/canvas/table"
# (connect, read) in seconds: a form submission waits on this, so it must stay
# well under a browser's patience even when the gateway is slow.
DEFAULT_TIMEOUT: tuple[float, float] = (5.0, 15.0)

# The official client's pattern for "<region>#<id>". It uses re.match; we want
# the whole Client ID to fit, in ASCII, so stray text is not read as a region.
_CLIENT_ID_RE = re.compile(r"([\w-]+)#([\w-]+)", re.ASCII)

# The 403 types the official client knows. Any other 403 (a WAF page, a new
# type) is not a verdict on the key, just as the official client treats it as
# a ServerError.
FORBIDDEN_TYPES = frozenset(
    {"AccountDisabled", "AccountNotOnboarded", "AccountUnderMaintenance", "RequestTypeForbidden"}
)

# What we accept from a gateway error body into our records. The gateway's
# free-text message is never kept: it could echo what we sent.
_ERROR_TYPE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.]{0,63}", re.ASCII)
_ERROR_UUID_RE = re.compile(r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}", re.ASCII)
# An access token is a header value; printable ASCII without spaces keeps it
# from smuggling anything into the next request's headers.
_TOKEN_RE = re.compile(r"[!-~]{1,16384}", re.ASCII)

_FORBIDDEN_MESSAGES = {
    "AccountDisabled": "The key was recognised, but Canvas Data 2 access is disabled for this account",
    "AccountNotOnboarded": "The key was recognised, but this account is not onboarded to Canvas Data 2",
    "AccountUnderMaintenance": "The key was recognised, but the account is under maintenance at Instructure",
    "RequestTypeForbidden": "The key was recognised, but Canvas Data 2 forbids this request for the account",
}


class Verdict(enum.StrEnum):
    OK = "ok"  # login 200 + table list 200: the key really reaches CD2
    REJECTED = "rejected"  # 401 at login: bad Client ID or Secret
    FORBIDDEN = "forbidden"  # 403 with a known type: real key, no CD2 access
    UNAVAILABLE = "unavailable"  # the gateway's problem, not a verdict on the key


@dataclass(frozen=True)
class CheckResult:
    verdict: Verdict
    status_code: int | None
    error_type: str | None
    message: str
    retry_after: float | None
    table_count: int | None

    @property
    def summary(self) -> str:
        """One line for a database text field, e.g. "rejected (401 AuthenticationError)"."""
        if self.verdict is Verdict.OK:
            count = self.table_count or 0
            return f"ok: {count} table{'' if count == 1 else 's'}"
        details = [str(part) for part in (self.status_code, self.error_type) if part is not None]
        text = " ".join(details)
        if self.retry_after is not None:
            text += f", retry after {math.ceil(self.retry_after)}s"
        return f"{self.verdict.value} ({text})" if text else self.verdict.value


def parse_region(client_id: str) -> str | None:
    """Return the region of a "<region>#<id>" Client ID, or None if it has another shape."""
    match = _CLIENT_ID_RE.fullmatch(client_id)
    return match.group(1) if match else None


def check_key(
    *,
    client_id: str,
    secret: str,
    base_url: str,
    timeout: tuple[float, float] = DEFAULT_TIMEOUT,
    session: requests.Session | None = None,
) -> CheckResult:
    """Log in to the CD2 gateway with the key and list the canvas tables.

    Raises ValueError only for an empty Client ID or secret (a caller's bug);
    every network or gateway outcome is returned as a CheckResult.
    """
    if not client_id or not secret:
        raise ValueError("client_id and secret must both be non-empty")
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode("ascii")
    call = _Call(
        base_url=base_url.rstrip("/"),
        timeout=timeout,
        sensitive=[client_id, secret, basic],
    )
    if session is None:
        with requests.Session() as own_session:
            result = call.run(own_session, basic=basic)
    else:
        result = call.run(session, basic=basic)
    key_checked.send(sender=Verdict, verdict=result.verdict.value)
    logger.info(
        "CD2 key check: verdict=%s status=%s error_type=%s",
        result.verdict.value,
        result.status_code,
        result.error_type,
    )
    return result


class _HeaderAuth(AuthBase):
    """Set the Authorization header through requests' auth hook.

    Passing it as `auth=` also stops requests from replacing it with a .netrc
    entry, and the repr never shows the credential.
    """

    def __init__(self, value: str) -> None:
        self._value = value

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = self._value
        return request

    def __repr__(self) -> str:
        return "<_HeaderAuth (hidden)>"


class _Call:
    """One key check: holds what the two steps share, including what must not leak."""

    def __init__(self, *, base_url: str, timeout: tuple[float, float], sensitive: list[str]) -> None:
        self.base_url = base_url
        self.timeout = timeout
        self.sensitive = sensitive

    def run(self, session: requests.Session, *, basic: str) -> CheckResult:
        step = "login"
        try:
            # Redirects are not followed: the Basic credentials must reach the
            # gateway we were configured with and nothing else.
            login = self._timed(
                session.post,
                self.base_url + LOGIN_PATH,
                data={"grant_type": "client_credentials"},
                auth=_HeaderAuth("Basic " + basic),
                headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
                timeout=self.timeout,
                allow_redirects=False,
            )
            if not 200 <= login.status_code < 300:
                return self._failure(login, step=step)
            token = _access_token(_json_body(login))
            if token is None:
                return _unexpected(login.status_code, step=step)
            self.sensitive.append(token)

            step = "table list"
            tables = self._timed(
                session.get,
                self.base_url + TABLES_PATH,
                auth=_HeaderAuth("Bearer " + token),
                headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
                timeout=self.timeout,
                allow_redirects=False,
            )
            if not 200 <= tables.status_code < 300:
                return self._failure(tables, step=step)
            names = _table_names(_json_body(tables))
            if names is None:
                return _unexpected(tables.status_code, step=step)
        except requests.RequestException as exc:
            return _network_failure(exc, step=step)
        return CheckResult(
            verdict=Verdict.OK,
            status_code=tables.status_code,
            error_type=None,
            message=f"The key reaches Canvas Data 2: {len(names)} tables listed.",
            retry_after=None,
            table_count=len(names),
        )

    @staticmethod
    def _timed(method, url: str, **kwargs) -> requests.Response:
        """One request to the gateway, announced with its status (None: no answer) and duration (metrics)."""
        started = time.perf_counter()
        status_code = None
        try:
            response = method(url, **kwargs)
            status_code = response.status_code
            return response
        finally:
            gateway_request.send(sender=_Call, status_code=status_code, seconds=time.perf_counter() - started)

    def _failure(self, response: requests.Response, *, step: str) -> CheckResult:
        status = response.status_code
        has_error_body, error_type, error_id = self._gateway_error(response)
        reference = f" (gateway error id {error_id})" if error_id else ""

        if 300 <= status < 400:
            return CheckResult(
                verdict=Verdict.UNAVAILABLE,
                status_code=status,
                error_type="UnexpectedResponse",
                message=f"The CD2 gateway answered the {step} with a redirect; it was not followed.",
                retry_after=None,
                table_count=None,
            )
        # Like the official client, a 401 counts only with the gateway's own
        # JSON error body; a bare 401 from a proxy says nothing about the key.
        # A 401 on the table list, right after a successful login, is the
        # gateway contradicting itself, not a verdict either.
        if status == 401 and step == "login" and has_error_body:
            return CheckResult(
                verdict=Verdict.REJECTED,
                status_code=status,
                error_type=error_type or "AuthenticationError",
                message=f"CD2 did not accept this Client ID and Secret{reference}.",
                retry_after=None,
                table_count=None,
            )
        if status == 403 and error_type in FORBIDDEN_TYPES:
            return CheckResult(
                verdict=Verdict.FORBIDDEN,
                status_code=status,
                error_type=error_type,
                message=f"{_FORBIDDEN_MESSAGES[error_type]}{reference}.",
                retry_after=None,
                table_count=None,
            )
        retry_after = None
        if status in (429, 503):
            retry_after = _retry_after_seconds(response.headers.get("Retry-After"))
        if status == 429:
            fallback = "TooManyRequests"
            message = f"The CD2 gateway is rate limiting requests at the {step}"
        elif status >= 500:
            fallback = "ServerError"
            message = f"The CD2 gateway had a server error ({status}) at the {step}"
        else:
            fallback = "UnexpectedResponse"
            message = f"The CD2 gateway sent an unexpected {status} at the {step}"
        if retry_after is not None:
            message += f"; retry after {math.ceil(retry_after)}s"
        return CheckResult(
            verdict=Verdict.UNAVAILABLE,
            status_code=status,
            error_type=error_type or fallback,
            message=f"{message}{reference}.",
            retry_after=retry_after,
            table_count=None,
        )

    def _gateway_error(self, response: requests.Response) -> tuple[bool, str | None, str | None]:
        """Read `{"error": {"type", "uuid", ...}}`: (has error body, safe type, safe uuid)."""
        body = _json_body(response)
        if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
            return False, None, None
        error = body["error"]
        return (
            True,
            self._safe(error.get("type"), _ERROR_TYPE_RE),
            self._safe(error.get("uuid"), _ERROR_UUID_RE),
        )

    def _safe(self, value: Any, pattern: re.Pattern[str]) -> str | None:
        # A gateway (or something posing as one) could echo our input back; a
        # value that overlaps anything we sent is dropped, however plausible.
        if not isinstance(value, str) or not pattern.fullmatch(value):
            return None
        if any(value in secret or secret in value for secret in self.sensitive):
            return None
        return value


def _json_body(response: requests.Response) -> Any:
    """The parsed JSON body, or None when the gateway did not send JSON.

    As in the official client, only an application/json response is parsed.
    """
    content_type = response.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    if content_type != "application/json":
        return None
    try:
        return json.loads(response.content)
    except (ValueError, RecursionError):
        return None


def _access_token(body: Any) -> str | None:
    token = body.get("access_token") if isinstance(body, dict) else None
    if isinstance(token, str) and _TOKEN_RE.fullmatch(token):
        return token
    return None


def _table_names(body: Any) -> list[str] | None:
    tables = body.get("tables") if isinstance(body, dict) else None
    if isinstance(tables, list) and all(isinstance(name, str) for name in tables):
        return tables
    return None


def _unexpected(status: int, *, step: str) -> CheckResult:
    return CheckResult(
        verdict=Verdict.UNAVAILABLE,
        status_code=status,
        error_type="UnexpectedResponse",
        message=f"The CD2 gateway sent a {status} with an unexpected body at the {step}.",
        retry_after=None,
        table_count=None,
    )


def _network_failure(exc: requests.RequestException, *, step: str) -> CheckResult:
    # Only the exception's class name is used: its text can hold the URL and,
    # through exc.request, everything we sent.
    name = type(exc).__name__
    if isinstance(exc, requests.Timeout):
        error_type = "Timeout"
        message = f"The CD2 gateway did not answer in time at the {step} ({name})."
    elif isinstance(exc, requests.ConnectionError):
        error_type = "ConnectionError"
        message = f"Could not connect to the CD2 gateway at the {step} ({name})."
    else:
        error_type = "RequestError"
        message = f"The request to the CD2 gateway failed at the {step} ({name})."
    return CheckResult(
        verdict=Verdict.UNAVAILABLE,
        status_code=None,
        error_type=error_type,
        message=message,
        retry_after=None,
        table_count=None,
    )


def _retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP-date."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # "-0000" dates come back naive; HTTP-dates are UTC
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
        return max(seconds, 0.0)
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


def check_key_with_settings(*, client_id: str, secret: str) -> CheckResult:
    """check_key against settings.CD2_API_URL with the configured (connect, read) timeouts."""
    from django.conf import settings

    timeout = (settings.CD2_CONNECT_TIMEOUT, settings.CD2_READ_TIMEOUT)
    return check_key(client_id=client_id, secret=secret, base_url=settings.CD2_API_URL, timeout=timeout)
