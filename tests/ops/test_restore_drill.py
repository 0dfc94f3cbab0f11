"""The restore drill (scripts/restore_drill.py): a pg_dump restores into a fresh database and its keys read back.

PostgreSQL only (skipped on SQLite). In CI a missing pg_dump fails the test
instead of skipping it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from cryptography.fernet import Fernet
from django.conf import settings
from django.db import connection
from psycopg import sql

ROOT = Path(__file__).resolve().parents[2]
SECRET = "restore-drill-Secret-9xQ2vLp"

pytestmark = [
    pytest.mark.skipif(
        settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql",
        reason="the restore drill needs PostgreSQL (pg_dump)",
    ),
    pytest.mark.django_db(transaction=True),  # committed, so pg_dump sees the rows
]


def _server_url(database: str) -> str:
    s = connection.settings_dict
    password = f":{s['PASSWORD']}" if s["PASSWORD"] else ""
    return f"postgres://{s['USER']}{password}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{database}"


@pytest.fixture
def dump_the_test_database(tmp_path):
    """Call it once the rows exist: pg_dump -Fc of the test database, as a backup would take it."""
    if not shutil.which("pg_dump"):
        message = "pg_dump is not installed (apt-get install postgresql-client)"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)

    def dump() -> Path:
        s = connection.settings_dict
        env = {**os.environ, "PGHOST": s["HOST"] or "127.0.0.1", "PGPORT": str(s["PORT"] or 5432), "PGUSER": s["USER"]}
        if s["PASSWORD"]:
            env["PGPASSWORD"] = s["PASSWORD"]
        path = tmp_path / "registry.dump"
        subprocess.run(["pg_dump", "-Fc", "--file", str(path), s["NAME"]], env=env, check=True)
        return path

    return dump


@pytest.fixture
def restored_name():
    """A database name for the drill, dropped afterwards whatever happened."""
    name = f"restore_drill_test_{os.getpid()}"
    yield name
    with psycopg.connect(_server_url("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _drill(dump: Path, name: str, *, fernet_keys: str, keep: bool) -> subprocess.CompletedProcess:
    args = [sys.executable, "scripts/restore_drill.py", str(dump), "--server", _server_url("postgres"), "--name", name]
    return subprocess.run(
        [*args, "--keep"] if keep else args,
        cwd=ROOT,
        env={**os.environ, "FERNET_KEYS": fernet_keys},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _exists(name: str) -> bool:
    with psycopg.connect(_server_url("postgres")) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is not None


def test_a_dump_restores_into_a_fresh_database_and_the_secret_reads_back(
    institution, make_credential, dump_the_test_database, restored_name
):
    credential = make_credential(institution, secret=SECRET)
    dump = dump_the_test_database()
    keys = ",".join(settings.FERNET_KEYS)

    drill = _drill(dump, restored_name, fernet_keys=keys, keep=True)

    assert drill.returncode == 0, drill.stdout + drill.stderr
    assert "credentials_cd2credential.secret: 1 of 1 decrypted" in drill.stdout
    assert "restore drill: PASSED" in drill.stdout
    assert SECRET not in drill.stdout + drill.stderr  # counts only, never a value
    # The app itself, pointed at the restored database, reads the Secret back.
    code = f"from credentials.models import CD2Credential as C; print(C.objects.get(pk={credential.pk}).secret)"
    read = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": _server_url(restored_name), "FERNET_KEYS": keys},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert read.returncode == 0, read.stderr
    assert read.stdout.strip().splitlines()[-1] == SECRET


def test_the_drill_fails_and_drops_its_database_when_fernet_keys_do_not_match(
    institution, make_credential, dump_the_test_database, restored_name
):
    make_credential(institution, secret=SECRET)

    drill = _drill(dump_the_test_database(), restored_name, fernet_keys=Fernet.generate_key().decode(), keep=False)

    assert drill.returncode == 1, drill.stdout + drill.stderr
    assert "FAILED credentials_cd2credential.secret: 1 value(s) do not decrypt" in drill.stdout
    assert "restore drill: FAILED" in drill.stdout
    assert not _exists(restored_name)
