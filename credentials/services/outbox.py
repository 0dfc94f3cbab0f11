"""The outbox's delivery: one engine for every notice, whoever asks.

A run decides (reminders_send_due writes reminder steps and owner
summaries; the digest writes itself; a decision about a key writes its own
notice) and the outbox delivers: each notice is claimed
(services/notices.py), its kind's sender turns it into a message or a
reason not to send (credentials.outgoing), and this module sends it and
records the outcome. Only this module and notices.py write a notice's
delivery state; senders only write mail.

Parallel delivery is Celery's: the command and the beat task both decide
and queue (outbox_enqueue_due: a deliver_notices task per few due notices),
and the workers' concurrency is how many send at once (docs/RUNBOOK.md).
Each notice is claimed by one sender, so two workers never send it twice.
outbox_deliver_due delivers in the calling process, one notice after the
other, with the same claim, backoff and give-up rule: the unit tests' door
(and what a queued task does with its batch).
The sweep (beat, every few minutes) queues notices whose retry is due and
those left in "sending" by a killed sender past their lease.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from django.conf import settings
from django.core.mail import EmailMessage, get_connection
from django.db import transaction
from django.db.models import Prefetch
from django.utils import timezone

from credentials import outgoing
from credentials.mail.messages import SEND_ERRORS, drop_connection
from credentials.models import Notice, secret_fields_of
from credentials.selectors import newer_key_pending
from credentials.services import health, jobs, metrics, notices
from credentials.signals import notice_failed
from institutions.models import Contact

logger = logging.getLogger(__name__)

# Notices read per query when delivering in this process.
CHUNK_SIZE = 500
# At most this many notices claimed at once (claim_batch_size: fewer with a short lease).
CLAIM_BATCH_MAX = 5


def _loaded():
    """Notices with what their senders read, in one query plus the contacts' prefetch.

    newer_key_pending is read with the page, as the key's status is (a key
    handed in while the page is sent is seen by the next run or retry).
    """
    return (
        Notice.objects.select_related("credential__institution__account_owner", "reminder", "user")
        .defer(*secret_fields_of("credential"))
        .annotate(newer_key_pending=newer_key_pending("credential__"))
        .prefetch_related(
            Prefetch(
                "credential__institution__contacts",
                queryset=Contact.objects.filter(receives_reminders=True).order_by("pk"),
                to_attr="reminder_contacts",
            )
        )
    )


def claim_batch_size() -> int:
    """Notices claimed per transaction when delivering a batch (at most CLAIM_BATCH_MAX).

    The last notice of a claim waits for the sends before it, each bounded by
    the larger of EMAIL_TIMEOUT and WEBHOOK_TIMEOUT_SECONDS; the claim keeps
    that wait within half of NOTICE_LEASE, so no second sender can take a
    notice this one still means to send. A short lease (the kill -9 test's
    seconds) claims one at a time.
    """
    send_timeout = max(settings.EMAIL_TIMEOUT or 0, getattr(settings, "WEBHOOK_TIMEOUT_SECONDS", 0), 1)
    fits = int(settings.NOTICE_LEASE.total_seconds() // (2 * send_timeout))
    return max(1, min(CLAIM_BATCH_MAX, fits))


def _deliver(notice: Notice, *, now: dt.datetime, connection=None) -> str:
    """Claim and send one loaded notice: "sent", "retry", "failed", "closed" (superseded ...) or "" (not ours)."""
    if not notices.notice_claim(notice_id=notice.pk, now=now):
        return ""
    return _send_claimed(notice, now=now, connection=connection)


def _transmit(message: outgoing.Sendable, connection) -> None:
    """Send a built message; a mail goes over the caller's connection (opened first: a no-op while open)."""
    if isinstance(message, EmailMessage) and connection is not None:
        message.connection = connection
        connection.open()
    message.send(fail_silently=False)


def _send_claimed(notice: Notice, *, now: dt.datetime, connection=None, reraise: bool = False, **context) -> str:
    """Have the kind's sender write a notice this sender has claimed, send it and record the outcome.

    The sender's writes (a link for the mail, a key summary) and the
    notice's new state commit together, after the receiver accepted the
    message; a failed send rolls them back and the notice waits for its retry.
    """
    sender = outgoing.sender_for(notice.kind)
    # A run "as of" a later day renders as of it; a retry renders as of now.
    as_of = max(now, notice.as_of)
    notice.attempts += 1
    notice.state = Notice.State.SENDING
    try:
        with transaction.atomic():
            outcome = sender.write(notice=notice, now=as_of, **context)
            if isinstance(outcome, outgoing.Skip):
                notices.notice_close(notice_id=notice.pk, state=outcome.state, reason=outcome.reason, now=as_of)
                if outcome.closed_with is not None:
                    outcome.closed_with()
                if outcome.state == Notice.State.FAILED:
                    notice_failed.send(sender=Notice, notice=notice, reason=outcome.reason, now=as_of)
                return "closed"
            _transmit(outcome.message, connection)
            sent_at = max(as_of, timezone.now())
            notices.notice_mark_sent(notice_id=notice.pk, recipients=", ".join(outcome.recipients), now=sent_at)
            if outcome.sent_with is not None:
                outcome.sent_with(sent_at)
    except SEND_ERRORS as exc:
        drop_connection(connection)
        with transaction.atomic():
            state = notices.notice_retry_later(notice_id=notice.pk, error=exc, now=now)
            if state == Notice.State.FAILED:  # named by its type only: an SMTP reply can quote an address
                notice_failed.send(sender=Notice, notice=notice, reason=type(exc).__name__, now=now)
        logger.warning("Notice %s (%s) not sent yet: %s", notice.pk, notice.kind, type(exc).__name__)
        if reraise:
            raise
        return "failed" if state == Notice.State.FAILED else "retry"
    return "sent"


def _count(outcomes: Counter) -> None:
    """Add a run's outcomes to cd2_outbox_deliveries_total: one UPDATE per kind and outcome, not per notice."""
    for (kind, outcome), n in outcomes.items():
        if outcome:
            metrics.metric_count(metrics.OUTBOX_DELIVERIES, labels={"kind": kind, "outcome": outcome}, n=n)


def _deliver_group(notice: Notice, *, now: dt.datetime, connection=None) -> tuple[str, int]:
    """Send `notice` with every notice of its group due by the group's window, as one message; (outcome, how many).

    Only when `notice` itself is due: the task of a notice already sent with
    its group does nothing, and does not cut short the wait of notices that
    came later. All are sent, retried (one next attempt for all) or closed together.
    """
    sender = outgoing.sender_for(notice.kind)
    ids = notices.notices_claim_group(
        lead_id=notice.pk,
        kind=notice.kind,
        group=sender.group_key(notice),
        now=now,
        until=now + sender.group_window(),
    )
    if not ids:
        return "", 0
    group = list(_loaded().filter(pk__in=ids).order_by("created_at", "pk"))
    try:
        with transaction.atomic():
            outcome = sender.write(notices=group, now=now)
            if isinstance(outcome, outgoing.Skip):
                notices.notices_close(notice_ids=ids, state=outcome.state, reason=outcome.reason, now=now)
                return "closed", len(ids)
            _transmit(outcome.message, connection)
            sent_at = max(now, timezone.now())
            notices.notices_mark_sent(notice_ids=ids, recipients=", ".join(outcome.recipients), now=sent_at)
    except SEND_ERRORS as exc:
        drop_connection(connection)
        states = notices.notices_retry_later(notice_ids=ids, error=exc, now=now)
        logger.warning("%s %s notices not sent yet: %s", len(ids), notice.kind, type(exc).__name__)
        return ("failed" if states and all(s == Notice.State.FAILED for s in states) else "retry"), len(ids)
    return "sent", len(ids)


def notice_send_now(*, notice_id: int, now: dt.datetime | None = None, **context) -> str:
    """Deliver one notice at once for a person waiting on the answer (the admin's "Send reminder now").

    The same claim, send and record as any delivery; `context` goes to the
    sender (the person who asked). A send error is recorded (the notice
    waits for its retry) and raised for the page to show. Returns the
    outcome ("sent", "closed"), or "" when the notice was not due or another
    sender has it.
    """
    now = now or timezone.now()
    notice = _loaded().filter(pk=notice_id).first()
    if notice is None or not notices.notice_claim(notice_id=notice_id, now=now):
        return ""
    outcome = "retry"
    try:
        outcome = _send_claimed(notice, now=now, reraise=True, **context)
    finally:
        _count(Counter({(notice.kind, outcome): 1}))
    return outcome


def notice_deliver(*, notice_id: int, now: dt.datetime | None = None) -> bool:
    """Deliver one notice if it is due and nobody else has it (the deliver_notice task); True if sent."""
    notice = _loaded().filter(pk=notice_id).first()
    if notice is None:
        return False
    now = now or timezone.now()
    if outgoing.sender_for(notice.kind).grouped:
        outcome, count = _deliver_group(notice, now=now)
    else:
        outcome, count = _deliver(notice, now=now), 1
    _count(Counter({(notice.kind, outcome): count}))
    return outcome == "sent"


@dataclass
class Delivery:
    outcomes: Counter

    def count(self, kind: str, outcome: str) -> int:
        return self.outcomes[(kind, outcome)]

    @property
    def sent(self) -> int:
        return sum(n for (_, outcome), n in self.outcomes.items() if outcome == "sent")


def _in_batches(loaded: Iterable[Notice]):
    """Loaded notices in claims of claim_batch_size()."""
    size = claim_batch_size()
    batch: list[Notice] = []
    for notice in loaded:
        batch.append(notice)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _due_pages(*, now: dt.datetime, chunk_size: int):
    """The due notices, loaded a page at a time (keyset): memory stays one page."""
    due = _loaded().filter(notices.notice_due(now))
    last_pk = 0
    while True:
        page = list(due.filter(pk__gt=last_pk).order_by("pk")[:chunk_size])
        if not page:
            return
        last_pk = page[-1].pk
        yield from page


def _deliver_batches(batches, *, now: dt.datetime, per_connection: int = CHUNK_SIZE) -> Counter:
    """Claim and send batches of loaded notices over one SMTP connection.

    The connection is renewed after `per_connection` notices: mail servers
    limit the messages of one session, and a long run should not stake
    everything on one.
    """
    outcomes: Counter = Counter()
    connection = get_connection()
    handled = 0
    try:
        for batch in batches:
            claimed = []
            for notice in batch:
                if outgoing.sender_for(notice.kind).grouped:
                    # Its group's first notice in the batch takes the whole group; the others find it sent.
                    outcome, count = _deliver_group(notice, now=now, connection=connection)
                    outcomes[(notice.kind, outcome)] += count
                else:
                    claimed.append(notice)
            if not claimed:
                continue
            # One claim (and one commit) per few notices, not per notice: most of a claim's time was its commit.
            taken = notices.notices_claim(notice_ids=[notice.pk for notice in claimed], now=now)
            for notice in claimed:
                if notice.pk not in taken:
                    continue
                outcomes[(notice.kind, _send_claimed(notice, now=now, connection=connection))] += 1
                handled += 1
                if handled % per_connection == 0:
                    drop_connection(connection)  # the next send opens a fresh one
    finally:
        drop_connection(connection)
        _count(outcomes)
    return outcomes


def notices_deliver(*, notice_ids: list[int], now: dt.datetime | None = None) -> Delivery:
    """Deliver the given notices that are due and nobody else has (the deliver_notices task), over one connection."""
    now = now or timezone.now()
    loaded = _loaded().filter(pk__in=notice_ids).order_by("pk")
    return Delivery(outcomes=_deliver_batches(_in_batches(loaded), now=now))


def outbox_deliver_due(*, now: dt.datetime | None = None, chunk_size: int = CHUNK_SIZE) -> Delivery:
    """Deliver every due notice from this process, one after the other (what the queued tasks do, in one place).

    The unit tests' door and a stand-in for the workers where none runs;
    production delivers through outbox_enqueue_due and the workers.
    """
    now = now or timezone.now()
    pages = _due_pages(now=now, chunk_size=chunk_size)
    return Delivery(outcomes=_deliver_batches(_in_batches(pages), now=now, per_connection=chunk_size))


def outbox_enqueue_due(*, now: dt.datetime | None = None) -> int:
    """Queue the delivery of every due notice (after the current transaction commits); how many.

    Notices go in tasks of OUTBOX_TASK_BATCH ids (deliver_notices): each task
    sends its few over one SMTP connection, and the workers' concurrency
    sends tasks side by side. Submission links keep the bulk pace on their
    retries too: after an outage a whole batch falls due at once, and
    without a countdown it would go out at worker concurrency. The sweep
    spaces them LINK_BULK_PER_SECOND apart, one task each, as
    link_batch_create spaces first attempts. (A spread longer than the
    sweep interval queues some twice; the claim lets only one send.)
    """
    due = notices.due_notices(now=now or timezone.now())
    rate = max(float(settings.LINK_BULK_PER_SECOND), 0.1)
    size = max(1, int(settings.OUTBOX_TASK_BATCH))
    links = 0
    batch: list[int] = []
    for notice_id, kind in due:
        if kind == Notice.Kind.SUBMISSION_LINK:
            countdown, links = links / rate, links + 1
            jobs.job_enqueue_on_commit(jobs.DELIVER_NOTICE, args=(notice_id,), countdown=countdown, robust=True)
            continue
        batch.append(notice_id)
        if len(batch) == size:
            jobs.job_enqueue_on_commit(jobs.DELIVER_NOTICES, args=(batch,), robust=True)
            batch = []
    if batch:
        jobs.job_enqueue_on_commit(jobs.DELIVER_NOTICES, args=(batch,), robust=True)
    return len(due)


def outbox_sweep(*, now: dt.datetime | None = None) -> int:
    """Beat, every few minutes: queue notices whose retry is due or whose sender died (lease expired)."""
    with health.job_run(health.JOB_SWEEP_NOTICES) as counts:
        counts["queued"] = outbox_enqueue_due(now=now)
    return counts["queued"]


def notice_resend(*, notice_id: int) -> bool:
    """Staff's one-click resend of a notice that failed for good: pending again and queued now."""
    if not notices.notice_resend(notice_id=notice_id):
        return False
    jobs.job_enqueue_on_commit(jobs.DELIVER_NOTICE, args=(notice_id,), robust=True)
    return True
