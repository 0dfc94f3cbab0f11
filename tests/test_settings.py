"""Start-up in production refuses to run without its secrets, and says which."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parent.parent
# The other variables production requires (tests/security/test_production_start.py
# tests each one missing), so each test here is about the secret it names.
PRODUCTION_URLS = {
    "SITE_URL": "https://example.com",
    "DATABASE_URL": "sqlite:///:memory:",
    "CACHE_URL": "locmemcache://",
    "CELERY_BROKER_URL": "memory://",
    "EMAIL_URL": "consolemail://",
}


def run_check(tmp_path, **env_overrides) -> subprocess.CompletedProcess:
    env = {
        k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "FERNET_KEYS", "CLIENT_ID_INDEX_KEY", "DEBUG")
    }
    env.update({"VAR_DIR": str(tmp_path), "ALLOWED_HOSTS": "example.com", **PRODUCTION_URLS, **env_overrides})
    return subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_production_refuses_to_start_without_secret_key(tmp_path):
    result = run_check(
        tmp_path, DEBUG="false", FERNET_KEYS=Fernet.generate_key().decode(), CLIENT_ID_INDEX_KEY="i" * 43
    )
    assert result.returncode != 0
    assert "SECRET_KEY is not set" in result.stderr


def test_production_refuses_to_start_without_fernet_keys(tmp_path):
    result = run_check(tmp_path, DEBUG="false", SECRET_KEY="x" * 50, CLIENT_ID_INDEX_KEY="i" * 43)
    assert result.returncode != 0
    assert "FERNET_KEYS is not set" in result.stderr


def test_production_refuses_to_start_without_the_client_id_index_key(tmp_path):
    result = run_check(tmp_path, DEBUG="false", SECRET_KEY="x" * 50, FERNET_KEYS=Fernet.generate_key().decode())
    assert result.returncode != 0
    assert "CLIENT_ID_INDEX_KEY is not set" in result.stderr


def test_a_malformed_fernet_key_stops_start_up_with_a_clear_message(tmp_path):
    result = run_check(
        tmp_path, DEBUG="false", SECRET_KEY="x" * 50, FERNET_KEYS="too-short", CLIENT_ID_INDEX_KEY="i" * 43
    )
    assert result.returncode != 0
    assert "FERNET_KEYS entry 1 is not a valid Fernet key" in result.stderr


@pytest.mark.parametrize("debug", ["true"])
def test_development_generates_its_own_keys_once_and_not_from_secret_key(tmp_path, debug):
    first = run_check(tmp_path, DEBUG=debug)
    assert first.returncode == 0, first.stderr
    fernet_key = (tmp_path / "fernet.key").read_text().strip()
    secret_key = (tmp_path / "secret_key").read_text().strip()
    Fernet(fernet_key.encode())
    assert fernet_key != secret_key
    assert oct((tmp_path / "fernet.key").stat().st_mode)[-3:] == "600"
    assert run_check(tmp_path, DEBUG=debug).returncode == 0
    assert (tmp_path / "fernet.key").read_text().strip() == fernet_key
    index_key = (tmp_path / "client_id_index.key").read_text().strip()
    assert len(index_key) >= 32 and index_key not in (fernet_key, secret_key)
    assert oct((tmp_path / "client_id_index.key").stat().st_mode)[-3:] == "600"


def test_production_keeps_database_connections_and_checks_them_before_use(tmp_path):
    """CONN_MAX_AGE > 0 by default with DEBUG off (a connection per request cost 5.5 ms), CONN_HEALTH_CHECKS on."""
    env = {k: v for k, v in os.environ.items() if k not in ("CONN_MAX_AGE", "DEBUG", "DJANGO_SETTINGS_MODULE")}
    env.update(
        {
            "VAR_DIR": str(tmp_path),
            "ALLOWED_HOSTS": "example.com",
            **PRODUCTION_URLS,
            "DEBUG": "false",
            "SECRET_KEY": "x" * 50,
            "FERNET_KEYS": Fernet.generate_key().decode(),
            "CLIENT_ID_INDEX_KEY": "i" * 43,
        }
    )
    code = (
        "from django.conf import settings; d = settings.DATABASES['default'];"
        "print(d['CONN_MAX_AGE'], d['CONN_HEALTH_CHECKS'])"
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "--no-imports", "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["600", "True"]


def _development_urls(tmp_path, **env_overrides) -> list[str]:
    """SITE_URL and CD2_API_URL as edpotential.settings reads them, with DEBUG on (the repository's .env read too)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("SITE_URL", "CD2_API_URL", "WEB_PORT", "CD2_PORT", "DJANGO_SETTINGS_MODULE")
    }
    env.update({"VAR_DIR": str(tmp_path), "DEBUG": "true", **env_overrides})
    done = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "shell",
            "-c",
            "from django.conf import settings as s; print(s.SITE_URL, s.CD2_API_URL)",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()[-2:]


def test_web_port_and_cd2_port_move_the_site_url_and_the_gateway_without_editing_env(tmp_path):
    # Issue 25: `WEB_PORT=8123 CD2_PORT=8124 make run` mailed links to 8000 and checked keys on 8765.
    assert _development_urls(tmp_path, WEB_PORT="8123", CD2_PORT="8124") == [
        "http://127.0.0.1:8123",
        "http://127.0.0.1:8124",
    ]
    assert _development_urls(tmp_path) == ["http://127.0.0.1:8000", "http://127.0.0.1:8765"]
    # What a person sets wins over the ports.
    assert _development_urls(tmp_path, WEB_PORT="8123", SITE_URL="https://dev.example")[0] == "https://dev.example"
