"""End to end: beat's task on real Redis, a real Celery worker, a real SMTP server on loopback.

Runs only on PostgreSQL with a redis:// broker (the worker is another
process: it must reach the test database, which SQLite keeps in memory).
Skipped elsewhere, except under CI, where a skip would hide a broken setup.
"""

from __future__ import annotations

import datetime as dt
import email
import os
import socket
import subprocess
import sys
import time
from email import policy
from pathlib import Path
from urllib.parse import quote

import icalendar
import pytest
from aiosmtpd.controller import Controller
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection
from django.utils import timezone

from credentials.models import CD2Credential, Notice, ReminderLog
from credentials.services.keys import credential_create
from credentials.tasks import send_expiry_reminders, sweep_notices
from credentials.validators import CleanKey
from institutions.models import Contact, Institution
from tests.conftest import PASSED_CHECK, PLANTED_SECRET, accepted_earlier

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
# How long to wait for the worker to do its job before the test gives up
# (a deadline for a hung setup, not a performance assertion).
DEADLINE_SECONDS = 90


def _require_real_services() -> None:
    problems = []
    if connection.vendor != "postgresql":
        problems.append("the database is not PostgreSQL (set DATABASE_URL=postgres://...)")
    if not settings.CELERY_BROKER_URL.startswith("redis://"):
        problems.append("the Celery broker is not Redis (set CELERY_BROKER_URL=redis://...)")
    if problems:
        message = "End-to-end reminder test needs real services: " + "; ".join(problems)
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


class Inbox:
    """aiosmtpd handler: keeps every message the server accepts."""

    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd calls it by this name
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        self.messages.append(email.message_from_bytes(envelope.original_content, policy=policy.default))
        return "250 Message accepted for delivery"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def real_services():
    _require_real_services()


@pytest.fixture
def smtp_server():
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=_free_port())
    controller.start()
    try:
        yield controller, inbox
    finally:
        controller.stop()


def _database_url() -> str:
    db = connection.settings_dict
    auth = quote(db["USER"] or "", safe="")
    if db.get("PASSWORD"):
        auth += ":" + quote(db["PASSWORD"], safe="")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def _process_env(controller) -> dict:
    """The environment of a registry process of this test: its database, broker and SMTP server."""
    return {
        **os.environ,
        "DEBUG": "true",
        # pytest-django's test database (test_<name>), not the development one.
        "DATABASE_URL": _database_url(),
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "EMAIL_URL": f"smtp://127.0.0.1:{controller.port}",
        "FERNET_KEYS": ",".join(settings.FERNET_KEYS),
        "SECRET_KEY": settings.SECRET_KEY,
        "SITE_URL": settings.SITE_URL,
        "DEFAULT_FROM_EMAIL": "registry@edpotential.example",
        # Beat's hourly run reaches an institution from this hour of its day: from midnight, so at any test time.
        "REMINDERS_HOUR": "0",
        "REMINDERS_MINUTE": "0",
    }


def _start_worker(env: dict, log_path: Path, *, name: str, pool: str = "solo", concurrency: int = 1):
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", "edpotential", "worker",
                f"--pool={pool}", f"--concurrency={concurrency}", "--purge",
                "--without-gossip", "--without-mingle", "--without-heartbeat",
                "--loglevel=INFO", f"--hostname={name}-{os.getpid()}@%h",
            ],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip


def _stop(process) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture
def worker(real_services, smtp_server, tmp_path):
    controller, _ = smtp_server
    env = _process_env(controller)
    log_path = tmp_path / "worker.log"
    process = _start_worker(env, log_path, name="e2e-reminders")
    try:
        _wait_for(lambda: b"ready." in log_path.read_bytes(), what="the worker to start", log=log_path)
        yield process, log_path
    finally:
        _stop(process)


def _wait_for(condition, *, what: str, log: Path) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"Gave up waiting for {what}. Worker log:\n{log.read_text(errors='replace')[-4000:]}")
        time.sleep(0.2)


def _succeeded(log: Path, task: str) -> int:
    lines = log.read_text(errors="replace").splitlines()
    return sum(1 for line in lines if f"Task {task}[" in line and "succeeded" in line)


def _customer(*, name: str, slug: str, contact: str, owner, client_id: str, expires_on: dt.date) -> None:
    """An active institution of `owner` with one contact who gets reminders and an active key (the planted Secret)."""
    institution = Institution.objects.create(
        name=name, slug=slug, canvas_domain=f"{slug}.instructure.com", status=Institution.Status.ACTIVE,
        account_owner=owner,
    )  # fmt: skip
    Contact.objects.create(institution=institution, name="Ada Admin", email=contact)
    credential = credential_create(
        institution=institution,
        key=CleanKey(client_id=client_id, secret=PLANTED_SECRET, expires_on=expires_on),
        source=CD2Credential.Source.ADMIN,
        status=CD2Credential.Status.ACTIVE,
        check=PASSED_CHECK,
    )
    accepted_earlier(credential)  # not a key accepted this minute (those wait a day)


def test_beats_reminder_task_reaches_a_real_smtp_server_once_with_its_calendar_file(real_services, smtp_server, worker):
    owner = get_user_model().objects.create_user(username="olivia", email="olivia@edpotential.example")
    expires_on = timezone.localdate() + dt.timedelta(days=14)
    _customer(
        name="Northfield University", slug="northfield", contact="ada@northfield.example.edu", owner=owner,
        client_id="us-east-1#e2e00000-0000-4000-8000-00000000e2e1", expires_on=expires_on,
    )  # fmt: skip
    _, inbox = smtp_server
    _, log = worker

    send_expiry_reminders.delay()
    # The reminder to the contact and the owner's summary, each through the outbox.
    _wait_for(lambda: len(inbox.messages) >= 2, what="the reminder and the owner's summary", log=log)
    # Beat firing twice must not send twice.
    send_expiry_reminders.delay()
    _wait_for(lambda: _succeeded(log, "credentials.tasks.send_expiry_reminders") >= 2, what="the second run", log=log)
    sweep_notices.delay()  # nothing is left to deliver
    _wait_for(lambda: _succeeded(log, "credentials.tasks.sweep_notices") >= 1, what="the sweep", log=log)

    assert len(inbox.messages) == 2
    by_rcpt = {tuple(sorted(rcpt)): message for (_, rcpt), message in zip(inbox.envelopes, inbox.messages, strict=True)}
    message = by_rcpt[("ada@northfield.example.edu",)]
    assert message["Subject"] == "Canvas Data 2 key for Northfield University expires in 14 days"
    assert message["Reply-To"] == "olivia@edpotential.example"
    assert message["Cc"] is None
    [ics] = [part for part in message.iter_attachments() if part.get_content_type() == "text/calendar"]
    assert ics.get_filename() == "cd2-key-expiry-northfield.ics"
    event = icalendar.Calendar.from_ical(ics.get_content()).walk("VEVENT")[0]
    assert event.decoded("dtstart") == expires_on
    summary = by_rcpt[("olivia@edpotential.example",)]
    assert summary["Subject"] == "Canvas Data 2 keys today: 1 of your institutions needs attention"
    for sent in inbox.messages:
        assert PLANTED_SECRET not in sent.as_string()
    log = ReminderLog.objects.get()
    assert log.threshold == 14 and log.notice.sent_at is not None
    assert set(Notice.objects.values_list("state", flat=True)) == {Notice.State.SENT}


def test_the_command_queues_and_two_workers_of_three_threads_deliver_each_reminder_once(
    real_services, smtp_server, tmp_path
):
    """`manage.py send_expiry_reminders --wait` as cron runs it, with two Celery workers of three threads each.

    The command decides and queues; the workers deliver, six sends at once,
    each notice claimed by one of them. A second run (cron firing twice)
    decides nothing and sends nothing.
    """
    owner = get_user_model().objects.create_user(username="olivia", email="olivia@edpotential.example")
    expires_on = timezone.localdate() + dt.timedelta(days=14)
    for n in range(30):
        _customer(
            name=f"College {n}", slug=f"college-{n}", contact=f"admin{n}@c{n}.example.edu", owner=owner,
            client_id=f"us-east-1#e2e00000-0000-4000-8000-{n:012d}", expires_on=expires_on,
        )  # fmt: skip
    controller, inbox = smtp_server
    env = {**_process_env(controller), "OUTBOX_TASK_BATCH": "4"}  # several tasks, so both workers take some
    logs = [tmp_path / f"worker-{n}.log" for n in range(2)]
    workers = [
        _start_worker(env, log, name=f"e2e-command-{n}", pool="threads", concurrency=3) for n, log in enumerate(logs)
    ]
    try:
        for log in logs:
            _wait_for(lambda log=log: b"ready." in log.read_bytes(), what="a worker to start", log=log)

        def command() -> str:
            done = subprocess.run(
                [sys.executable, "manage.py", "send_expiry_reminders", "--wait", "--wait-timeout", "60"],
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=DEADLINE_SECONDS,
            )  # fmt: skip
            assert done.returncode == 0, done.stdout + done.stderr
            return done.stdout

        first = command()
        second = command()
    finally:
        for process in workers:
            _stop(process)

    assert "30 due" in first and "31 notice(s) queued for the workers" in first, first
    assert "Delivered: 30 reminder(s) sent, 0 failed, 0 superseded; 1 owner summary(ies) sent." in first, first
    assert "0 due" in second and "0 notice(s) queued" in second, second
    recipients = sorted(tuple(rcpt) for _, rcpt in inbox.envelopes)
    expected = sorted([(f"admin{n}@c{n}.example.edu",) for n in range(30)] + [("olivia@edpotential.example",)])
    assert recipients == expected  # each reminder once, the owner's one summary
    assert set(Notice.objects.values_list("state", "attempts")) == {(Notice.State.SENT, 1)}
    assert ReminderLog.objects.filter(notice__state=Notice.State.SENT).count() == 30
    # Both workers delivered: the parallelism is Celery's.
    for log in logs:
        assert _succeeded(log, "credentials.tasks.deliver_notices") >= 1, log.read_text(errors="replace")[-3000:]
    for sent in inbox.messages:
        assert PLANTED_SECRET not in sent.as_string()
