"""Production refuses to start on development fallbacks, and web, worker and beat refuse keys that cannot read.

With DEBUG off, importing the settings raises ImproperlyConfigured naming each
missing or unsafe variable, so `manage.py`, gunicorn and Celery all stop.
The FERNET_KEYS sample check runs when the WSGI application loads and when
a Celery worker or beat starts, against a real database holding a value
written under another key (a throwaway PostgreSQL database when the suite
runs on PostgreSQL, a SQLite file otherwise).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from cryptography.fernet import Fernet

from tests.security.test_production_settings import manage, production_env

ROOT = Path(__file__).resolve().parents[2]

# One xdist worker runs this module (make test's --dist loadgroup): stored_under_key_a
# migrates a database once per module, not once per worker.
pytestmark = pytest.mark.xdist_group("production-start")

# Named in the issue: every one has a development fallback that must not reach production.
REQUIRED = (
    "SECRET_KEY",
    "FERNET_KEYS",
    "CLIENT_ID_INDEX_KEY",
    "SITE_URL",
    "DATABASE_URL",
    "CACHE_URL",
    "CELERY_BROKER_URL",
    "EMAIL_URL",
)


def deploy_check(env) -> subprocess.CompletedProcess:
    return manage(env, "check", "--deploy", "--fail-level", "WARNING")


@pytest.mark.parametrize("name", REQUIRED)
def test_the_deploy_check_fails_naming_each_missing_production_variable(tmp_path, name):
    result = deploy_check(production_env(tmp_path, **{name: None}))
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert f"{name} is not set" in result.stderr


def test_an_empty_variable_counts_as_missing(tmp_path):
    result = deploy_check(production_env(tmp_path, CELERY_BROKER_URL=""))
    assert result.returncode != 0 and "CELERY_BROKER_URL is not set" in result.stderr


def test_every_missing_variable_is_named_at_once(tmp_path):
    result = deploy_check(production_env(tmp_path, DATABASE_URL=None, EMAIL_URL=None))
    assert "DATABASE_URL is not set" in result.stderr and "EMAIL_URL is not set" in result.stderr


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"SITE_URL": "http://registry.example.com"}, "SITE_URL must start with https://"),
        ({"ALLOWED_HOSTS": "*"}, 'ALLOWED_HOSTS must not contain "*"'),
        ({"ALLOWED_HOSTS": "registry.example.com,*"}, 'ALLOWED_HOSTS must not contain "*"'),
    ],
)
def test_the_deploy_check_fails_on_plain_http_or_any_host(tmp_path, overrides, named):
    result = deploy_check(production_env(tmp_path, **overrides))
    assert result.returncode != 0
    assert named in result.stderr


def test_development_keeps_its_fallbacks_and_allows_plain_http(tmp_path):
    env = production_env(tmp_path, DEBUG="true", SITE_URL="http://127.0.0.1:8000", ALLOWED_HOSTS="*")
    for name in REQUIRED:
        if name != "SITE_URL":
            env.pop(name)
    shown = manage(
        env,
        "shell",
        "-c",
        "from django.conf import settings as s; print(s.DATABASES['default']['ENGINE'], s.EMAIL_BACKEND)",
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split()[-2:] == [
        "django.db.backends.sqlite3",
        "django.core.mail.backends.console.EmailBackend",
    ]


# ---------------------------------------------------------------------------
# FERNET_KEYS that cannot read what is stored: web, worker and beat stop
# ---------------------------------------------------------------------------

STORE_A_KEY = """
import datetime as dt
from credentials.services.keys import credential_create
from credentials.validators import CleanKey
from institutions.models import Institution
i = Institution.objects.create(name="Start U", slug="start-u", canvas_domain="start.instructure.com")
credential_create(institution=i, source="admin", key=CleanKey(
    client_id="us-east-1#start-0000-0001", secret="StartSecret-1a2b3c", expires_on=dt.date(2030, 1, 1)))
"""
WSGI_LOADS = "import edpotential.wsgi; print('application loaded')"


def _throwaway_database(tmp_path) -> tuple[str, callable]:
    """A URL for an empty database of the kind the suite runs on, and a function that drops it."""
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        return f"sqlite:///{tmp_path / 'start.sqlite3'}", lambda: None
    import psycopg

    parts = urlsplit(url)
    name = f"edp_start_{uuid.uuid4().hex[:12]}"
    admin_url = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return urlunsplit(parts._replace(path=f"/{name}")), drop


@pytest.fixture(scope="module")
def stored_under_key_a(tmp_path_factory):
    """Production settings on a migrated database holding one key written under FERNET_KEYS=key_a."""
    tmp_path = tmp_path_factory.mktemp("start")
    database_url, drop = _throwaway_database(tmp_path)
    key_a = Fernet.generate_key().decode()
    env = production_env(
        tmp_path,
        DATABASE_URL=database_url,
        FERNET_KEYS=key_a,
        CACHE_URL="locmemcache://",
        CELERY_BROKER_URL="memory://",
        EMAIL_URL="consolemail://",
    )
    try:
        migrated = manage(env, "migrate", "--noinput")
        assert migrated.returncode == 0, migrated.stderr
        stored = manage(env, "shell", "-c", STORE_A_KEY)
        assert stored.returncode == 0, stored.stderr
        yield env, key_a
    finally:
        drop()


def run(env, *command, timeout=60) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(command[:4])} kept running: it did not refuse to start")


def test_the_web_application_loads_with_the_key_the_values_were_written_with(stored_under_key_a):
    env, _ = stored_under_key_a
    result = run(env, sys.executable, "-c", WSGI_LOADS)
    assert result.returncode == 0, result.stderr
    assert "application loaded" in result.stdout


@pytest.mark.parametrize("keys", ["wrong", "too-short"])
def test_the_web_application_refuses_to_load_with_keys_that_cannot_read_stored_values(stored_under_key_a, keys):
    env, _ = stored_under_key_a
    fernet_keys = Fernet.generate_key().decode() if keys == "wrong" else keys
    result = run({**env, "FERNET_KEYS": fernet_keys}, sys.executable, "-c", WSGI_LOADS)
    assert result.returncode != 0
    assert "application loaded" not in result.stdout
    assert "ImproperlyConfigured: Refusing to start" in result.stderr
    assert "FERNET_KEYS" in result.stderr
    assert "gAAAAA" not in result.stderr and "StartSecret" not in result.stderr


def test_gunicorn_stops_when_its_worker_refuses_to_load_the_application(stored_under_key_a):
    env, _ = stored_under_key_a
    env = {**env, "FERNET_KEYS": Fernet.generate_key().decode()}
    # -c /dev/null: the refusal is the application's, whatever gunicorn.conf.py says.
    command = ["-m", "gunicorn", "-c", "/dev/null", "-b", "127.0.0.1:0", "-w", "1", "edpotential.wsgi"]
    result = run(env, sys.executable, *command)
    assert result.returncode != 0
    assert "Refusing to start" in result.stderr and "FERNET_KEYS" in result.stderr
    assert "Worker failed to boot" in result.stderr


@pytest.mark.parametrize(
    "process",
    [
        ["worker", "--pool=solo", "--concurrency=1", "--without-heartbeat", "--without-gossip", "--without-mingle"],
        ["beat"],
    ],
    ids=["worker", "beat"],
)
def test_celery_worker_and_beat_refuse_to_start_with_a_wrong_key(stored_under_key_a, tmp_path, process):
    env, _ = stored_under_key_a
    env = {**env, "FERNET_KEYS": Fernet.generate_key().decode()}
    extra = ["--schedule", str(tmp_path / "beat-schedule")] if process[0] == "beat" else []
    result = run(env, sys.executable, "-m", "celery", "-A", "edpotential", *process, *extra, "--loglevel=WARNING")
    assert result.returncode != 0
    assert f"Celery {process[0]} refused to start" in result.stderr
    assert "cannot be decrypted with the configured FERNET_KEYS" in result.stderr


# In-process, on the suite's own database (PostgreSQL in CI): the handler the
# worker_init and beat_init signals call (wired as the subprocess tests above
# show) passes with the right key and stops the process with a wrong one.
# transaction=True: the check closes its connections (no forked child may
# share them), which would end the test's own transaction.


@pytest.mark.django_db(transaction=True)
def test_the_celery_start_check_passes_with_the_right_key_and_exits_with_a_wrong_one(
    institution, make_credential, settings
):
    from edpotential.celery import _beat_checks_encryption_keys, _worker_checks_encryption_keys

    make_credential(institution)
    _worker_checks_encryption_keys(sender=None)  # the key the value was written with: no exit

    settings.FERNET_KEYS = [Fernet.generate_key().decode()]
    with pytest.raises(SystemExit, match=r"worker refused to start.*FERNET_KEYS"):
        _worker_checks_encryption_keys(sender=None)
    with pytest.raises(SystemExit, match=r"beat refused to start.*FERNET_KEYS"):
        _beat_checks_encryption_keys(sender=None)
