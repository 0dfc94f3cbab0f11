"""Failure drills: what happens when the database, Redis or the encryption keys fail.

Each drill breaks a real part and checks what a customer or operator sees
and that nothing is lost or half-written.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from django.core.cache import caches
from django.db import OperationalError, connection
from django.test import Client
from django.utils import timezone

from credentials.models import AuditEvent, CD2Credential, SubmissionLink
from credentials.services.links import submission_link_create
from devtools.fake_gateway import DEMO_ACCEPTED_CLIENT_ID, DEMO_ACCEPTED_SECRET, FakeGateway
from tests.conftest import accepted_submission

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def gateway(settings):
    with FakeGateway() as running:
        settings.CD2_API_URL = running.url
        settings.CD2_READ_TIMEOUT = 5
        yield running


@contextmanager
def database_fails(when):
    """Make every SQL statement for which when(sql) is true fail as if the server went away."""

    def blocker(execute, sql, params, many, context):
        if when(sql):
            raise OperationalError("server closed the connection unexpectedly (drill)")
        return execute(sql, params, many, context)

    with connection.execute_wrapper(blocker):
        yield


def stored_rows() -> tuple[int, int, int]:
    return (
        CD2Credential.objects.count(),
        SubmissionLink.objects.filter(used_at__isnull=False).count(),
        AuditEvent.objects.filter(kind__in=[AuditEvent.Kind.SUBMISSION, AuditEvent.Kind.LINK_USED]).count(),
    )


# --- The database goes away -------------------------------------------------


@pytest.mark.django_db
def test_database_down_mid_submission_gives_a_clear_503_and_leaves_nothing_half_written(gateway, institution):
    link = submission_link_create(institution=institution)
    client = Client(raise_request_exception=False)
    before = stored_rows()
    # The key row and the link claim are written; the audit insert then fails.
    with database_fails(lambda sql: "credentials_auditevent" in sql and sql.lstrip().upper().startswith("INSERT")):
        response = client.post(f"/k/{link.token}/", accepted_submission())
    assert response.status_code == 503
    assert response["Retry-After"]
    page = response.content.decode()
    assert "Nothing you sent in this request was saved" in page
    assert DEMO_ACCEPTED_SECRET not in page and DEMO_ACCEPTED_CLIENT_ID not in page
    assert stored_rows() == before  # the whole transaction rolled back
    link.link.refresh_from_db()
    assert link.link.used_at is None
    # When the database is back, the same link and form work.
    assert client.post(f"/k/{link.token}/", accepted_submission()).status_code == 302
    assert stored_rows() == (before[0] + 1, before[1] + 1, before[2] + 2)


@pytest.mark.django_db
def test_database_down_before_anything_is_read_gives_the_503_page_too(institution):
    link = submission_link_create(institution=institution)
    client = Client(raise_request_exception=False)
    with database_fails(lambda sql: True):
        response = client.get(f"/k/{link.token}/")
    assert response.status_code == 503
    assert "try again" in response.content.decode()


@pytest.mark.django_db
def test_the_503_is_logged_as_an_error_so_operations_hear_of_it(institution, caplog):
    link = submission_link_create(institution=institution)
    with database_fails(lambda sql: True):
        Client(raise_request_exception=False).get(f"/k/{link.token}/")
    assert any(r.levelname == "ERROR" and "Database unavailable" in r.getMessage() for r in caplog.records)


@pytest.mark.django_db
def test_a_database_error_outside_any_view_answers_503_too(admin_client):
    # The session is read by a middleware, before any view: a restarted database met there was a raw 500.
    admin_client.raise_request_exception = False
    with database_fails(lambda sql: "django_session" in sql):
        response = admin_client.get("/admin/")
    assert response.status_code == 503 and response["Retry-After"] == "60"
    assert "Nothing you sent in this request was saved" in response.content.decode()


@pytest.mark.django_db
def test_the_api_answers_a_database_error_with_a_503_problem(client):
    with database_fails(lambda sql: "api_apitoken" in sql):
        response = Client(raise_request_exception=False).get(
            "/api/v1/institutions/northfield/key", headers={"Authorization": "Bearer cd2r_abcdefgh_" + "x" * 43}
        )
    assert response.status_code == 503 and response["Retry-After"] == "60"
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["code"] == "service_unavailable"


# --- Redis goes away ---------------------------------------------------------


@pytest.fixture
def redis_down(settings, monkeypatch):
    """Cache and Celery broker both pointed at a Redis that refuses connections."""
    from edpotential.celery import app

    dead = "redis://127.0.0.1:9/0"  # the discard port: nothing listens on loopback
    settings.CACHES = {
        "default": {
            "BACKEND": "edpotential.cache.FailOpenRedisCache",
            "LOCATION": dead,
            "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
        }
    }
    settings.RATELIMIT_ENABLE = True
    old_broker, old_transport = app.conf.broker_url, app.conf.broker_transport_options
    app.conf.broker_url = dead
    monkeypatch.setenv("CELERY_BROKER_URL", dead)  # Celery reads this before its own settings
    app.conf.broker_transport_options = {"max_retries": 1}
    app.conf.broker_connection_retry = False
    app._pool, app.amqp._producer_pool = None, None  # new connections go to the dead broker
    caches["default"].close()
    yield
    app.conf.broker_url, app.conf.broker_transport_options = old_broker, old_transport
    app._pool, app.amqp._producer_pool = None, None


# transactional_db: the submission really commits, so its on-commit work
# (receipt mail, queued re-check) runs inside the request as in production.


@pytest.mark.django_db(transaction=True)
def test_redis_down_still_stores_a_submission_checked_inline(gateway, institution, redis_down):
    link = submission_link_create(institution=institution)
    response = Client(raise_request_exception=False).post(f"/k/{link.token}/", accepted_submission())
    assert response.status_code == 302, response.content.decode()[:500]
    credential = CD2Credential.objects.get(institution=institution)
    assert (credential.status, credential.secret) == (CD2Credential.Status.ACTIVE, DEMO_ACCEPTED_SECRET)


@pytest.mark.django_db(transaction=True)
def test_redis_and_cd2_down_still_store_the_key_as_pending(gateway, institution, redis_down):
    gateway.set_mode("down")
    link = submission_link_create(institution=institution)
    Client(raise_request_exception=False).post(f"/k/{link.token}/", accepted_submission())
    credential = CD2Credential.objects.get(institution=institution)
    assert credential.status == CD2Credential.Status.PENDING_VERIFICATION
    assert SubmissionLink.objects.get(pk=link.link.pk).used_at is not None


@pytest.mark.django_db(transaction=True)
def test_redis_and_cd2_down_still_show_the_receipt_and_the_check_is_picked_up_later(gateway, institution, redis_down):
    import datetime as dt

    from credentials.selectors import PENDING_SWEEP_AFTER, pending_credentials_due

    gateway.set_mode("down")
    link = submission_link_create(institution=institution)
    response = Client(raise_request_exception=False).post(f"/k/{link.token}/", accepted_submission())
    assert response.status_code == 302
    credential = CD2Credential.objects.get(institution=institution)
    # The queued re-check was lost with Redis; the hourly sweep finds the key once Redis is back.
    later = timezone.now() + PENDING_SWEEP_AFTER + dt.timedelta(minutes=1)
    assert credential.pk in pending_credentials_due(now=later)


# --- The encryption keys are wrong or missing ----------------------------------


def manage(tmp_path, *args, **env_overrides) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("FERNET_KEYS", "CI")}
    env.update(
        DEBUG="false",
        SECRET_KEY="drill-" + "s" * 50,
        CLIENT_ID_INDEX_KEY="drill-index-" + "i" * 32,
        ALLOWED_HOSTS="registry.example.com",
        SITE_URL="https://registry.example.com",
        VAR_DIR=str(tmp_path),
        DATABASE_URL=f"sqlite:///{tmp_path / 'drill.sqlite3'}",
        CACHE_URL="locmemcache://",
        CELERY_BROKER_URL="memory://",
        EMAIL_URL="consolemail://",
    )
    env.update(env_overrides)
    env = {k: v for k, v in env.items() if v is not None}
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
    )


STORE_A_KEY = """
import datetime as dt
from credentials.services.keys import credential_create
from credentials.validators import CleanKey
from institutions.models import Institution
i = Institution.objects.create(name="Drill U", slug="drill-u", canvas_domain="drill.instructure.com")
credential_create(institution=i, source="admin", key=CleanKey(
    client_id="us-east-1#drill-0000-0001", secret="DrillSecret-9f8e7d6c5b4a", expires_on=dt.date(2030, 1, 1)))
"""
READ_IT = "from credentials.models import CD2Credential; print(CD2Credential.objects.get().secret)"


# Its users share one xdist worker (make test's --dist loadgroup), or each worker would migrate its own.
ONE_WORKER = pytest.mark.xdist_group("fernet-drill")


@pytest.fixture(scope="module")
def database_written_with_key_a(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("fernet-drill")
    key_a = Fernet.generate_key().decode()
    assert manage(tmp_path, "migrate", "--noinput", FERNET_KEYS=key_a).returncode == 0
    stored = manage(tmp_path, "shell", "-c", STORE_A_KEY, FERNET_KEYS=key_a)
    assert stored.returncode == 0, stored.stderr
    return tmp_path, key_a


@ONE_WORKER
def test_missing_fernet_keys_stop_start_up_with_a_message_naming_the_variable(database_written_with_key_a):
    tmp_path, _ = database_written_with_key_a
    result = manage(tmp_path, "check", FERNET_KEYS=None)
    assert result.returncode != 0
    assert "FERNET_KEYS is not set" in result.stderr


@ONE_WORKER
def test_a_wrong_fernet_key_fails_the_start_up_check_instead_of_showing_garbage(database_written_with_key_a):
    tmp_path, _ = database_written_with_key_a
    wrong = Fernet.generate_key().decode()
    check = manage(tmp_path, "check", "--deploy", "--fail-level", "WARNING", FERNET_KEYS=wrong)
    assert check.returncode != 0
    assert "cannot be decrypted with the configured FERNET_KEYS" in check.stderr + check.stdout
    read = manage(tmp_path, "shell", "-c", READ_IT, FERNET_KEYS=wrong)
    assert read.returncode != 0
    assert "DecryptionError" in read.stderr and "none of the configured FERNET_KEYS matches" in read.stderr
    assert "gAAAAA" not in read.stderr + read.stdout  # never the ciphertext in its place


@ONE_WORKER
def test_the_right_key_reads_the_key_back(database_written_with_key_a):
    tmp_path, key_a = database_written_with_key_a
    read = manage(tmp_path, "shell", "-c", READ_IT, FERNET_KEYS=key_a)
    assert read.returncode == 0 and read.stdout.strip().splitlines()[-1] == "DrillSecret-9f8e7d6c5b4a"


# --- A process killed in the middle of a reminder run ----------------------------

SEED_REMINDERS = """
import datetime as dt
from django.utils import timezone
from credentials.services.keys import credential_create
from credentials.validators import CleanKey
from institutions.models import Contact, Institution
from tests.conftest import PASSED_CHECK, accepted_earlier, accepted_submission
for n in range(3):
    i = Institution.objects.create(name=f"Drill {n}", slug=f"drill-{n}", canvas_domain=f"d{n}.instructure.com")
    Contact.objects.create(institution=i, name="Admin", email=f"admin{n}@drill{n}.example.edu")
    accepted_earlier(credential_create(institution=i, source="admin", status="active", check=PASSED_CHECK, key=CleanKey(
        client_id=f"us-east-1#drill-{n}-0000-0001", secret=f"DrillSecret{n}x",
        expires_on=timezone.localdate() + dt.timedelta(days=7))))
"""
# The time the killed sender's lease needs to run out (NOTICE_LEASE), passed
# by moving the lease back rather than by waiting five minutes.
AGE_CLAIMS = """
import datetime as dt
from django.utils import timezone
from credentials.models import Notice
from credentials.services.outbox import claim_batch_size
# The one in flight when killed, and the rest of the batch claimed with it (unsent, waiting out the lease).
assert 1 <= Notice.objects.filter(state="sending").count() <= claim_batch_size()
Notice.objects.filter(state="sending").update(lease_until=timezone.now() - dt.timedelta(seconds=1))
"""


class HangingSMTPHandler:
    """Takes the first message, then never answers: the sender is stuck after delivery, before it records it."""

    def __init__(self) -> None:
        import threading

        self.received: list[str] = []
        self.first_arrived = threading.Event()
        self.release = threading.Event()

    async def handle_DATA(self, server, session, envelope):
        import asyncio

        self.received.append(",".join(envelope.rcpt_tos))
        if len(self.received) == 1:
            self.first_arrived.set()
            while not self.release.is_set():
                await asyncio.sleep(0.05)
        return "250 OK"


def test_a_worker_killed_mid_send_loses_no_reminder_and_sends_at_most_one_twice(tmp_path):
    """The reminder run decides and queues; a real Celery worker delivers and is killed inside a send."""
    import signal
    import socket
    import time

    from aiosmtpd.controller import Controller

    with socket.socket() as probe:  # a free loopback port (aiosmtpd cannot start on port 0)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    handler = HangingSMTPHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    # The embedded broker (files under VAR_DIR), so the worker is another process on this drill's own queue.
    env = {
        "FERNET_KEYS": Fernet.generate_key().decode(),
        "EMAIL_URL": f"smtp://127.0.0.1:{port}",
        "CELERY_BROKER_URL": "filesystem://",
    }
    workers = []

    def worker():
        process_env = {k: v for k, v in os.environ.items() if k not in ("FERNET_KEYS", "CI")}
        process_env.update(
            DEBUG="false", SECRET_KEY="drill-" + "s" * 50, CLIENT_ID_INDEX_KEY="drill-index-" + "i" * 32,
            ALLOWED_HOSTS="registry.example.com", SITE_URL="https://registry.example.com", VAR_DIR=str(tmp_path),
            DATABASE_URL=f"sqlite:///{tmp_path / 'drill.sqlite3'}", CACHE_URL="locmemcache://", **env,
        )  # fmt: skip
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "edpotential", "worker", "--pool", "solo",
             "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "WARNING"],
            cwd=ROOT, env=process_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        workers.append(process)
        return process

    def report() -> tuple[int, int]:
        """(reminders, reminders sent), read straight from the drill's SQLite file: no process to start per look."""
        import sqlite3

        with contextlib.closing(sqlite3.connect(tmp_path / "drill.sqlite3")) as db:
            total, sent = db.execute(
                "SELECT count(*), coalesce(sum(state = 'sent'), 0) FROM credentials_notice WHERE kind = 'reminder'"
            ).fetchone()
        return total, sent

    try:
        assert manage(tmp_path, "migrate", "--noinput", **env).returncode == 0
        assert manage(tmp_path, "shell", "-c", SEED_REMINDERS, **env).returncode == 0
        queued = manage(tmp_path, "send_expiry_reminders", **env)
        assert queued.returncode == 0 and "3 due" in queued.stdout, queued.stdout + queued.stderr

        first = worker()
        assert handler.first_arrived.wait(timeout=120), "the first reminder never reached the mail server"
        first.send_signal(signal.SIGKILL)  # no clean-up, no "finally": as the OOM killer would
        first.wait(timeout=30)
        handler.release.set()
        assert len(handler.received) == 1
        assert report() == (3, 0)  # the killed worker recorded nothing as sent

        assert manage(tmp_path, "shell", "-c", AGE_CLAIMS, **env).returncode == 0
        rerun = manage(
            tmp_path, "send_expiry_reminders", **env
        )  # decides nothing new, queues what waited out its lease
        assert rerun.returncode == 0, rerun.stderr
        worker()
        deadline = time.monotonic() + 120
        while report() != (3, 3):  # every reminder is recorded as sent
            assert time.monotonic() < deadline, f"not all sent: {report()}"
            time.sleep(0.5)
        per_recipient = {r: handler.received.count(r) for r in set(handler.received)}
        assert len(per_recipient) == 3  # nobody was missed
        assert sorted(per_recipient.values()) == [1, 1, 2]  # the one in flight when killed went twice, once
    finally:
        for process in workers:
            process.kill()
            process.wait(timeout=30)
        handler.release.set()
        controller.stop()
