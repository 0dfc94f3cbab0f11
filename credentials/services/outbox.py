"""The outbox's delivery: one way every notice goes out, whoever asks.

A run decides (reminders_send_due writes reminder steps and owner
summaries; the digest writes itself) and the outbox delivers: each notice
is claimed (services/notices.py), rendered and sent by its kind's sender,
and the result recorded. The beat task queues one deliver_notice task per
due notice; the command delivers the same notices in its own process, with
the same claim, backoff and give-up rule, so the two doors behave alike
(with OUTBOX_DELIVERY_THREADS sender threads, as a worker has its concurrency).
The sweep (beat, every few minutes) queues notices whose retry is due and
those left in "sending" by a killed sender past their lease.
"""

from __future__ import annotations

import datetime as dt
import logging
import multiprocessing
import os
import queue
import threading
from collections import Counter
from dataclasses import dataclass

from django.conf import settings
from django.core.mail import get_connection
from django.db import connections, router
from django.db.models import F, Prefetch
from django.utils import timezone

from credentials.models import Notice, secret_fields_of
from credentials.notifications import SEND_ERRORS, drop_connection
from credentials.selectors import newer_key_pending
from credentials.services import digest, health, jobs, links, notices, owners, reminders, submission, verification
from credentials.services.reminders import ReminderRun
from institutions.models import Contact

logger = logging.getLogger(__name__)

# Notices read per query when delivering in this process.
CHUNK_SIZE = 500
# At most this many notices claimed at once (claim_batch_size: fewer with a short lease).
CLAIM_BATCH_MAX = 5

SENDERS = {
    Notice.Kind.REMINDER: reminders.reminder_notice_send,
    Notice.Kind.OWNER_SUMMARY: owners.owner_summary_send,
    Notice.Kind.STAFF_DIGEST: digest.staff_digest_notice_send,
    Notice.Kind.RECEIPT: submission.receipt_notice_send,
    Notice.Kind.KEY_INVALID: verification.key_invalid_notice_send,
    Notice.Kind.KEY_REJECTED: submission.key_rejected_notice_send,
    Notice.Kind.KEY_CONFLICT: submission.key_conflict_notice_send,
    Notice.Kind.SUBMISSION_LINK: links.link_notice_send,
}


def sender_register(kind: str, sender) -> None:
    """Add the sender of a kind that lives outside credentials (an AppConfig.ready calls this).

    The sender is called as sender(notice=, now=, connection=) and returns
    True when it delivered, False when it closed the notice unsent; it
    raises one of notifications.SEND_ERRORS for a retry.
    """
    if kind not in Notice.Kind.values:
        raise ValueError(f"{kind!r} is not a Notice.Kind")
    SENDERS[kind] = sender


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
    """Notices claimed per transaction when delivering a page (at most CLAIM_BATCH_MAX).

    The last notice of a batch waits for the sends before it, each bounded by
    the larger of EMAIL_TIMEOUT and WEBHOOK_TIMEOUT_SECONDS; the batch keeps
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


def _send_claimed(notice: Notice, *, now: dt.datetime, connection=None) -> str:
    """Send a notice this sender has claimed and record the outcome (see _deliver)."""
    notice.attempts += 1
    notice.state = Notice.State.SENDING
    try:
        # A run "as of" a later day renders as of it; a retry renders as of now.
        sent = SENDERS[notice.kind](notice=notice, now=max(now, notice.as_of), connection=connection)
    except SEND_ERRORS as exc:
        drop_connection(connection)
        state = notices.notice_retry_later(notice_id=notice.pk, error=exc, now=now)
        if notice.reminder_id and state == Notice.State.FAILED:
            reminders.reminder_mark_failed(reminder_id=notice.reminder_id, now=now)
        logger.warning("Notice %s (%s) not sent yet: %s", notice.pk, notice.kind, type(exc).__name__)
        return "failed" if state == Notice.State.FAILED else "retry"
    return "sent" if sent else "closed"


def notice_deliver(*, notice_id: int, now: dt.datetime | None = None) -> bool:
    """Deliver one notice if it is due and nobody else has it (the deliver_notice task); True if sent."""
    notice = _loaded().filter(pk=notice_id).first()
    if notice is None:
        return False
    return _deliver(notice, now=now or timezone.now()) == "sent"


@dataclass
class Delivery:
    outcomes: Counter

    def count(self, kind: str, outcome: str) -> int:
        return self.outcomes[(kind, outcome)]


def _senders_can_share() -> bool:
    """Whether other connections may deliver for this caller: PostgreSQL, and no transaction of the caller's.

    Another connection would not see the notices the caller has not
    committed yet; SQLite has one writer at a time, so more senders would
    only queue for its lock.
    """
    connection = connections[router.db_for_write(Notice)]
    return not connection.in_atomic_block and connection.vendor != "sqlite"


def delivery_threads() -> int:
    """Sender threads per delivering process (OUTBOX_DELIVERY_THREADS; 1 where others cannot help)."""
    wanted = max(1, int(getattr(settings, "OUTBOX_DELIVERY_THREADS", 1)))
    return wanted if wanted > 1 and _senders_can_share() else 1


def delivery_processes() -> int:
    """Processes the command forks to deliver (OUTBOX_DELIVERY_PROCESSES; 1 where forking cannot help or is unsafe).

    One, besides where threads cannot share (_senders_can_share), inside a
    daemonic process (a Celery prefork child may not have children) and
    where the platform has no fork().
    """
    wanted = max(1, int(getattr(settings, "OUTBOX_DELIVERY_PROCESSES", 1)))
    if wanted == 1 or not hasattr(os, "fork") or multiprocessing.current_process().daemon:
        return 1
    return wanted if _senders_can_share() else 1


def _due_batches(*, now: dt.datetime, chunk_size: int, share: tuple[int, int] = (0, 1)):
    """The due notices, loaded a page at a time (keyset), in batches of claim_batch_size().

    share=(i, n): only the notices whose id is i modulo n (one delivering
    process's part; the parts never overlap, and each is still claimed).
    """
    batch = claim_batch_size()
    due = _loaded().filter(notices.notice_due(now))
    index, parts = share
    if parts > 1:
        due = due.alias(share=F("pk") % parts).filter(share=index)
    last_pk = 0
    while True:
        page = list(due.filter(pk__gt=last_pk).order_by("pk")[:chunk_size])
        if not page:
            return
        last_pk = page[-1].pk
        for start in range(0, len(page), batch):
            yield page[start : start + batch]


def _deliver_batches(batches, *, now: dt.datetime, per_connection: int = CHUNK_SIZE) -> Counter:
    """Claim and send batches of loaded notices over this thread's own SMTP connection.

    The connection is renewed after `per_connection` notices (a page's
    worth): mail servers limit the messages of one session, and a long run
    should not stake everything on one.
    """
    outcomes: Counter = Counter()
    connection = get_connection()
    handled = 0
    try:
        for claimed in batches:
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
    return outcomes


def _deliver_threaded(batches, *, now: dt.datetime, threads: int, per_connection: int) -> Counter:
    """Hand the batches to `threads` senders, each with its own database and SMTP connections.

    A send spends most of its time waiting (for the mail server, for the
    database's commit), which another thread's rendering can use. Each
    notice is claimed by one sender (SKIP LOCKED), so the exactly-once rule
    and the duplicate bound are the same as with one sender. The queue is
    short, so memory stays one page; a sender that fails stops the run, and
    what it had claimed waits for its lease, as after a crash.
    """
    work: queue.Queue = queue.Queue(maxsize=2 * threads)
    results: list[Counter] = []
    errors: list[BaseException] = []

    def sender() -> None:
        try:
            results.append(_deliver_batches(iter(work.get, None), now=now, per_connection=per_connection))
        except BaseException as exc:  # re-raised by the caller's thread
            errors.append(exc)
            while work.get() is not None:  # drain, so the producer never blocks on a dead sender
                pass
        finally:
            connections.close_all()

    workers = [threading.Thread(target=sender, name=f"outbox-sender-{n}", daemon=True) for n in range(threads)]
    for worker in workers:
        worker.start()
    try:
        for batch in batches:
            if errors:
                break
            work.put(batch)
    finally:
        for _ in workers:
            work.put(None)
        for worker in workers:
            worker.join()
    if errors:
        raise errors[0]
    return sum(results, Counter())


def _deliver_share(*, now: dt.datetime, chunk_size: int, threads: int, share: tuple[int, int]) -> Counter:
    """Deliver one part of the due notices (all of them with share (0, 1)) with `threads` senders."""
    batches = _due_batches(now=now, chunk_size=chunk_size, share=share)
    if threads <= 1:
        return _deliver_batches(batches, now=now, per_connection=chunk_size)
    return _deliver_threaded(batches, now=now, threads=threads, per_connection=chunk_size)


def _share_process(*, pipe, **kwargs) -> None:
    """A forked delivering process: deliver its part, send back the outcomes (or what broke), close its connections."""
    try:
        outcomes = _deliver_share(**kwargs)
        pipe.send(({(str(kind), outcome): n for (kind, outcome), n in outcomes.items()}, ""))
    except BaseException as exc:  # told to the parent, which raises
        pipe.send(({}, f"{type(exc).__name__}: {exc}"))
    finally:
        connections.close_all()
        pipe.close()


def _deliver_forked(*, now: dt.datetime, chunk_size: int, threads: int, processes: int) -> Counter:
    """Fork `processes` delivering processes, each with its part of the due notices and `threads` senders.

    Threads share one interpreter lock, and rendering and MIME are most of a
    send's own time; processes use the other cores (bench/RESULTS.md). Each
    child opens its own database and SMTP connections (the parent closes
    its database connection first, so no socket is shared) and reports its
    outcomes through a pipe. A child that fails or dies makes the run fail
    after the others finished; what it had claimed waits for its lease, as
    after a crash, and nothing is sent twice but the one message a sender
    may have had in flight.
    """
    connections.close_all()
    context = multiprocessing.get_context("fork")
    children = []
    for index in range(processes):
        receiver, sender = context.Pipe(duplex=False)
        child = context.Process(
            target=_share_process,
            name=f"outbox-delivery-{index}",
            kwargs={
                "pipe": sender,
                "now": now,
                "chunk_size": chunk_size,
                "threads": threads,
                "share": (index, processes),
            },
        )
        child.start()
        sender.close()
        children.append((child, receiver))
    outcomes: Counter = Counter()
    errors = []
    for child, receiver in children:
        try:
            report = receiver.recv()  # until the child reports, or dies (EOF)
        except EOFError:
            report = None
        child.join()
        if isinstance(report, tuple):
            counts, error = report
            outcomes.update({tuple(key): n for key, n in counts.items()})
            if error:
                errors.append(f"{child.name}: {error}")
        else:
            errors.append(f"{child.name} died (exit code {child.exitcode})")
    if errors:
        raise RuntimeError("; ".join(errors) + " (what it had claimed waits for its lease)")
    return outcomes


def outbox_deliver_due(
    *,
    now: dt.datetime | None = None,
    chunk_size: int = CHUNK_SIZE,
    threads: int | None = None,
    processes: int | None = None,
) -> Delivery:
    """Deliver every due notice from this process: pages of notices, claimed a few at a time, by a few senders.

    threads: sender threads per process (default delivery_threads()), each
    with its own SMTP connection, renewed every chunk_size notices.
    processes: delivering processes forked for the run (default
    delivery_processes()), each with its part of the notices.
    """
    now = now or timezone.now()
    threads = delivery_threads() if threads is None else threads
    processes = delivery_processes() if processes is None else processes
    if processes > 1:
        return Delivery(outcomes=_deliver_forked(now=now, chunk_size=chunk_size, threads=threads, processes=processes))
    return Delivery(outcomes=_deliver_share(now=now, chunk_size=chunk_size, threads=threads, share=(0, 1)))


def outbox_enqueue_due(*, now: dt.datetime | None = None) -> int:
    """Queue a deliver_notice task per due notice (after the current transaction commits).

    Submission links keep the bulk pace on their retries too: after an outage
    a whole batch falls due at once, and without a countdown it would go out
    at worker concurrency. The sweep spaces them LINK_BULK_PER_SECOND apart,
    as link_batch_create spaces first attempts. (A spread longer than the
    sweep interval queues some twice; the claim lets only one send.)
    """
    due = notices.due_notices(now=now or timezone.now())
    rate = max(float(settings.LINK_BULK_PER_SECOND), 0.1)
    links = 0
    for notice_id, kind in due:
        countdown = None
        if kind == Notice.Kind.SUBMISSION_LINK:
            countdown, links = links / rate, links + 1
        jobs.job_enqueue_on_commit(jobs.DELIVER_NOTICE, args=(notice_id,), countdown=countdown, robust=True)
    return len(due)


def outbox_sweep(*, now: dt.datetime | None = None) -> int:
    """Beat, every few minutes: queue notices whose retry is due or whose sender died (lease expired)."""
    with health.job_run(health.JOB_SWEEP_NOTICES) as counts:
        counts["queued"] = outbox_enqueue_due(now=now)
    return counts["queued"]


def reminders_send_due(
    *,
    today: dt.date | None = None,
    dry_run: bool = False,
    now: dt.datetime | None = None,
    queue: bool = False,
    chunk_size: int = CHUNK_SIZE,
) -> ReminderRun:
    """The daily reminder run: decide every reminder step now due and the owners' summaries, then deliver.

    queue=True (the beat task) queues a delivery task per due notice;
    queue=False (the command, tests, the bench) delivers them in this
    process. Either way failures wait in the outbox for their retry.

    `today` alone runs as of that day: `now` becomes that day at the current
    wall-clock time (TIME_ZONE), so every date the run computes (the link's
    end, the "N days" wording, the .ics stamp) moves with it and a dry run
    for a future day shows exactly what that day will send.
    """
    if now is None:
        now = reminders.simulated_now(today) if today is not None else timezone.now()
    today = today or timezone.localdate(now)
    started = timezone.now()
    run = reminders.reminders_decide(today=today, now=now, dry_run=dry_run, chunk_size=chunk_size)
    if dry_run:
        planned = {item.owner for item in run.planned if item.owner}
        run.owner_summaries = len(planned | owners.owner_summaries_planned(day=today, now=now))
        return run
    run.owner_summaries = len(owners.owner_summaries_decide(day=today, now=now))
    if queue:
        run.queued = outbox_enqueue_due(now=now)
    else:
        run.delivery_processes, run.delivery_threads = delivery_processes(), delivery_threads()
        delivery = outbox_deliver_due(
            now=now, chunk_size=chunk_size, processes=run.delivery_processes, threads=run.delivery_threads
        )
        run.sent = delivery.count(Notice.Kind.REMINDER, "sent")
        run.failed = delivery.count(Notice.Kind.REMINDER, "retry") + delivery.count(Notice.Kind.REMINDER, "failed")
        run.superseded += delivery.count(Notice.Kind.REMINDER, "closed")
    logger.info(
        "Reminder run for %s: due=%s sent=%s queued=%s skipped=%s superseded=%s failed=%s owner_summaries=%s",
        today,
        run.due,
        run.sent,
        run.queued,
        run.skipped,
        run.superseded,
        run.failed,
        run.owner_summaries,
    )
    counts = {"due": run.due, "sent": run.sent, "queued": run.queued, "failed": run.failed}
    health.job_record(name=health.JOB_REMINDERS, started_at=started, finished_at=timezone.now(), counts=counts)
    health.job_ping(url=settings.REMINDERS_PING_URL)
    return run


def staff_digest_send(*, today: dt.date | None = None, queue: bool = False) -> int | None:
    """The weekly digest: write it to the outbox and deliver it (queue=True: through a task). Its notice id."""
    with health.job_run(health.JOB_DIGEST) as counts:
        notice_id = digest.staff_digest_decide(today=today)
        counts["written"] = int(notice_id is not None)
        if notice_id is not None:
            if queue:
                jobs.job_enqueue_on_commit(jobs.DELIVER_NOTICE, args=(notice_id,), robust=True)
            else:
                notice_deliver(notice_id=notice_id)
    return notice_id


def notice_resend(*, notice_id: int) -> bool:
    """Staff's one-click resend of a notice that failed for good: pending again and queued now."""
    if not notices.notice_resend(notice_id=notice_id):
        return False
    jobs.job_enqueue_on_commit(jobs.DELIVER_NOTICE, args=(notice_id,), robust=True)
    return True
