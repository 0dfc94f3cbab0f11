"""The CD2 key check against the fake gateway, over real HTTP on loopback.

No Django here: run with `-p no:django` while the settings are in flux.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from credentials.cd2 import (
    LOGIN_PATH,
    TABLES_PATH,
    USER_AGENT,
    CheckResult,
    Verdict,
    check_key,
    parse_region,
)
from devtools.fake_gateway import (
    DEMO_ACCEPTED_CLIENT_ID,
    DEMO_ACCEPTED_SECRET,
    DEMO_REJECTED_CLIENT_ID,
    DEMO_REJECTED_SECRET,
    FORBIDDEN_DISABLED_CLIENT_ID,
    FORBIDDEN_MAINTENANCE_CLIENT_ID,
    FORBIDDEN_NOT_ONBOARDED_CLIENT_ID,
    FORBIDDEN_REQUEST_TYPE_CLIENT_ID,
    GATEWAY_DOWN_CLIENT_ID,
    RATE_LIMITED_CLIENT_ID,
    TABLES,
    FakeGateway,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
# Canaries: distinctive enough that finding one anywhere means it leaked.
CLIENT_ID = "us-east-1#canary-0f9e8d7c-6b5a-4c3d-9e8f-123456789abc"
SECRET = "canary-S3cret-7f1e2d3c4b5a"
TIMEOUT = (2.0, 5.0)
QUICK_TIMEOUT = (0.5, 0.5)


@pytest.fixture
def gateway() -> Iterator[FakeGateway]:
    with FakeGateway(keys={CLIENT_ID: SECRET}) as running:
        yield running


def _check(
    gateway: FakeGateway,
    *,
    client_id: str = CLIENT_ID,
    secret: str = SECRET,
    timeout: tuple[float, float] = TIMEOUT,
) -> CheckResult:
    return check_key(client_id=client_id, secret=secret, base_url=gateway.url, timeout=timeout)


def _calls(gateway: FakeGateway) -> list[tuple[str, str]]:
    return [(request.method, request.path) for request in gateway.requests]


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _basic(client_id: str, secret: str) -> str:
    return base64.b64encode(f"{client_id}:{secret}".encode()).decode("ascii")


# -- verdicts -----------------------------------------------------------------


def test_a_good_key_reaches_cd2_and_counts_its_tables(gateway: FakeGateway) -> None:
    result = _check(gateway)

    assert result.verdict is Verdict.OK
    assert result.status_code == 200
    assert result.error_type is None
    assert result.retry_after is None
    assert result.table_count == len(TABLES) > 0
    assert result.summary == f"ok: {len(TABLES)} tables"
    assert _calls(gateway) == [("POST", LOGIN_PATH), ("GET", TABLES_PATH)]
    assert gateway.login_count == 1


def test_the_built_in_demo_key_is_accepted(gateway: FakeGateway) -> None:
    result = _check(gateway, client_id=DEMO_ACCEPTED_CLIENT_ID, secret=DEMO_ACCEPTED_SECRET)

    assert result.verdict is Verdict.OK


def test_a_bad_secret_is_rejected_without_echoing_it(gateway: FakeGateway) -> None:
    wrong = SECRET + "-wrong"

    result = _check(gateway, secret=wrong)

    assert result.verdict is Verdict.REJECTED
    assert result.status_code == 401
    assert result.error_type == "AuthenticationError"
    assert result.summary == "rejected (401 AuthenticationError)"
    assert wrong not in repr(result)
    assert _calls(gateway) == [("POST", LOGIN_PATH)]


def test_the_demo_rejected_key_is_rejected_like_any_unknown_key(gateway: FakeGateway) -> None:
    result = _check(gateway, client_id=DEMO_REJECTED_CLIENT_ID, secret=DEMO_REJECTED_SECRET)

    assert result.verdict is Verdict.REJECTED


def test_a_key_deleted_by_its_admin_is_rejected_from_then_on(gateway: FakeGateway) -> None:
    assert _check(gateway).verdict is Verdict.OK

    gateway.remove_key(CLIENT_ID)

    assert _check(gateway).verdict is Verdict.REJECTED


@pytest.mark.parametrize(
    ("client_id", "error_type"),
    [
        (FORBIDDEN_NOT_ONBOARDED_CLIENT_ID, "AccountNotOnboarded"),
        (FORBIDDEN_DISABLED_CLIENT_ID, "AccountDisabled"),
        (FORBIDDEN_MAINTENANCE_CLIENT_ID, "AccountUnderMaintenance"),
        (FORBIDDEN_REQUEST_TYPE_CLIENT_ID, "RequestTypeForbidden"),
    ],
)
def test_each_403_type_on_the_table_list_is_forbidden(gateway: FakeGateway, client_id: str, error_type: str) -> None:
    result = _check(gateway, client_id=client_id, secret="any-secret")

    assert result.verdict is Verdict.FORBIDDEN
    assert result.status_code == 403
    assert result.error_type == error_type
    assert result.summary == f"forbidden (403 {error_type})"
    # The login worked: the 403 came from the second step.
    assert _calls(gateway) == [("POST", LOGIN_PATH), ("GET", TABLES_PATH)]


def test_a_403_at_login_is_forbidden_too(gateway: FakeGateway) -> None:
    gateway.set_mode("forbidden")

    result = _check(gateway)

    assert result.verdict is Verdict.FORBIDDEN
    assert result.error_type == "AccountDisabled"
    assert _calls(gateway) == [("POST", LOGIN_PATH)]


def test_a_gateway_that_is_down_is_unavailable_with_its_retry_after(gateway: FakeGateway) -> None:
    gateway.set_mode("down", retry_after=120)

    result = _check(gateway)

    assert result.verdict is Verdict.UNAVAILABLE
    assert result.status_code == 503
    assert result.error_type == "ServerError"
    assert result.retry_after == 120.0
    assert result.summary == "unavailable (503 ServerError, retry after 120s)"


def test_the_gateway_down_demo_client_id_is_unavailable(gateway: FakeGateway) -> None:
    result = _check(gateway, client_id=GATEWAY_DOWN_CLIENT_ID, secret="any-secret")

    assert result.verdict is Verdict.UNAVAILABLE
    assert (result.status_code, result.error_type) == (503, "ServiceUnavailable")
    assert result.retry_after is None


def test_rate_limiting_is_unavailable_and_says_when_to_retry(gateway: FakeGateway) -> None:
    gateway.set_mode("rate_limited", retry_after=45)

    result = _check(gateway)

    assert result.verdict is Verdict.UNAVAILABLE
    assert (result.status_code, result.error_type) == (429, "TooManyRequests")
    assert result.retry_after == 45.0


def test_the_rate_limited_demo_client_id_asks_for_30_seconds(gateway: FakeGateway) -> None:
    result = _check(gateway, client_id=RATE_LIMITED_CLIENT_ID, secret="any-secret")

    assert (result.verdict, result.status_code, result.retry_after) == (Verdict.UNAVAILABLE, 429, 30.0)


def test_the_token_bucket_answers_429_once_its_burst_is_spent() -> None:
    # Two requests a second, burst of two: one key check (login + table list)
    # spends the burst, so an immediate second check is turned away.
    with FakeGateway(keys={CLIENT_ID: SECRET}, rate_limit_per_second=2) as limited:
        first = _check(limited)
        second = _check(limited)

    assert first.verdict is Verdict.OK
    assert (second.verdict, second.status_code) == (Verdict.UNAVAILABLE, 429)
    assert second.retry_after is not None
    assert second.retry_after >= 1


def test_a_garbage_body_is_unavailable_not_a_verdict(gateway: FakeGateway) -> None:
    gateway.set_mode("garbage")

    result = _check(gateway)

    assert result.verdict is Verdict.UNAVAILABLE
    assert (result.status_code, result.error_type) == (200, "UnexpectedResponse")


def test_a_closed_port_is_unavailable() -> None:
    result = check_key(
        client_id=CLIENT_ID, secret=SECRET, base_url=f"http://127.0.0.1:{_closed_port()}", timeout=TIMEOUT
    )

    assert result.verdict is Verdict.UNAVAILABLE
    assert result.status_code is None
    assert result.error_type == "ConnectionError"
    assert result.summary == "unavailable (ConnectionError)"


def test_a_hanging_gateway_times_out_and_stops_promptly() -> None:
    hanging = FakeGateway(keys={CLIENT_ID: SECRET}).start()
    try:
        hanging.set_mode("hang")
        started = time.monotonic()
        result = _check(hanging, timeout=QUICK_TIMEOUT)
        elapsed = time.monotonic() - started
    finally:
        stop_started = time.monotonic()
        hanging.stop()
        stop_took = time.monotonic() - stop_started

    assert result.verdict is Verdict.UNAVAILABLE
    assert (result.status_code, result.error_type) == (None, "Timeout")
    assert elapsed < 3
    # The handler thread was still hanging; stop() must wake it, not wait it out.
    assert stop_took < 3


def test_a_redirect_is_not_followed_with_the_credentials(gateway: FakeGateway) -> None:
    with FakeGateway(keys={CLIENT_ID: SECRET}) as elsewhere:
        gateway.set_mode("redirect", redirect_to=elsewhere.url + LOGIN_PATH)

        result = _check(gateway)

        assert elsewhere.requests == []
    assert result.verdict is Verdict.UNAVAILABLE
    assert (result.status_code, result.error_type) == (302, "UnexpectedResponse")


def test_a_trailing_slash_on_the_base_url_is_ignored(gateway: FakeGateway) -> None:
    result = check_key(client_id=CLIENT_ID, secret=SECRET, base_url=gateway.url + "/", timeout=TIMEOUT)

    assert result.verdict is Verdict.OK
    assert _calls(gateway) == [("POST", LOGIN_PATH), ("GET", TABLES_PATH)]


def test_a_shared_session_s_own_auth_does_not_replace_the_key(gateway: FakeGateway) -> None:
    with requests.Session() as session:
        session.auth = ("someone-else", "their-password")
        result = check_key(client_id=CLIENT_ID, secret=SECRET, base_url=gateway.url, timeout=TIMEOUT, session=session)

    assert result.verdict is Verdict.OK


def test_latency_slows_every_reply() -> None:
    with FakeGateway(keys={CLIENT_ID: SECRET}, latency=0.2) as slow:
        started = time.monotonic()
        result = _check(slow)
        elapsed = time.monotonic() - started

    assert result.verdict is Verdict.OK
    assert elapsed >= 0.4


def test_an_empty_secret_is_a_caller_error_and_sends_nothing(gateway: FakeGateway) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        _check(gateway, secret="")

    assert gateway.requests == []


# -- nothing leaks ---------------------------------------------------------------


OUTCOMES = {
    "ok": Verdict.OK,
    "wrong_secret": Verdict.REJECTED,
    "not_onboarded": Verdict.FORBIDDEN,
    "forbidden": Verdict.FORBIDDEN,
    "down": Verdict.UNAVAILABLE,
    "rate_limited": Verdict.UNAVAILABLE,
    "garbage": Verdict.UNAVAILABLE,
    "hang": Verdict.UNAVAILABLE,
    "redirect": Verdict.UNAVAILABLE,
    "refused": Verdict.UNAVAILABLE,
}


@pytest.mark.parametrize("outcome", OUTCOMES)
def test_no_result_field_and_no_log_record_reveals_the_key(
    gateway: FakeGateway, caplog: pytest.LogCaptureFixture, outcome: str
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="urllib3")
    client_id, secret, base_url, timeout = CLIENT_ID, SECRET, gateway.url, TIMEOUT
    if outcome == "wrong_secret":
        secret = SECRET + "-wrong"
    elif outcome == "not_onboarded":
        client_id = FORBIDDEN_NOT_ONBOARDED_CLIENT_ID
    elif outcome == "hang":
        gateway.set_mode("hang")
        timeout = QUICK_TIMEOUT
    elif outcome == "redirect":
        gateway.set_mode("redirect", redirect_to=f"http://127.0.0.1:{_closed_port()}{LOGIN_PATH}")
    elif outcome == "refused":
        base_url = f"http://127.0.0.1:{_closed_port()}"
    elif outcome != "ok":
        gateway.set_mode(outcome)

    result = check_key(client_id=client_id, secret=secret, base_url=base_url, timeout=timeout)

    assert result.verdict is OUTCOMES[outcome]
    records = caplog.records
    # The check logs its outcome and urllib3 logged the calls, so the capture
    # below did see the traffic.
    assert any(r.name == "credentials.cd2" and r.levelno == logging.INFO for r in records)
    assert any(r.name.startswith("urllib3") for r in records)
    # Messages are our own words, never an exception's text (which holds the URL).
    assert "127.0.0.1" not in result.message
    texts = [repr(result), result.message, result.summary, result.error_type or ""]
    texts += [r.getMessage() for r in records] + [repr(r.args) for r in records]
    for text in texts:
        for leak in (secret, client_id, _basic(client_id, secret), "Basic ", "Bearer ", "eyJ"):
            assert leak not in text, f"{leak!r} leaked into {text!r}"


# -- what goes over the wire, checked by a stand-in gateway that records it -------


class _RecordingHandler(BaseHTTPRequestHandler):
    server: _RecordingServer

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.server.seen.append(
            {"path": self.path, "headers": dict(self.headers.items()), "body": self.rfile.read(length)}
        )
        status, headers, body = self.server.reply
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _RecordingServer(ThreadingHTTPServer):
    seen: list[dict[str, Any]]
    reply: tuple[int, dict[str, str], bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"


@pytest.fixture
def recorder() -> Iterator[_RecordingServer]:
    server = _RecordingServer(("127.0.0.1", 0), _RecordingHandler)
    server.seen = []
    server.reply = _json_reply(401, {"error": {"type": "AuthenticationError", "uuid": "x", "message": "no"}})
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def _json_reply(status: int, payload: Any, **headers: str) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json", **headers}, json.dumps(payload).encode()


def test_the_login_request_is_exactly_what_the_official_client_sends(recorder: _RecordingServer) -> None:
    check_key(client_id=CLIENT_ID, secret=SECRET, base_url=recorder.url, timeout=TIMEOUT)

    [login] = recorder.seen
    assert login["path"] == LOGIN_PATH
    assert login["headers"]["Authorization"] == "Basic " + _basic(CLIENT_ID, SECRET)
    assert login["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
    assert login["body"] == b"grant_type=client_credentials"
    assert login["headers"]["User-Agent"] == USER_AGENT


def test_the_fake_gateway_refuses_a_login_that_differs_from_the_official_client(gateway: FakeGateway) -> None:
    url = gateway.url + LOGIN_PATH
    basic = (CLIENT_ID, SECRET)  # requests sends a tuple as Basic auth

    no_grant = requests.post(url, auth=basic, timeout=TIMEOUT)
    json_grant = requests.post(url, auth=basic, json={"grant_type": "client_credentials"}, timeout=TIMEOUT)
    wrong_grant = requests.post(url, auth=basic, data={"grant_type": "password"}, timeout=TIMEOUT)
    creds_in_form = requests.post(
        url,
        data={"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": SECRET},
        timeout=TIMEOUT,
    )
    good = requests.post(url, auth=basic, data={"grant_type": "client_credentials"}, timeout=TIMEOUT)

    for refused in (no_grant, json_grant, wrong_grant):
        assert (refused.status_code, refused.json()["error"]["type"]) == (400, "ValidationError")
    assert (creds_in_form.status_code, creds_in_form.json()["error"]["type"]) == (401, "AuthenticationError")
    assert good.status_code == 200
    token = good.json()
    assert (token["token_type"], token["expires_in"]) == ("Bearer", 3600)
    assert token["access_token"].count(".") == 2  # JWT-shaped, like the real gateway's


def test_the_fake_gateway_lists_tables_only_for_a_token_it_issued(gateway: FakeGateway) -> None:
    login = requests.post(
        gateway.url + LOGIN_PATH,
        auth=(CLIENT_ID, SECRET),
        data={"grant_type": "client_credentials"},
        timeout=TIMEOUT,
    )
    token = login.json()["access_token"]
    url = gateway.url + TABLES_PATH

    no_token = requests.get(url, timeout=TIMEOUT)
    made_up = requests.get(url, headers={"Authorization": "Bearer " + token[:-4] + "AAAA"}, timeout=TIMEOUT)
    issued = requests.get(url, headers={"Authorization": "Bearer " + token}, timeout=TIMEOUT)

    assert no_token.status_code == made_up.status_code == 401
    assert issued.status_code == 200
    assert issued.json() == {"tables": list(TABLES)}


@pytest.mark.parametrize(
    ("secret", "error"),
    [
        # An identifier-like secret echoed as the error type.
        ("EchoedSecretValue42", {"type": "EchoedSecretValue42", "message": f"bad {CLIENT_ID}"}),
        # A UUID-like secret echoed as the error id.
        ("0f9e8d7c-6b5a-4c3d-9e8f-123456789abc", {"uuid": "0f9e8d7c-6b5a-4c3d-9e8f-123456789abc"}),
        # The Client ID itself echoed everywhere.
        (SECRET, {"type": CLIENT_ID, "uuid": CLIENT_ID, "message": CLIENT_ID}),
    ],
)
def test_gateway_text_that_echoes_the_key_is_not_copied_into_the_result(
    recorder: _RecordingServer, secret: str, error: dict[str, str]
) -> None:
    recorder.reply = _json_reply(401, {"error": error})

    result = check_key(client_id=CLIENT_ID, secret=secret, base_url=recorder.url, timeout=TIMEOUT)

    assert result.verdict is Verdict.REJECTED
    assert result.error_type == "AuthenticationError"
    for text in (repr(result), result.summary):
        assert secret not in text
        assert CLIENT_ID not in text


def test_a_gateway_error_id_is_kept_for_support(recorder: _RecordingServer) -> None:
    error_id = "5d6e7f80-1a2b-4c3d-8e9f-0a1b2c3d4e5f"
    recorder.reply = _json_reply(403, {"error": {"type": "AccountNotOnboarded", "uuid": error_id, "message": "x"}})

    result = check_key(client_id=CLIENT_ID, secret=SECRET, base_url=recorder.url, timeout=TIMEOUT)

    assert result.verdict is Verdict.FORBIDDEN
    assert error_id in result.message


def test_a_bare_401_without_the_gateway_error_body_is_not_a_verdict(recorder: _RecordingServer) -> None:
    recorder.reply = (401, {"Content-Type": "text/html"}, b"<html>Unauthorized</html>")

    result = check_key(client_id=CLIENT_ID, secret=SECRET, base_url=recorder.url, timeout=TIMEOUT)

    assert result.verdict is Verdict.UNAVAILABLE
    assert (result.status_code, result.error_type) == (401, "UnexpectedResponse")


def test_a_403_of_a_type_cd2_does_not_define_is_not_a_verdict(recorder: _RecordingServer) -> None:
    recorder.reply = _json_reply(403, {"message": "Forbidden"})

    result = check_key(client_id=CLIENT_ID, secret=SECRET, base_url=recorder.url, timeout=TIMEOUT)

    assert result.verdict is Verdict.UNAVAILABLE
    assert (result.status_code, result.error_type) == (403, "UnexpectedResponse")


def test_a_retry_after_given_as_an_http_date_is_read_as_seconds(recorder: _RecordingServer) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    recorder.reply = _json_reply(429, {"error": {"type": "TooManyRequests"}}, **{"Retry-After": when})

    result = check_key(client_id=CLIENT_ID, secret=SECRET, base_url=recorder.url, timeout=TIMEOUT)

    assert result.verdict is Verdict.UNAVAILABLE
    assert result.retry_after is not None
    assert 100 <= result.retry_after <= 120


# -- parse_region ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("client_id", "region"),
    [
        ("us-east-1#10000000-0000-4000-8000-000000000001", "us-east-1"),
        ("eu-west-1#abc_DEF-123", "eu-west-1"),
        ("ap-southeast-2#x", "ap-southeast-2"),
        ("some-new-region-9#x", "some-new-region-9"),  # the list of regions is open
        ("10000000-0000-4000-8000-000000000001", None),  # no region part
        ("", None),
        ("#abc", None),
        ("us-east-1#", None),
        ("us-east-1#abc#def", None),
        ("us-east-1#abc:secret", None),
        (" us-east-1#abc", None),
        ("us-east-1#abc\n", None),
        ("üs-east-1#abc", None),  # ASCII only, unlike a bare \w
    ],
)
def test_parse_region_reads_the_region_of_a_well_formed_client_id(client_id: str, region: str | None) -> None:
    assert parse_region(client_id) == region


# -- the command line ------------------------------------------------------------------


def test_the_fake_gateway_imports_without_django() -> None:
    code = "import sys, devtools.fake_gateway; print(sorted(m for m in sys.modules if m.startswith('django')))"
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}

    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=30, check=True
    )

    assert out.stdout.strip() == "[]"


def test_the_command_line_serves_demo_env_and_flag_keys_until_terminated() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env["CD2_FAKE_KEYS"] = "us-east-1#env-key:env-secret"
    process = subprocess.Popen(
        [sys.executable, "-m", "devtools.fake_gateway", "--port", "0", "--key", "us-east-1#flag-key:a,b:c"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:")
        verdicts = [
            check_key(client_id=client_id, secret=secret, base_url=base_url, timeout=TIMEOUT).verdict
            for client_id, secret in [
                (DEMO_ACCEPTED_CLIENT_ID, DEMO_ACCEPTED_SECRET),
                ("us-east-1#env-key", "env-secret"),
                ("us-east-1#flag-key", "a,b:c"),  # --key keeps commas and colons in the secret
                ("us-east-1#flag-key", "a"),
            ]
        ]
    finally:
        process.terminate()
        returncode = process.wait(timeout=10)
        stdout, stderr = process.communicate()

    assert verdicts == [Verdict.OK, Verdict.OK, Verdict.OK, Verdict.REJECTED]
    assert returncode == 0, stderr
    # Extra keys' secrets are never printed.
    assert "env-secret" not in stdout + stderr
    assert "a,b:c" not in stdout + stderr
