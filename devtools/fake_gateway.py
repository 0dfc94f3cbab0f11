"""A fake Canvas Data 2 (Instructure DAP) gateway on loopback.

For development, tests and benchmarks: it answers the two calls a key check
makes, as the real gateway does (see shared/CD2_API.md):

- ``POST /ids/auth/login`` with ``Authorization: Basic base64(id:secret)`` and
  the form body ``grant_type=client_credentials`` returns a JWT-like
  ``access_token`` (unsigned, not a real JWT; it carries an ``exp``).
- ``GET /dap/query/canvas/table`` with ``Authorization: Bearer <token>``
  returns ``{"tables": [...]}``.
- Errors are ``{"error": {"type", "uuid", "message"}}``; an unknown key gets
  401 ``AuthenticationError``, a missing or wrong ``grant_type`` 400
  ``ValidationError``.

Demo keys (public, for the README, ``make run`` and trying the form by hand).
With the special Client IDs any secret works; each shows one outcome:

- ``us-east-1#10000000-0000-4000-8000-000000000001`` / ``demo-secret-accepted-1f4b9c``:
  accepted (ok).
- ``us-east-1#10000000-0000-4000-8000-000000000002`` / ``demo-secret-rejected-000``:
  401 AuthenticationError, like any unknown key (no demo institution holds it).
- ``us-east-1#forbidden-not-onboarded``: login ok, then the table list gets
  403 AccountNotOnboarded. Likewise ``us-east-1#forbidden-disabled``
  (AccountDisabled), ``us-east-1#forbidden-maintenance``
  (AccountUnderMaintenance) and ``us-east-1#forbidden-request-type``
  (RequestTypeForbidden).
- ``us-east-1#gateway-down``: login gets 503 ServiceUnavailable.
- ``us-east-1#rate-limited``: login gets 429 TooManyRequests with
  ``Retry-After: 30``.

More accepted keys come from ``CD2_FAKE_KEYS="id:secret,id:secret"``, from
``--key ID:SECRET`` (repeatable; a secret containing a comma can only be given
this way) and from ``--keys-file PATH`` (one ``ID:SECRET`` a line, ``#``
comments; ``make run`` passes the file ``load_demo_data`` writes, so the demo
keys that should pass do). The running gateway reads the file again when it
changes: ``python manage.py demo_key SLUG`` adds a fresh key there and prints
it, a key this gateway accepts and no institution holds yet.

Run it without Django::

    python -m devtools.fake_gateway --host 127.0.0.1 --port 8765 --keys-file var/fake-gateway-keys.txt

In tests and benchmarks, use ``FakeGateway`` in-process (port 0 picks a free
port)::

    with FakeGateway(keys={"us-east-1#x": "s3cret"}) as gateway:
        check_key(client_id="us-east-1#x", secret="s3cret", base_url=gateway.url)

The gateway never records or logs headers or bodies: ``requests`` holds only
(method, path, monotonic timestamp).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hmac
import json
import logging
import math
import os
import secrets
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

logger = logging.getLogger(__name__)

LOGIN_PATH = "/ids/auth/login"
TABLES_PATH = "/dap/query/canvas/table"

DEMO_ACCEPTED_CLIENT_ID = "us-east-1#10000000-0000-4000-8000-000000000001"
DEMO_ACCEPTED_SECRET = "demo-secret-accepted-1f4b9c"  # noqa: S105 (public demo value, fake gateway only)
# Never added to the key store: it stands for "any unknown key".
DEMO_REJECTED_CLIENT_ID = "us-east-1#10000000-0000-4000-8000-000000000002"
DEMO_REJECTED_SECRET = "demo-secret-rejected-000"  # noqa: S105 (public demo value, fake gateway only)

FORBIDDEN_NOT_ONBOARDED_CLIENT_ID = "us-east-1#forbidden-not-onboarded"
FORBIDDEN_DISABLED_CLIENT_ID = "us-east-1#forbidden-disabled"
FORBIDDEN_MAINTENANCE_CLIENT_ID = "us-east-1#forbidden-maintenance"
FORBIDDEN_REQUEST_TYPE_CLIENT_ID = "us-east-1#forbidden-request-type"
GATEWAY_DOWN_CLIENT_ID = "us-east-1#gateway-down"
RATE_LIMITED_CLIENT_ID = "us-east-1#rate-limited"

MODES = frozenset({"down", "rate_limited", "forbidden", "garbage", "hang", "redirect"})
DEFAULT_RETRY_AFTER = 30
# Longer than any read timeout a client here uses; stop() cuts it short.
HANG_SECONDS = 300.0
# How long stop() waits for each handler thread; they are woken, so this is a
# bound for a stuck one, not a delay.
STOP_JOIN_SECONDS = 5.0
TOKEN_LIFETIME = 3600
# Bodies are a short form or nothing; anything bigger is not a key check.
MAX_BODY_BYTES = 64 * 1024

# A plausible slice of the CD2 canvas namespace; the count is what callers see.
TABLES = (
    "accounts",
    "assignments",
    "attachments",
    "context_modules",
    "course_sections",
    "courses",
    "discussion_topics",
    "enrollment_terms",
    "enrollments",
    "grading_periods",
    "groups",
    "learning_outcomes",
    "pseudonyms",
    "quizzes",
    "roles",
    "scores",
    "submission_comments",
    "submissions",
    "users",
    "wiki_pages",
)


class _Special(NamedTuple):
    step: str  # "login" or "tables": where the behaviour shows
    status: int
    error_type: str
    retry_after: int | None = None


SPECIAL_CLIENT_IDS: dict[str, _Special] = {
    FORBIDDEN_NOT_ONBOARDED_CLIENT_ID: _Special("tables", 403, "AccountNotOnboarded"),
    FORBIDDEN_DISABLED_CLIENT_ID: _Special("tables", 403, "AccountDisabled"),
    FORBIDDEN_MAINTENANCE_CLIENT_ID: _Special("tables", 403, "AccountUnderMaintenance"),
    FORBIDDEN_REQUEST_TYPE_CLIENT_ID: _Special("tables", 403, "RequestTypeForbidden"),
    GATEWAY_DOWN_CLIENT_ID: _Special("login", 503, "ServiceUnavailable"),
    RATE_LIMITED_CLIENT_ID: _Special("login", 429, "TooManyRequests", DEFAULT_RETRY_AFTER),
}


class RecordedRequest(NamedTuple):
    method: str
    path: str
    timestamp: float  # time.monotonic(), for measuring spacing between calls


@dataclass(frozen=True)
class _Reply:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def _json_reply(status: int, payload: Any, headers: dict[str, str] | None = None) -> _Reply:
    return _Reply(status, json.dumps(payload).encode(), "application/json", headers or {})


def _error_reply(status: int, error_type: str, message: str, headers: dict[str, str] | None = None) -> _Reply:
    error = {"type": error_type, "uuid": str(uuid.uuid4()), "message": message}
    return _json_reply(status, {"error": error}, headers)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _new_token(*, issued_at: float, expires_at: float) -> str:
    # Shaped like the gateway's JWT so code that peeks at `exp` works; the
    # signature is random bytes, since nobody here verifies it.
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = {
        "iss": "fake-cd2-gateway",
        "iat": int(issued_at),
        "exp": int(expires_at),
        "jti": secrets.token_hex(16),
    }
    return f"{header}.{_b64url(json.dumps(claims).encode())}.{_b64url(secrets.token_bytes(32))}"


class _TokenBucket:
    """Allows `rate` requests a second with bursts of up to max(1, rate)."""

    def __init__(self, rate: float) -> None:
        if rate <= 0:
            raise ValueError("rate_limit_per_second must be positive")
        self._rate = rate
        self._capacity = max(1.0, rate)
        self._tokens = self._capacity
        self._updated = time.monotonic()
        self._lock = threading.Lock()

    def take(self) -> float | None:
        """Take one token; return None if allowed, else the seconds until one is free."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self._capacity, self._tokens + (now - self._updated) * self._rate)
            self._updated = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return None
            return (1.0 - self._tokens) / self._rate


class FakeGateway:
    """The fake gateway, run in a background thread of this process."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        keys: dict[str, str] | None = None,
        include_demo_keys: bool = True,
        latency: float = 0.0,
        rate_limit_per_second: float | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self._include_demo_keys = include_demo_keys
        self._latency = latency
        self._bucket = _TokenBucket(rate_limit_per_second) if rate_limit_per_second else None
        self._lock = threading.Lock()
        self._keys: dict[str, str] = {}
        self._tokens: dict[str, tuple[str, float]] = {}  # token -> (client_id, expires_at)
        self._requests: list[RecordedRequest] = []
        self._mode: str | None = None
        self._retry_after: int | None = None
        self._redirect_to: str | None = None
        self._stopping = threading.Event()
        # Open connections and the handler thread serving each, so stop() can
        # cut them and wait for the threads (daemon threads, which the stdlib
        # server does not join, so a gateway left running never blocks exit).
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        if include_demo_keys:
            self.add_key(DEMO_ACCEPTED_CLIENT_ID, DEMO_ACCEPTED_SECRET)
        for client_id, secret in (keys or {}).items():
            self.add_key(client_id, secret)

    # -- lifecycle -------------------------------------------------------

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the fake gateway is not started")
        host, port = self._server.server_address[:2]
        return f"http://[{host}]:{port}" if ":" in str(host) else f"http://{host}:{port}"

    def start(self) -> FakeGateway:
        if self._server is not None:
            raise RuntimeError("the fake gateway is already started")
        self._stopping.clear()
        server_class = _Server6 if ":" in self._host else _Server
        self._server = server_class((self._host, self._port), _Handler)
        self._server.gateway = self
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-cd2-gateway",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        # Wake hanging and sleeping handlers and cut their connections, so
        # that when stop() returns no handler is still running.
        self._stopping.set()
        server.shutdown()
        with self._lock:
            connections = list(self._connections.items())
        for connection, _ in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for _, handler_thread in connections:
            handler_thread.join(timeout=STOP_JOIN_SECONDS)
        server.server_close()
        if thread is not None:
            thread.join()
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeGateway:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- control ---------------------------------------------------------

    def add_key(self, client_id: str, secret: str) -> None:
        if not client_id or not secret:
            raise ValueError("client_id and secret must both be non-empty")
        if ":" in client_id:
            raise ValueError("a Client ID cannot contain ':' (Basic auth splits on it)")
        with self._lock:
            self._keys[client_id] = secret

    def remove_key(self, client_id: str) -> None:
        """Forget a key and revoke its tokens, as if its admin deleted it."""
        with self._lock:
            self._keys.pop(client_id, None)
            self._tokens = {t: v for t, v in self._tokens.items() if v[0] != client_id}

    def set_mode(self, mode: str | None, *, retry_after: int | None = None, redirect_to: str | None = None) -> None:
        """Make every request fail the same way, or go back to normal with None.

        "down": 503 with an HTML body (Retry-After only if given);
        "rate_limited": 429 TooManyRequests with Retry-After (default 30);
        "forbidden": 403 AccountDisabled; "garbage": 200 with a non-JSON body
        labelled application/json; "hang": no answer until HANG_SECONDS pass
        or stop(); "redirect": 302 to `redirect_to`.
        """
        if mode is not None and mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {sorted(MODES)}")
        if mode == "redirect" and not redirect_to:
            raise ValueError('mode "redirect" needs redirect_to')
        with self._lock:
            self._mode = mode
            self._retry_after = retry_after
            self._redirect_to = redirect_to

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of the requests received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def login_count(self) -> int:
        """Login requests received, whatever their outcome."""
        with self._lock:
            return sum(1 for r in self._requests if r.method == "POST" and r.path == LOGIN_PATH)

    # -- request handling (called from handler threads) ------------------

    def _track(self, connection: socket.socket, *, open_: bool) -> None:
        with self._lock:
            if open_:
                self._connections[connection] = threading.current_thread()
            else:
                self._connections.pop(connection, None)

    def _record(self, method: str, path: str) -> None:
        with self._lock:
            self._requests.append(RecordedRequest(method, path, time.monotonic()))

    def _dispatch(self, method: str, path: str, headers: Any, body: bytes) -> _Reply | None:
        """The reply to one request, or None to close the connection unanswered."""
        if self._latency and self._stopping.wait(self._latency):
            return None
        with self._lock:
            mode, retry_after, redirect_to = self._mode, self._retry_after, self._redirect_to

        if mode == "hang":
            self._stopping.wait(HANG_SECONDS)
            return None
        if mode == "down":
            extra = {"Retry-After": str(retry_after)} if retry_after is not None else {}
            page = b"<html><body><h1>503 Service Unavailable</h1></body></html>"
            return _Reply(503, page, "text/html", extra)
        if mode == "rate_limited":
            seconds = DEFAULT_RETRY_AFTER if retry_after is None else retry_after
            return _error_reply(429, "TooManyRequests", "Rate limit exceeded", {"Retry-After": str(seconds)})
        if mode == "forbidden":
            return _error_reply(403, "AccountDisabled", "Account is disabled")
        if mode == "garbage":
            return _Reply(200, b"<html>this is not JSON</html>", "application/json")
        if mode == "redirect":
            return _Reply(302, b"", "text/plain", {"Location": redirect_to or "/"})

        if self._bucket is not None:
            wait = self._bucket.take()
            if wait is not None:
                seconds = str(max(1, math.ceil(wait)))
                return _error_reply(429, "TooManyRequests", "Rate limit exceeded", {"Retry-After": seconds})

        if path == LOGIN_PATH:
            if method != "POST":
                return _error_reply(405, "MethodNotAllowed", "Use POST", {"Allow": "POST"})
            return self._login(headers, body)
        if path == TABLES_PATH:
            if method != "GET":
                return _error_reply(405, "MethodNotAllowed", "Use GET", {"Allow": "GET"})
            return self._tables(headers)
        return _error_reply(404, "NotFoundError", "No such endpoint")

    def _login(self, headers: Any, body: bytes) -> _Reply:
        content_type = headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        form = {}
        if content_type == "application/x-www-form-urlencoded":
            form = parse_qs(body.decode("ascii", "replace"), keep_blank_values=True)
        if form.get("grant_type") != ["client_credentials"]:
            return _error_reply(400, "ValidationError", "grant_type=client_credentials form body is required")

        scheme, _, encoded = headers.get("Authorization", "").partition(" ")
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            decoded = ""
        client_id, colon, secret = decoded.partition(":")
        if scheme.lower() != "basic" or not colon or not client_id or not secret:
            return _error_reply(401, "AuthenticationError", "Basic client credentials are required")

        special = self._special(client_id)
        if special is not None and special.step == "login":
            return self._special_reply(special)
        with self._lock:
            expected = self._keys.get(client_id)
        known = expected is not None and hmac.compare_digest(expected.encode(), secret.encode())
        if special is None and not known:
            return _error_reply(401, "AuthenticationError", "Invalid client credentials")

        now = time.time()
        token = _new_token(issued_at=now, expires_at=now + TOKEN_LIFETIME)
        with self._lock:
            self._tokens[token] = (client_id, now + TOKEN_LIFETIME)
        payload = {
            "access_token": token,
            "expires_in": TOKEN_LIFETIME,
            "scope": "dap",
            "token_type": "Bearer",
        }
        return _json_reply(200, payload)

    def _tables(self, headers: Any) -> _Reply:
        scheme, _, token = headers.get("Authorization", "").partition(" ")
        with self._lock:
            entry = self._tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if entry is None or entry[1] < time.time():
            return _error_reply(401, "AuthenticationError", "Invalid or expired access token")
        special = self._special(entry[0])
        if special is not None and special.step == "tables":
            return self._special_reply(special)
        return _json_reply(200, {"tables": list(TABLES)})

    def _special(self, client_id: str) -> _Special | None:
        return SPECIAL_CLIENT_IDS.get(client_id) if self._include_demo_keys else None

    @staticmethod
    def _special_reply(special: _Special) -> _Reply:
        extra = {"Retry-After": str(special.retry_after)} if special.retry_after else {}
        return _error_reply(special.status, special.error_type, "Simulated by the fake gateway", extra)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    gateway: FakeGateway


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "FakeCD2Gateway/1.0"
    # HTTP/1.0: one request per connection, so no idle keep-alive connection
    # holds a handler thread open.
    protocol_version = "HTTP/1.0"

    # A backstop for a client that connects and never sends a request.
    timeout = 30

    def setup(self) -> None:
        super().setup()
        gateway = self.server.gateway
        gateway._track(self.connection, open_=True)
        if gateway._stopping.is_set():
            # Accepted after stop() cut the open connections: cut this one too.
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def finish(self) -> None:
        self.server.gateway._track(self.connection, open_=False)
        try:
            super().finish()
        except OSError:
            pass  # the client or stop() already closed the socket

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _handle(self, method: str) -> None:
        gateway = self.server.gateway
        # The path only: a query string could carry anything.
        path = urlsplit(self.path).path
        gateway._record(method, path)
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            reply: _Reply | None = _error_reply(413, "ValidationError", "Bad or oversized body")
        else:
            body = self.rfile.read(length) if length else b""
            reply = gateway._dispatch(method, path, self.headers, body)
        if reply is None:
            self.close_connection = True
            logger.debug("fake CD2 gateway: %s %s -> no answer", method, path)
            return
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(reply.body)
        except OSError:
            return  # the client gave up (e.g. its read timeout passed)
        logger.debug("fake CD2 gateway: %s %s -> %d", method, path, reply.status)

    def log_message(self, format: str, *args: Any) -> None:
        # Silent: the stdlib would print request lines (with query strings) to
        # stderr. Our own debug line above logs method, path and status only.
        pass


def parse_keys(text: str) -> dict[str, str]:
    """Parse "id:secret,id:secret" (CD2_FAKE_KEYS) into {client_id: secret}."""
    keys: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        client_id, colon, secret = item.partition(":")
        if not colon or not client_id or not secret:
            # Never echo the item: it holds a secret.
            raise ValueError("each key must be written CLIENT_ID:SECRET")
        keys[client_id] = secret
    return keys


def parse_keys_file(text: str) -> dict[str, str]:
    """Parse a keys file: one CLIENT_ID:SECRET a line; blank lines and # comments are skipped."""
    keys: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            keys.update(_single_key(line))
        except ValueError:
            # Never echo the line: it holds a secret.
            raise ValueError(f"line {number} of the keys file is not CLIENT_ID:SECRET") from None
    return keys


def _keys_file_stamp(path: str | None) -> tuple[int, int] | None:
    if not path:
        return None
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


def _reload_keys_file(gateway: FakeGateway, path: str) -> None:
    """Add the keys the file holds now (keys already accepted stay accepted)."""
    try:
        with open(path, encoding="utf-8") as keys_file:
            keys = parse_keys_file(keys_file.read())
    except (OSError, ValueError) as exc:
        print(f"keys file not read again: {exc}", file=sys.stderr, flush=True)
        return
    for client_id, secret in keys.items():
        gateway.add_key(client_id, secret)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.fake_gateway",
        description="Run a fake Canvas Data 2 gateway (see the module docstring for demo keys).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="CLIENT_ID:SECRET",
        help="an extra accepted key (repeatable); CD2_FAKE_KEYS adds more",
    )
    parser.add_argument(
        "--keys-file",
        metavar="PATH",
        help="accepted keys, one CLIENT_ID:SECRET a line (load_demo_data writes var/fake-gateway-keys.txt)",
    )
    parser.add_argument("--no-demo-keys", action="store_true", help="no demo or special keys")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to each reply")
    parser.add_argument("--rate-limit", type=float, default=None, metavar="PER_SECOND")
    parser.add_argument("-v", "--verbose", action="store_true", help="log method, path and status of each request")
    args = parser.parse_args(argv)

    try:
        keys = parse_keys(os.environ.get("CD2_FAKE_KEYS", ""))
        if args.keys_file:
            with open(args.keys_file, encoding="utf-8") as keys_file:
                keys.update(parse_keys_file(keys_file.read()))
        for item in args.key:
            keys.update(_single_key(item))
    except OSError as exc:
        parser.error(
            f"cannot read --keys-file: {exc.strerror} ({args.keys_file}); run: python manage.py load_demo_data"
        )
    except ValueError as exc:
        parser.error(str(exc))

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    gateway = FakeGateway(
        host=args.host,
        port=args.port,
        keys=keys,
        include_demo_keys=not args.no_demo_keys,
        latency=args.latency,
        rate_limit_per_second=args.rate_limit,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    gateway.start()
    # The first line is the URL alone, so scripts can read it.
    print(gateway.url, flush=True)
    if not args.no_demo_keys:
        print(f"accepted demo key: {DEMO_ACCEPTED_CLIENT_ID} / {DEMO_ACCEPTED_SECRET}", flush=True)
    print(f"{len(keys)} extra key(s); stop with Ctrl-C", file=sys.stderr, flush=True)
    keys_file_seen = _keys_file_stamp(args.keys_file)
    try:
        while not stop.wait(0.5):
            # `manage.py demo_key` adds a key to the file while we run: read it again when it changes.
            stamp = _keys_file_stamp(args.keys_file)
            if stamp != keys_file_seen:
                keys_file_seen = stamp
                _reload_keys_file(gateway, args.keys_file)
    except KeyboardInterrupt:
        pass
    finally:
        gateway.stop()
    return 0


def _single_key(item: str) -> dict[str, str]:
    # --key takes one key, so its secret may contain a comma.
    client_id, colon, secret = item.partition(":")
    if not colon or not client_id or not secret:
        raise ValueError("--key must be written CLIENT_ID:SECRET")
    return {client_id: secret}


if __name__ == "__main__":
    sys.exit(main())
