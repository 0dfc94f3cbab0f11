"""A worker killed with kill -9 in the middle of sending: real PostgreSQL, Redis, Celery worker and SMTP server.

The mail server accepts the connection and the whole message, then holds
its reply to DATA; while it holds, the worker is SIGKILLed. A second worker
and the sweep (beat's sweep_notices, run here every second) must deliver
the notice again once its lease (NOTICE_LEASE, a few seconds here) runs
out, and the row must end "sent" with both attempts recorded.

The duplicate bound (credentials/services/notices.py): the killed worker's
message had fully reached the server, which may deliver it after the client
vanished (RFC 5321 leaves that to the server; RFC 1047 names the duplicate).
So the sink may hold the message twice, never more: one duplicate per crash
inside that window. The killed worker's unacknowledged task stays in Redis
until the visibility timeout; when it returns, the claim finds the notice
sent and does nothing.

Runs only on PostgreSQL with a redis:// broker, as tests/e2e/test_reminders_e2e.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from django.conf import settings
from django.utils import timezone

from credentials.models import CD2Credential, Notice, ReminderLog
from credentials.services.keys import credential_create
from credentials.tasks import send_expiry_reminders, sweep_notices
from credentials.validators import CleanKey
from institutions.models import Contact, Institution
from tests.conftest import PASSED_CHECK, PLANTED_SECRET, accepted_earlier
from tests.e2e.test_reminders_e2e import _database_url, _free_port, _require_real_services, _wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
LEASE_SECONDS = 3
# Kill to redelivery: the lease, a new worker's start-up and one sweep period,
# with room for a loaded machine. Minutes in production (NOTICE_LEASE_MINUTES).
REDELIVERY_BOUND_SECONDS = LEASE_SECONDS + 30


class HoldingInbox:
    """aiosmtpd handler: the first message is received in full, then its 250 is held until `release`."""

    def __init__(self) -> None:
        self.holding = threading.Event()
        self.release = threading.Event()
        self.received: list[tuple[list[str], str]] = []

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd calls it by this name
        self.received.append((list(envelope.rcpt_tos), envelope.original_content.decode(errors="replace")))
        if len(self.received) == 1:
            self.holding.set()
            while not self.release.is_set():
                await asyncio.sleep(0.05)
        return "250 Message accepted for delivery"


def _start_worker(*, name: str, smtp_port: int, log_path: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "DEBUG": "true",
        "DATABASE_URL": _database_url(),
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "EMAIL_URL": f"smtp://127.0.0.1:{smtp_port}",
        "FERNET_KEYS": ",".join(settings.FERNET_KEYS),
        "SECRET_KEY": settings.SECRET_KEY,
        "SITE_URL": settings.SITE_URL,
        "DEFAULT_FROM_EMAIL": "registry@edpotential.example",
        "NOTICE_LEASE_SECONDS": str(LEASE_SECONDS),
        # Beat's hourly run reaches an institution from this hour of its day: from midnight, so at any test time.
        "REMINDERS_HOUR": "0",
        "REMINDERS_MINUTE": "0",
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", "edpotential", "worker",
                "--pool=solo", "--concurrency=1",
                "--without-gossip", "--without-mingle", "--without-heartbeat",
                "--loglevel=INFO", f"--hostname={name}-{os.getpid()}@%h",
            ],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    _wait_for(lambda: b"ready." in log_path.read_bytes(), what=f"worker {name} to start", log=log_path)
    return process


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def holding_smtp():
    inbox = HoldingInbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=_free_port())
    controller.start()
    try:
        yield controller, inbox
    finally:
        inbox.release.set()
        controller.stop()


def test_a_worker_killed_inside_data_has_its_notice_sent_again_after_the_lease_with_one_duplicate_at_most(
    holding_smtp, tmp_path
):
    _require_real_services()
    controller, inbox = holding_smtp
    institution = Institution.objects.create(
        name="Northfield University", slug="northfield", canvas_domain="northfield.instructure.com"
    )  # no account owner: the reminder is the run's only notice
    Contact.objects.create(institution=institution, name="Ada Admin", email="ada@northfield.example.edu")
    accepted_earlier(credential_create(
        institution=institution,
        key=CleanKey(client_id="us-east-1#e2e00000-0000-4000-8000-00000000e2e9", secret=PLANTED_SECRET,
                     expires_on=timezone.localdate() + dt.timedelta(days=14)),
        source=CD2Credential.Source.ADMIN,
        status=CD2Credential.Status.ACTIVE,
        check=PASSED_CHECK,
    ))  # fmt: skip

    first = _start_worker(name="doomed", smtp_port=controller.port, log_path=tmp_path / "first.log")
    second = None
    try:
        send_expiry_reminders.delay()
        if not inbox.holding.wait(timeout=90):
            pytest.fail("The worker never reached DATA:\n" + (tmp_path / "first.log").read_text(errors="replace"))
        notice = Notice.objects.get()
        assert notice.state == Notice.State.SENDING and notice.attempts == 1

        os.kill(first.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        assert first.wait(timeout=30) == -signal.SIGKILL
        inbox.release.set()  # the server may deliver what it had: the worst case for duplicates
        notice.refresh_from_db()
        assert notice.state == Notice.State.SENDING and notice.sent_at is None  # the crash left it leased
        lease_until = notice.lease_until

        second = _start_worker(name="heir", smtp_port=controller.port, log_path=tmp_path / "second.log")

        def delivered() -> bool:
            sweep_notices.delay()  # beat's sweep; it queues nothing until the lease runs out
            time.sleep(1)
            notice.refresh_from_db()
            return notice.state == Notice.State.SENT

        _wait_for(delivered, what="the notice to be sent again", log=tmp_path / "second.log")
        redelivered_after = time.monotonic() - killed_at
    finally:
        _stop(first)
        if second is not None:
            _stop(second)

    print(f"kill -9 to redelivery: {redelivered_after:.1f} s (lease {LEASE_SECONDS} s)")
    assert redelivered_after < REDELIVERY_BOUND_SECONDS
    assert notice.sent_at > lease_until  # nobody overtook the killed sender before its lease ran out
    # The sink: the killed worker's copy and the heir's, one duplicate, never more.
    assert [rcpt for rcpt, _ in inbox.received] == [["ada@northfield.example.edu"]] * 2
    subjects = [next(line for line in text.splitlines() if line.startswith("Subject: ")) for _, text in inbox.received]
    assert subjects == ["Subject: Canvas Data 2 key for Northfield University expires in 14 days"] * 2
    assert all(PLANTED_SECRET not in text for _, text in inbox.received)
    assert notice.attempts == 2 and notice.sent_at is not None and notice.lease_until is None
    assert ReminderLog.objects.get().notice.state == Notice.State.SENT
    assert Notice.objects.count() == 1
