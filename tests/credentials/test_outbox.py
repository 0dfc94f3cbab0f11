"""The outbox: an outage of hours, a replaced key, owners' one mail a day, /healthz and a simulated year.

Time is moved with time-machine, never waited. The mail server is a real
SMTP server on loopback (aiosmtpd) that refuses while `down` is set. The
"beat path" runs the beat tasks with a broker stand-in (a list the tasks
are published to, drained like a worker would); the real worker on Redis
is tests/e2e/test_reminders_e2e.py. On PostgreSQL (CI, or DATABASE_URL)
these run against it.
"""

from __future__ import annotations

import datetime as dt
import socket
import threading
from collections import Counter
from unittest import mock

import pytest
import time_machine
from aiosmtpd.controller import Controller
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import OperationalError, connection, connections, transaction
from django.utils import timezone

from credentials import tasks
from credentials.models import CD2Credential, Notice, ReminderLog, ScheduledJob
from credentials.services import health, jobs, notices, outbox, reminders
from credentials.services.keys import credential_create, credential_set_status
from credentials.validators import CleanKey
from institutions.models import Contact, Institution
from tests.conftest import PASSED_CHECK, accepted_earlier, reminders_run

START = dt.datetime(2027, 9, 1, 9, 0, tzinfo=dt.UTC)


class Inbox:
    """aiosmtpd handler: refuses every message with 451 while `down`, else keeps it."""

    def __init__(self) -> None:
        self.down = False
        self.received: list[tuple[str, ...]] = []
        self.subjects: list[str] = []

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd calls it by this name
        if self.down:
            return "451 4.3.0 Try again later"
        self.received.append(tuple(envelope.rcpt_tos))
        text = envelope.original_content.decode(errors="replace")
        subject = next((line[9:] for line in text.splitlines() if line.startswith("Subject: ")), "")
        self.subjects.append(subject)
        return "250 OK"

    def to(self, address: str) -> list[str]:
        return [s for r, s in zip(self.received, self.subjects, strict=True) if address in r]


@pytest.fixture
def smtp(settings):
    inbox = Inbox()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", port
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""
    try:
        yield inbox
    finally:
        controller.stop()


@pytest.fixture
def clock():
    with time_machine.travel(START, tick=False) as traveller:
        yield traveller


class Broker:
    """Stands in for Redis and the worker: tasks published by name, run in order when drained."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, tuple]] = []
        self.countdowns: dict[tuple, float | None] = {}  # the last countdown each task's args were published with

    def publish(self, name, *, args=(), countdown=None):
        args = tuple(tuple(a) if isinstance(a, list) else a for a in args)  # a batch's ids, hashable
        self.messages.append((name, args))
        self.countdowns[args] = countdown

    def drain(self) -> None:
        while self.messages:
            name, args = self.messages.pop(0)
            assert name in (jobs.DELIVER_NOTICE, jobs.DELIVER_NOTICES)
            (tasks.deliver_notice if name == jobs.DELIVER_NOTICE else tasks.deliver_notices).apply(args=list(args))


@pytest.fixture
def broker():
    broker = Broker()
    with mock.patch.object(jobs, "job_enqueue", broker.publish):
        yield broker


def make_owner(name="olivia"):
    return get_user_model().objects.create_user(username=name, email=f"{name}@edpotential.example", first_name="O")


def make_customer(n: int, *, owner, days: int) -> CD2Credential:
    institution = Institution.objects.create(
        name=f"College {n}", slug=f"college-{n}", canvas_domain=f"c{n}.instructure.com", account_owner=owner
    )
    Contact.objects.create(institution=institution, name="Admin", email=f"admin{n}@c{n}.example.edu")
    return add_key(institution, days=days)


def add_key(institution, *, days: int) -> CD2Credential:
    n = CD2Credential.objects.count() + 1
    return accepted_earlier(
        credential_create(
            institution=institution,
            key=CleanKey(
                client_id=f"us-east-1#0a1b2c3d-0000-4000-8000-{n:012d}",
                secret="secret-value-Xy9",
                expires_on=timezone.localdate() + dt.timedelta(days=days),
            ),
            source=CD2Credential.Source.ADMIN,
            status=CD2Credential.Status.ACTIVE,
            check=PASSED_CHECK,
        )
    )


def beat_run(broker: Broker) -> None:
    tasks.send_expiry_reminders.apply()
    broker.drain()


def beat_sweep(broker: Broker) -> None:
    tasks.sweep_notices.apply()
    broker.drain()


# --------------------------------------------------------------------------
# A mail server down for two hours, by either door
# --------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("door", ["command", "beat"])
def test_a_mail_server_refusing_for_two_hours_loses_nothing_and_sends_each_notice_once(door, smtp, clock, broker):
    owner = make_owner()
    keys = [make_customer(n, owner=owner, days=days) for n, days in enumerate((14, 7, 1, 30, 0))]
    replaced = keys[3]
    smtp.down = True

    if door == "command":
        call_command("send_expiry_reminders", stdout=open("/dev/null", "w"))
        broker.drain()  # the workers deliver what the command queued
    else:
        beat_run(broker)
    assert smtp.received == []
    assert Notice.objects.filter(state=Notice.State.PENDING).count() == 6  # 5 reminders, 1 owner summary
    # While its reminder waits for a retry, College 3 hands over a new key.
    add_key(replaced.institution, days=365)

    for _ in range(24):  # two hours, the sweep every five minutes
        clock.shift(dt.timedelta(minutes=5))
        if door == "command":
            call_command("send_expiry_reminders", stdout=open("/dev/null", "w"))
            broker.drain()
        else:
            beat_sweep(broker)
    assert smtp.received == []
    smtp.down = False
    for _ in range(60):  # the next hour, mail accepted
        clock.shift(dt.timedelta(minutes=5))
        if door == "command":
            call_command("send_expiry_reminders", stdout=open("/dev/null", "w"))
            broker.drain()
        else:
            beat_sweep(broker)

    per_address = Counter(address for rcpt in smtp.received for address in rcpt)
    assert per_address == {
        "admin0@c0.example.edu": 1,
        "admin1@c1.example.edu": 1,
        "admin2@c2.example.edu": 1,
        "admin4@c4.example.edu": 1,
        "olivia@edpotential.example": 1,  # one summary, not one per reminder
    }
    states = Counter(Notice.objects.values_list("state", flat=True))
    assert states == {Notice.State.SENT: 5, Notice.State.SUPERSEDED: 1}
    superseded = Notice.objects.get(state=Notice.State.SUPERSEDED)
    assert superseded.credential_id == replaced.pk and superseded.sent_at is None
    assert ReminderLog.objects.get(credential=replaced).notice == superseded  # the step's record is its notice
    assert ReminderLog.objects.filter(notice__state=Notice.State.SENT).count() == 4


@pytest.mark.django_db(transaction=True)
def test_a_reminder_waiting_for_a_retry_is_not_sent_once_a_newer_key_is_pending_and_resumes_if_it_ends_invalid(
    smtp, clock, broker
):
    old = make_customer(1, owner=make_owner(), days=14)
    smtp.down = True
    beat_run(broker)  # the 14-day step is decided; the mail server refuses it
    waiting = Notice.objects.get(kind=Notice.Kind.REMINDER)
    assert waiting.state == Notice.State.PENDING and smtp.to("admin1@c1.example.edu") == []

    clock.shift(dt.timedelta(minutes=30))
    newer = credential_create(  # the customer hands over a new key while the reminder waits
        institution=old.institution,
        key=CleanKey(
            client_id="us-east-1#0a1b2c3d-0000-4000-8000-999999999999",
            secret="secret-value-Xy9",
            expires_on=timezone.localdate() + dt.timedelta(days=365),
        ),
        source=CD2Credential.Source.LINK,
    )
    broker.messages = [m for m in broker.messages if m[0] in jobs.DELIVERY_TASKS]  # its check is not run here
    smtp.down = False
    clock.shift(dt.timedelta(hours=2))
    beat_sweep(broker)

    waiting.refresh_from_db()
    assert waiting.state == Notice.State.SUPERSEDED and waiting.sent_at is None
    assert "newer key" in waiting.last_error and "waiting for its check" in waiting.last_error
    assert smtp.to("admin1@c1.example.edu") == []
    assert not ReminderLog.objects.filter(credential=old).exists()  # the step is given back

    clock.shift(dt.timedelta(days=1))
    beat_run(broker)  # still pending: paused
    assert smtp.to("admin1@c1.example.edu") == []

    credential_set_status(credential=newer, status=CD2Credential.Status.INVALID, reason="401 from the gateway")
    clock.shift(dt.timedelta(days=1))
    beat_run(broker)
    beat_run(broker)
    assert len(smtp.to("admin1@c1.example.edu")) == 1  # the old key's reminders go on, once
    assert ReminderLog.objects.get(credential=old).notice.state == Notice.State.SENT


@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_mid_send_is_sent_again_within_the_lease_at_most_one_duplicate(smtp, clock, broker, settings):
    owner = make_owner()
    make_customer(1, owner=owner, days=14)
    tasks.send_expiry_reminders.apply()
    reminder_id = Notice.objects.get(kind=Notice.Kind.REMINDER).pk
    assert any(reminder_id in args[0] for _, args in broker.messages)  # queued for the worker
    # Killed after the mail server took the message, before the outbox recorded it.
    with mock.patch.object(notices, "notice_mark_sent", side_effect=SystemExit("kill -9")):
        with pytest.raises(SystemExit):
            tasks.deliver_notice.apply(args=[reminder_id], throw=True)
    broker.messages.clear()
    assert len(smtp.to("admin1@c1.example.edu")) == 1
    assert Notice.objects.get(pk=reminder_id).state == Notice.State.SENDING

    clock.shift(dt.timedelta(minutes=4))
    beat_sweep(broker)  # the lease has not run out: the sender might still be at work
    assert len(smtp.to("admin1@c1.example.edu")) == 1
    clock.shift(settings.NOTICE_LEASE)
    beat_sweep(broker)
    clock.shift(dt.timedelta(minutes=5))
    beat_sweep(broker)

    assert len(smtp.to("admin1@c1.example.edu")) == 2  # one duplicate, the one in flight, and no more
    notice = Notice.objects.get(pk=reminder_id)
    assert notice.state == Notice.State.SENT and notice.attempts == 2


# --------------------------------------------------------------------------
# Owners: one mail a day
# --------------------------------------------------------------------------


@pytest.mark.django_db
def test_an_owner_with_thirty_institutions_due_the_same_day_gets_one_mail(smtp, clock):
    owner = make_owner()
    for n in range(30):
        make_customer(n, owner=owner, days=7)

    reminders_run()
    reminders_run()

    assert len(smtp.to("olivia@edpotential.example")) == 1
    assert smtp.to("olivia@edpotential.example")[0].startswith("Canvas Data 2 keys today: 30 of your")
    assert sum(1 for rcpt in smtp.received if "olivia@edpotential.example" not in rcpt) == 30


# --------------------------------------------------------------------------
# Claiming a few notices at once (a page delivered in this process)
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lease_s", "email_timeout", "webhook_timeout", "expected"),
    [(300, 30, 5.0, 5), (300, 60, 5.0, 2), (300, 30, 100.0, 1), (4, 30, 5.0, 1), (3600, 10, 5.0, 5)],
)
def test_a_claimed_batch_waits_at_most_half_the_lease_for_its_last_send(
    settings, lease_s, email_timeout, webhook_timeout, expected
):
    settings.NOTICE_LEASE = dt.timedelta(seconds=lease_s)
    settings.EMAIL_TIMEOUT, settings.WEBHOOK_TIMEOUT_SECONDS = email_timeout, webhook_timeout

    batch = outbox.claim_batch_size()

    assert batch == expected
    assert batch == 1 or batch * 2 * max(email_timeout, webhook_timeout) <= lease_s


@pytest.mark.django_db
def test_a_batch_claim_takes_each_due_notice_once_and_leaves_the_rest(clock, settings):
    owner = make_owner()
    for n in range(3):
        make_customer(n, owner=owner, days=14)
    reminders.reminders_decide(today=timezone.localdate(), now=timezone.now())
    due, later, taken_elsewhere = Notice.objects.filter(kind=Notice.Kind.REMINDER).order_by("pk")
    Notice.objects.filter(pk=later.pk).update(next_attempt_at=timezone.now() + dt.timedelta(hours=1))
    assert notices.notice_claim(notice_id=taken_elsewhere.pk, now=timezone.now())
    ids = [due.pk, later.pk, taken_elsewhere.pk]

    assert notices.notices_claim(notice_ids=ids, now=timezone.now()) == {due.pk}
    assert notices.notices_claim(notice_ids=ids, now=timezone.now()) == set()

    due.refresh_from_db()
    assert (due.state, due.attempts, due.lease_until) == (
        Notice.State.SENDING,
        1,
        timezone.now() + settings.NOTICE_LEASE,
    )
    assert Notice.objects.get(pk=later.pk).state == Notice.State.PENDING


@pytest.mark.django_db
def test_a_claim_late_in_a_long_run_holds_its_lease_from_the_claim_not_from_the_runs_start(clock, settings):
    owner = make_owner()
    for n in range(2):
        make_customer(n, owner=owner, days=14)
    run_started = timezone.now()
    reminders.reminders_decide(today=timezone.localdate(), now=run_started)
    one, two = Notice.objects.filter(kind=Notice.Kind.REMINDER).order_by("pk")
    clock.shift(settings.NOTICE_LEASE * 3)  # the run has been sending for three leases

    assert notices.notice_claim(notice_id=one.pk, now=run_started)
    assert notices.notices_claim(notice_ids=[two.pk], now=run_started) == {two.pk}

    leases = set(Notice.objects.filter(pk__in=[one.pk, two.pk]).values_list("lease_until", flat=True))
    assert leases == {timezone.now() + settings.NOTICE_LEASE}
    # So a sweep now, or another sender on the run's clock, leaves them alone.
    assert notices.due_notices(now=timezone.now()) == []


@pytest.mark.django_db(transaction=True)
def test_a_command_killed_mid_batch_loses_none_of_the_batch_and_duplicates_only_the_one_in_flight(
    smtp, clock, broker, settings
):
    owner = make_owner()
    for n in range(4):
        make_customer(n, owner=owner, days=14)
    record_sent = notices.notice_mark_sent
    sends = []

    def killed_after_second_send(**kwargs):
        # The second message reached the mail server; the process dies before the outbox records it.
        sends.append(kwargs["notice_id"])
        if len(sends) == 2:
            raise SystemExit("kill -9")
        return record_sent(**kwargs)

    with mock.patch.object(notices, "notice_mark_sent", side_effect=killed_after_second_send):
        with pytest.raises(SystemExit):
            reminders_run()
    assert outbox.claim_batch_size() == 5  # the four reminders were claimed together
    states = Counter(Notice.objects.filter(kind=Notice.Kind.REMINDER).values_list("state", flat=True))
    assert states == {Notice.State.SENT: 1, Notice.State.SENDING: 3}  # the killed one and the two after it

    beat_sweep(broker)  # within the lease: the dead sender's claims are left alone
    assert len(smtp.received) == 2
    clock.shift(settings.NOTICE_LEASE + dt.timedelta(seconds=1))
    beat_sweep(broker)
    beat_sweep(broker)

    per_contact = Counter(rcpt for rcpts in smtp.received for rcpt in rcpts if rcpt.startswith("admin"))
    in_flight = Notice.objects.get(pk=sends[1]).recipients
    assert per_contact == {f"admin{n}@c{n}.example.edu": 2 if f"admin{n}@" in in_flight else 1 for n in range(4)}
    assert set(Notice.objects.filter(kind=Notice.Kind.REMINDER).values_list("state", flat=True)) == {"sent"}


@pytest.mark.django_db(transaction=True)
def test_a_batch_claim_skips_a_notice_another_sender_holds_without_waiting_for_it(clock):
    if connection.vendor != "postgresql":
        pytest.skip("SQLite has no row locks; the skip needs PostgreSQL (set DATABASE_URL)")
    owner = make_owner()
    for n in range(2):
        make_customer(n, owner=owner, days=14)
    reminders.reminders_decide(today=timezone.localdate(), now=timezone.now())
    held, free = Notice.objects.filter(kind=Notice.Kind.REMINDER).order_by("pk")
    locked, release = threading.Event(), threading.Event()

    def other_sender():
        try:
            with transaction.atomic():
                list(Notice.objects.select_for_update().filter(pk=held.pk))
                locked.set()
                release.wait(10)
        finally:
            connections.close_all()

    thread = threading.Thread(target=other_sender)
    thread.start()
    try:
        assert locked.wait(10)
        # Waiting for the lock instead would return both, after the other sender let go.
        assert notices.notices_claim(notice_ids=[held.pk, free.pk], now=timezone.now()) == {free.pk}
    finally:
        release.set()
        thread.join()
    assert Notice.objects.get(pk=held.pk).state == Notice.State.PENDING


# --------------------------------------------------------------------------
# /healthz and the scheduler's record
# --------------------------------------------------------------------------


def record_all_jobs(now):
    for name in health.settings.SCHEDULED_JOBS_OVERDUE_AFTER:
        health.job_record(name=name, started_at=now, finished_at=now, counts={})


@pytest.mark.django_db
def test_healthz_is_200_when_every_component_is_fresh_and_says_nothing_else(client, clock):
    record_all_jobs(timezone.now())

    response = client.get("/healthz")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert set(body["components"].values()) == {"ok"}
    assert {"database", "broker", "job:send-expiry-reminders"} <= set(body["components"])


@pytest.mark.django_db
def test_healthz_turns_503_when_the_reminder_job_is_overdue(client, clock):
    record_all_jobs(timezone.now())
    clock.shift(dt.timedelta(hours=1, minutes=50))
    for name in ("sweep-notices", "verify-pending-credentials", "verify-active-credentials"):
        health.job_record(name=name, started_at=timezone.now(), finished_at=timezone.now(), counts={})
    assert client.get("/healthz").status_code == 200

    # The reminder run is hourly (each institution at its own morning): 2 hours and a minute is overdue.
    clock.shift(dt.timedelta(minutes=11))
    health.job_record(name="sweep-notices", started_at=timezone.now(), finished_at=timezone.now(), counts={})
    response = client.get("/healthz")

    assert response.status_code == 503
    assert response.json()["components"]["job:send-expiry-reminders"] == "failing"
    assert response.json()["components"]["job:sweep-notices"] == "ok"


@pytest.mark.django_db
def test_a_job_that_never_ran_is_overdue_once_the_scheduler_has_run_that_long(client, clock):
    health.job_record(name="sweep-notices", started_at=timezone.now(), finished_at=timezone.now(), counts={})
    assert health.health_check()["job:send-expiry-reminders"] == "ok"
    clock.shift(dt.timedelta(hours=27))
    assert health.health_check()["job:send-expiry-reminders"] == "failing"


@pytest.mark.django_db
def test_healthz_turns_503_when_the_database_is_unreachable(client, clock):
    record_all_jobs(timezone.now())

    with mock.patch.object(connection, "cursor", side_effect=OperationalError("connection refused")):
        response = client.get("/healthz")

    assert response.status_code == 503
    components = response.json()["components"]
    assert components["database"] == "failing"
    assert components["job:send-expiry-reminders"] == "failing"  # unknown counts as failing


@pytest.mark.django_db
def test_a_reminder_run_records_itself_and_pings_the_configured_url(clock, settings):
    settings.REMINDERS_PING_URL = "https://hc-ping.example/abc"
    with mock.patch.object(health.requests, "get") as get:
        reminders.reminders_send_due()

    get.assert_called_once_with("https://hc-ping.example/abc", timeout=health.PING_TIMEOUT_SECONDS)
    run = ScheduledJob.objects.get(name="send-expiry-reminders")
    assert run.finished_at == timezone.now() and run.counts["due"] == 0
