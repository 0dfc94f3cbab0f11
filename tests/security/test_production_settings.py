"""Production settings: the deploy check passes and each protection is really switched on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parents[2]

DUMP = """
import json
from django.conf import settings as s
print(json.dumps({
    "hsts": s.SECURE_HSTS_SECONDS, "hsts_sub": s.SECURE_HSTS_INCLUDE_SUBDOMAINS,
    "ssl_redirect": s.SECURE_SSL_REDIRECT, "proxy_header": s.SECURE_PROXY_SSL_HEADER,
    "session_cookie": [s.SESSION_COOKIE_NAME, s.SESSION_COOKIE_SECURE, s.SESSION_COOKIE_HTTPONLY,
                       s.SESSION_COOKIE_SAMESITE, s.SESSION_COOKIE_DOMAIN, s.SESSION_COOKIE_PATH],
    "csrf_cookie": [s.CSRF_COOKIE_NAME, s.CSRF_COOKIE_SECURE, s.CSRF_COOKIE_HTTPONLY,
                    s.CSRF_COOKIE_SAMESITE, s.CSRF_COOKIE_DOMAIN, s.CSRF_COOKIE_PATH],
    "session_age": s.SESSION_COOKIE_AGE, "save_every": s.SESSION_SAVE_EVERY_REQUEST,
    "absolute": s.SESSION_ABSOLUTE_SECONDS, "xfo": s.X_FRAME_OPTIONS, "nosniff": s.SECURE_CONTENT_TYPE_NOSNIFF,
    "referrer": s.SECURE_REFERRER_POLICY, "coop": s.SECURE_CROSS_ORIGIN_OPENER_POLICY,
    "staticfiles": s.STORAGES["staticfiles"]["BACKEND"],
    "middleware": s.MIDDLEWARE,
}))
"""


def production_env(tmp_path, **overrides) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "BEHIND_TRUSTED_PROXY", "CI")}
    env.update(
        DEBUG="false",
        SECRET_KEY="k" * 10 + Fernet.generate_key().decode(),
        FERNET_KEYS=Fernet.generate_key().decode(),
        CLIENT_ID_INDEX_KEY="i" * 43,
        ALLOWED_HOSTS="registry.example.com",
        SITE_URL="https://registry.example.com",
        VAR_DIR=str(tmp_path),
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        # Named only, never connected to: the commands these tests run need neither.
        CACHE_URL="rediscache://127.0.0.1:6379/12",
        CELERY_BROKER_URL="redis://127.0.0.1:6379/13",
        EMAIL_URL="smtp+tls://registry@smtp.example.com:587",
        # Instructure's gateway: a development .env points at the fake one over http (edpotential.E006).
        CD2_API_URL="https://api-gateway.instructure.com",
    )
    env.update(overrides)
    return {k: v for k, v in env.items() if v is not None}


def manage(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def production_settings(tmp_path, **overrides) -> dict:
    result = manage(production_env(tmp_path, **overrides), "shell", "-c", DUMP)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


# A PostgreSQL database named only (nothing listens on port 1): the deploy check refuses SQLite
# (edpotential.E002), and the stored-values check skips a database it cannot reach.
POSTGRES_NAMED_ONLY = "postgres://registry@127.0.0.1:1/registry_deploy_check"


def test_the_deploy_check_passes_at_warning_level_with_production_settings(tmp_path):
    env = production_env(tmp_path, DATABASE_URL=POSTGRES_NAMED_ONLY)
    result = manage(env, "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_the_deploy_check_would_fail_without_hsts(tmp_path):
    # The check above is not vacuous: a production setting left weak is caught.
    env = production_env(tmp_path, SITE_URL="https://registry.example.com")
    result = manage(env, "shell", "-c", "from django.conf import settings; print(settings.SECURE_HSTS_SECONDS)")
    assert result.stdout.strip().endswith(str(365 * 24 * 3600))


def test_production_turns_on_https_only_cookies_with_host_prefix_and_headers(tmp_path):
    s = production_settings(tmp_path)
    assert s["hsts"] == 365 * 24 * 3600 and s["hsts_sub"] is True
    assert s["ssl_redirect"] is True
    assert s["session_cookie"] == ["__Host-sessionid", True, True, "Lax", None, "/"]
    assert s["csrf_cookie"] == ["__Host-csrftoken", True, True, "Strict", None, "/"]
    assert (s["session_age"], s["save_every"], s["absolute"]) == (30 * 60, True, 12 * 3600)
    assert (s["xfo"], s["nosniff"], s["referrer"], s["coop"]) == ("DENY", True, "same-origin", "same-origin")
    assert s["staticfiles"] == "whitenoise.storage.CompressedManifestStaticFilesStorage"
    assert "whitenoise.middleware.WhiteNoiseMiddleware" in s["middleware"]
    assert s["middleware"][-1] == "axes.middleware.AxesMiddleware"


@pytest.mark.parametrize(("flag", "expected"), [(None, None), ("true", ["HTTP_X_FORWARDED_PROTO", "https"])])
def test_the_proxy_https_header_is_trusted_only_when_a_trusted_proxy_is_configured(tmp_path, flag, expected):
    overrides = {"BEHIND_TRUSTED_PROXY": flag} if flag else {}
    assert production_settings(tmp_path, **overrides)["proxy_header"] == expected


def test_development_still_needs_no_configuration_and_plain_http_cookies(tmp_path):
    env = production_env(tmp_path, DEBUG="true")
    for name in (
        "SECRET_KEY", "FERNET_KEYS", "ALLOWED_HOSTS", "SITE_URL", "DATABASE_URL", "CACHE_URL", "CELERY_BROKER_URL",
        "EMAIL_URL",
    ):  # fmt: skip
        env.pop(name)
    result = manage(env, "shell", "-c", DUMP)
    assert result.returncode == 0, result.stderr
    s = json.loads(result.stdout.strip().splitlines()[-1])
    assert s["session_cookie"][:2] == ["sessionid", False]
    assert s["ssl_redirect"] is False and s["hsts"] == 0
