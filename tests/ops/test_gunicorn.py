"""gunicorn.conf.py: its logs mask link tokens; it trusts X-Forwarded-Proto exactly when the app does."""

from __future__ import annotations

import datetime as dt
import logging
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography.fernet import Fernet
from gunicorn.app.base import Application
from gunicorn.glogging import Logger
from gunicorn.http.parser import RequestParser

from edpotential.gunicorn_logging import MaskingLogger
from edpotential.logging import MASK, SecretMaskingFilter

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "gunicorn.conf.py"
# A real link token's shape (secrets.token_urlsafe(32)) with no digit, the
# kind the app's random-looking heuristic alone would let through.
TOKEN = "kQwErTyUiOpAsDfGhJkLzXcVbNm-_qWeRtYuIoPaSdF"
OTHER_TOKEN = "SOMETOKEN123"


class _ConfigFile(Application):
    """gunicorn's own configuration loading, from gunicorn.conf.py only (no command line)."""

    def init(self, parser, opts, args):
        return None

    def load_config(self):
        self.load_config_from_file(str(CONF))

    def load(self):
        raise NotImplementedError


@pytest.fixture
def gunicorn_logs(tmp_path):
    """Build a logger class on gunicorn.conf.py's settings, logging to files; read them back."""
    made = []

    def build(logger_class=MaskingLogger):
        cfg = _ConfigFile().cfg
        cfg.set("accesslog", str(tmp_path / "access.log"))
        cfg.set("errorlog", str(tmp_path / "error.log"))
        logger = logger_class(cfg)
        made.append(logger)
        return logger

    yield build, lambda name: (tmp_path / f"{name}.log").read_text()
    # gunicorn's two loggers are process-wide: leave them as found.
    for log in (logging.getLogger("gunicorn.access"), logging.getLogger("gunicorn.error")):
        for handler in [h for h in log.handlers if getattr(h, "_gunicorn", False)]:
            log.removeHandler(handler)
            handler.close()
        for f in [f for f in log.filters if isinstance(f, SecretMaskingFilter)]:
            log.removeFilter(f)


def _access(logger: Logger, path: str) -> None:
    """What a gunicorn worker calls after answering GET `path` (glogging.Logger.access)."""
    environ = {
        "REQUEST_METHOD": "GET",
        "RAW_URI": path,
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_REFERER": f"https://registry.example.com/k/{OTHER_TOKEN}/",
        "HTTP_USER_AGENT": "Mozilla/5.0 (X11; Linux x86_64)",
    }
    response = SimpleNamespace(status="200 OK", sent=1234, headers=[("Content-Type", "text/html")])
    request = SimpleNamespace(headers=[("HOST", "registry.example.com"), ("X-FORWARDED-FOR", "203.0.113.9")])
    logger.access(response, request, environ, dt.timedelta(milliseconds=42))


def test_the_configured_logger_is_the_masking_one():
    assert _ConfigFile().cfg.logger_class is MaskingLogger


def test_the_access_log_masks_a_link_token_in_the_request_line_and_the_referer(gunicorn_logs):
    build, read = gunicorn_logs
    _access(build(), f"/k/{TOKEN}/")
    line = read("access")
    assert TOKEN not in line and OTHER_TOKEN not in line
    assert f'"GET /k/{MASK}/ HTTP/1.1" 200 1234 "https://registry.example.com/k/{MASK}/"' in line
    assert line.rstrip().endswith('42ms "203.0.113.9"')  # the rest of the line is intact


def test_gunicorn_s_own_logger_would_have_written_the_token(gunicorn_logs):
    build, read = gunicorn_logs
    _access(build(Logger), f"/k/{TOKEN}/")
    assert f"GET /k/{TOKEN}/ HTTP/1.1" in read("access")


def test_the_error_log_masks_the_uri_in_a_failed_request_and_its_traceback(gunicorn_logs):
    build, read = gunicorn_logs
    logger = build()
    try:
        raise RuntimeError(f"crashed on /k/{TOKEN}/")
    except RuntimeError:
        # What gunicorn's worker writes when the app raises (workers/base.py handle_error).
        logger.exception("Error handling request %s %s", "GET", f"/k/{OTHER_TOKEN}/")
    logger.warning(f"Invalid request from ip=127.0.0.1: Invalid HTTP request line: 'GET /k/{TOKEN}/\\x7f HTTP/1.1'")
    text = read("error")
    assert TOKEN not in text and OTHER_TOKEN not in text
    assert f"Error handling request GET /k/{MASK}/" in text
    assert "RuntimeError: crashed on" in text and "Invalid HTTP request line" in text


def test_a_configuration_reload_does_not_stack_filters(gunicorn_logs):
    build, _ = gunicorn_logs
    logger = build()
    logger.setup(logger.cfg)  # what SIGHUP does
    assert sum(isinstance(f, SecretMaskingFilter) for f in logger.access_log.filters) == 1


def _scheme(cfg, peer: str) -> str:
    raw = b"GET / HTTP/1.1\r\nHost: registry.example.com\r\nX-Forwarded-Proto: https\r\n\r\n"
    return next(RequestParser(cfg, iter([raw]), (peer, 40000))).scheme


@pytest.mark.parametrize("peer", ["127.0.0.1", "10.0.0.5"])
def test_without_a_trusted_proxy_x_forwarded_proto_is_ignored_even_from_loopback(settings, peer):
    settings.BEHIND_TRUSTED_PROXY = False
    cfg = _ConfigFile().cfg
    assert _scheme(cfg, peer) == "http"


def test_behind_the_trusted_proxy_x_forwarded_proto_is_believed_as_the_app_believes_it(settings, monkeypatch):
    monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)
    settings.BEHIND_TRUSTED_PROXY = True
    assert _scheme(_ConfigFile().cfg, "10.0.0.5") == "https"


def test_forwarded_allow_ips_narrows_the_trusted_proxy(settings, monkeypatch):
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "10.0.0.0/24")
    settings.BEHIND_TRUSTED_PROXY = True
    cfg = _ConfigFile().cfg
    assert (_scheme(cfg, "10.0.0.5"), _scheme(cfg, "192.0.2.1")) == ("https", "http")


def test_a_worker_outlives_the_slowest_request_a_live_key_check(settings):
    settings.CD2_CONNECT_TIMEOUT, settings.CD2_READ_TIMEOUT = 10.0, 60.0
    cfg = _ConfigFile().cfg
    assert cfg.timeout > 2 * (10 + 60) and cfg.graceful_timeout >= cfg.timeout


# --- A real gunicorn on loopback ---------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(predicate, *, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


@pytest.mark.e2e
def test_a_real_gunicorn_masks_tokens_in_its_logs_and_ignores_a_forged_scheme(tmp_path):
    port = _free_port()
    access, error = tmp_path / "access.log", tmp_path / "error.log"
    env = {
        **os.environ,
        # Production mode: HTTPS is required, so a request gunicorn believes
        # to be HTTPS is served and one it does not is redirected (301).
        "DEBUG": "false",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "FERNET_KEYS": Fernet.generate_key().decode(),
        "CLIENT_ID_INDEX_KEY": secrets.token_urlsafe(32),
        "ALLOWED_HOSTS": "127.0.0.1",
        # Production refuses to start on development fallbacks; nothing here
        # sends mail, queues a task or reads a stored key.
        "SITE_URL": "https://registry.example",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "EMAIL_URL": "smtp://127.0.0.1:2525",
        "CELERY_BROKER_URL": "redis://127.0.0.1:6379/15",
        "CACHE_URL": "locmemcache://",
        "VAR_DIR": str(tmp_path / "var"),
        "BEHIND_TRUSTED_PROXY": "false",
        "GUNICORN_ACCESS_LOG": str(access),
        "GUNICORN_ERROR_LOG": str(error),
    }
    env.pop("FORWARDED_ALLOW_IPS", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", str(CONF), "--bind", f"127.0.0.1:{port}", "--workers", "1"],
        cwd=tmp_path,  # gunicorn.conf.py finds the checkout itself
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(lambda: _answers(port), seconds=8, what="gunicorn to listen")
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/k/{TOKEN}/",
            headers={"X-Forwarded-Proto": "https", "Referer": f"http://127.0.0.1:{port}/k/{OTHER_TOKEN}/"},
        )
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.build_opener(_NoRedirect).open(request, timeout=5)
        assert answer.value.code == 301  # gunicorn ignored the forged scheme from loopback
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            # A control character in the target: gunicorn refuses the line and logs it.
            raw.sendall(f"GET /k/{TOKEN}/\x7f HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            raw.recv(1024)  # gunicorn's 400
        line = _wait_for(lambda: access.exists() and access.read_text(), seconds=5, what="the access log")
        errors = _wait_for(
            lambda: "Invalid request" in error.read_text() and error.read_text(), seconds=5, what="the error log"
        )
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert f'"GET /k/{MASK}/ HTTP/1.1" 301' in line
    assert f"Invalid HTTP request line: 'GET /k/{MASK}/" in errors
    assert TOKEN not in line + errors and OTHER_TOKEN not in line + errors
