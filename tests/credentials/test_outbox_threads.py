"""Several senders (OUTBOX_DELIVERY_THREADS, OUTBOX_DELIVERY_PROCESSES): each notice once, nothing lost.

The reminder command delivers what it decided from its own process; a send
mostly waits (for the mail server, for the commit), so a few sender threads
share the pages, each with its own database and SMTP connection, each notice
claimed by one of them; and the command forks a few delivering processes,
each with its part of the notices (threads share one interpreter lock). A
real SMTP server on loopback (aiosmtpd). Senders need connections that see
committed rows: PostgreSQL, outside a transaction.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from collections import Counter

import pytest
from django.conf import settings as django_settings
from django.db import connection, transaction

from credentials.models import Notice, ReminderLog
from credentials.services import outbox, reminders
from tests.credentials import test_outbox
from tests.credentials.test_outbox import START, make_customer, make_owner

# test_outbox.py's fixtures: the loopback SMTP server, the frozen clock.
smtp, clock = test_outbox.smtp, test_outbox.clock

REMINDER_SENDER = outbox.SENDERS[Notice.Kind.REMINDER]

needs_postgres = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="sender threads need PostgreSQL (set DATABASE_URL)"
)


def customers(count: int) -> None:
    """`count` colleges of one owner (olivia), each with a key 14 days from expiry: a reminder each is due."""
    owner = make_owner()
    for n in range(count):
        make_customer(n, owner=owner, days=14)


def backends() -> int:
    """Open connections to this test database (ours and any a sender left behind)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
        return cursor.fetchone()[0]


def backends_settle_at(expected: int, *, seconds: float = 5.0) -> int:
    """The backends' count once it reaches `expected` (a closed connection's backend ends a moment later)."""
    deadline = time.monotonic() + seconds
    while (count := backends()) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return count


def recording_senders(monkeypatch, *, fail_once: int | None = None) -> list[str]:
    """Record which thread sends each reminder; optionally break the send of one notice, once."""
    seen: list[str] = []
    real = outbox.SENDERS[Notice.Kind.REMINDER]

    def sender(*, notice, **kwargs):
        seen.append(threading.current_thread().name)
        if notice.pk == fail_once and seen.count("broken") == 0:
            seen.append("broken")
            raise RuntimeError("a bug in a sender, not a mail server's refusal")
        return real(notice=notice, **kwargs)

    monkeypatch.setitem(outbox.SENDERS, Notice.Kind.REMINDER, sender)
    return seen


@needs_postgres
@pytest.mark.django_db(transaction=True)
def test_three_senders_deliver_each_due_reminder_once_and_close_their_connections(smtp, clock, settings, monkeypatch):
    settings.OUTBOX_DELIVERY_THREADS = 3
    customers(24)
    senders = recording_senders(monkeypatch)
    before = backends()

    run = outbox.reminders_send_due()

    assert run.due == 24 and run.sent == 24 and run.failed == 0
    reminders = Counter(rcpt for rcpt in smtp.received if rcpt != ("olivia@edpotential.example",))
    assert sorted(reminders) == sorted((f"admin{n}@c{n}.example.edu",) for n in range(24))
    assert set(reminders.values()) == {1}  # each once
    assert smtp.received.count(("olivia@edpotential.example",)) == 1  # the owner's one summary
    assert set(Notice.objects.values_list("state", "attempts")) == {(Notice.State.SENT, 1)}
    assert set(ReminderLog.objects.values_list("state", flat=True)) == {ReminderLog.State.SENT}
    assert len({name for name in senders if name.startswith("outbox-sender-")}) >= 2  # the page was shared
    assert backends_settle_at(before) == before  # each sender closed its database connection


@needs_postgres
@pytest.mark.django_db(transaction=True)
def test_a_sender_that_breaks_stops_the_run_and_its_notice_goes_out_once_after_the_lease(
    smtp, clock, settings, monkeypatch
):
    settings.OUTBOX_DELIVERY_THREADS = 3
    customers(12)
    reminders.reminders_decide(today=START.date(), now=START)
    victim = Notice.objects.filter(kind=Notice.Kind.REMINDER).order_by("pk")[5]
    recording_senders(monkeypatch, fail_once=victim.pk)
    before = backends()

    with pytest.raises(RuntimeError, match="a bug in a sender"):
        outbox.outbox_deliver_due()

    assert backends_settle_at(before) == before
    # The broken sender's claimed batch waits for its lease, as after a crash: the victim and the
    # notices claimed with it. The other senders went on with theirs; the rest were never claimed.
    held = set(Notice.objects.filter(state=Notice.State.SENDING).values_list("pk", flat=True))
    assert victim.pk in held and len(held) <= outbox.claim_batch_size()
    assert Notice.objects.get(pk=victim.pk).sent_at is None
    sent_first = len(smtp.received)
    pending = Notice.objects.filter(state=Notice.State.PENDING).count()
    assert sent_first + len(held) + pending == 12 and sent_first < 12

    assert outbox.outbox_deliver_due().count(Notice.Kind.REMINDER, "sent") == pending  # not the held ones
    clock.shift(django_settings.NOTICE_LEASE + dt.timedelta(seconds=1))
    assert outbox.outbox_deliver_due().count(Notice.Kind.REMINDER, "sent") == len(held)  # after their lease
    assert sorted(smtp.received) == sorted((f"admin{n}@c{n}.example.edu",) for n in range(12))  # once each
    assert set(Notice.objects.values_list("state", flat=True)) == {Notice.State.SENT}


def pid_recording_senders(monkeypatch, log, *, die_at: int | None = None) -> None:
    """Log the process that sends each reminder (a file: the senders are other processes); die at one notice."""
    real = outbox.SENDERS[Notice.Kind.REMINDER]

    def sender(*, notice, **kwargs):
        if notice.pk == die_at:
            os._exit(3)  # as a kill -9 would: no cleanup, no report
        with open(log, "a") as out:
            out.write(f"{os.getpid()}\n")
        return real(notice=notice, **kwargs)

    monkeypatch.setitem(outbox.SENDERS, Notice.Kind.REMINDER, sender)


@needs_postgres
@pytest.mark.django_db(transaction=True)
def test_two_delivering_processes_send_each_due_reminder_once_and_close_their_connections(
    smtp, clock, settings, monkeypatch, tmp_path
):
    settings.OUTBOX_DELIVERY_PROCESSES, settings.OUTBOX_DELIVERY_THREADS = 2, 2
    customers(24)
    log = tmp_path / "senders.log"
    pid_recording_senders(monkeypatch, log)
    before = backends()

    run = outbox.reminders_send_due()

    assert run.due == 24 and run.sent == 24 and run.failed == 0  # the children's outcomes, summed
    reminders_sent = [rcpt for rcpt in smtp.received if rcpt != ("olivia@edpotential.example",)]
    assert sorted(reminders_sent) == sorted((f"admin{n}@c{n}.example.edu",) for n in range(24))  # each once
    assert smtp.received.count(("olivia@edpotential.example",)) == 1
    assert set(Notice.objects.values_list("state", "attempts")) == {(Notice.State.SENT, 1)}
    senders = Counter(log.read_text().split())
    assert len(senders) == 2 and str(os.getpid()) not in senders  # two children, each its part
    assert sum(senders.values()) == 24
    assert backends_settle_at(before) == before  # each child closed its connections


@needs_postgres
@pytest.mark.django_db(transaction=True)
def test_a_delivering_process_that_dies_fails_the_run_and_its_notices_go_out_once_after_the_lease(
    smtp, clock, settings, monkeypatch, tmp_path
):
    settings.OUTBOX_DELIVERY_PROCESSES, settings.OUTBOX_DELIVERY_THREADS = 2, 1
    customers(12)
    reminders.reminders_decide(today=START.date(), now=START)
    victim = Notice.objects.filter(kind=Notice.Kind.REMINDER).order_by("pk")[4]
    pid_recording_senders(monkeypatch, tmp_path / "senders.log", die_at=victim.pk)

    with pytest.raises(RuntimeError, match=r"outbox-delivery-\d died \(exit code 3\)"):
        outbox.outbox_deliver_due()

    # The dead child's claimed batch waits for its lease; its sibling delivered its whole part.
    held = set(Notice.objects.filter(state=Notice.State.SENDING).values_list("pk", flat=True))
    assert victim.pk in held and len(held) <= outbox.claim_batch_size()
    pending = Notice.objects.filter(state=Notice.State.PENDING).count()
    sent_first = len(smtp.received)
    assert sent_first + len(held) + pending == 12 and sent_first >= 6
    monkeypatch.setitem(outbox.SENDERS, Notice.Kind.REMINDER, REMINDER_SENDER)  # no more dying
    assert outbox.outbox_deliver_due().count(Notice.Kind.REMINDER, "sent") == pending
    clock.shift(django_settings.NOTICE_LEASE + dt.timedelta(seconds=1))
    assert outbox.outbox_deliver_due().count(Notice.Kind.REMINDER, "sent") == len(held)
    assert sorted(smtp.received) == sorted((f"admin{n}@c{n}.example.edu",) for n in range(12))  # once each


SENDER_COUNTS = pytest.mark.parametrize(
    ("setting", "count"),
    [("OUTBOX_DELIVERY_THREADS", outbox.delivery_threads), ("OUTBOX_DELIVERY_PROCESSES", outbox.delivery_processes)],
)


@SENDER_COUNTS
@pytest.mark.django_db
def test_one_sender_inside_a_transaction_or_when_set_to_one(settings, setting, count):
    """Another connection cannot see rows the caller has not committed."""
    setattr(settings, setting, 3)
    assert count() == 1  # the test runs inside a transaction
    setattr(settings, setting, 1)
    assert count() == 1


@SENDER_COUNTS
@pytest.mark.django_db(transaction=True)
def test_outside_a_transaction_the_setting_decides_on_postgresql(settings, setting, count):
    """SQLite has one writer at a time: more senders would only queue for its lock."""
    setattr(settings, setting, 3)
    assert count() == (3 if connection.vendor == "postgresql" else 1)
    with transaction.atomic():
        assert count() == 1
