"""Expiry reminders: the right people, early enough, exactly once per step.

Policy (settings): a reminder REMINDER_DAYS_BEFORE days before a key's
expires_on (0 is the day itself), then weekly
(REMINDER_REPEAT_AFTER_EXPIRY_DAYS) for REMINDER_WEEKLY_AFTER_EXPIRY_FOR_DAYS
days, then every REMINDER_MONTHLY_REPEAT_DAYS days, until a new key is
active (the old one is then superseded and no longer scanned) or
REMINDER_STOP_AFTER_EXPIRY_MONTHS after expiry (then staff take over; the
owner's summary says so once). Only active keys of served institutions are
reminded: none while paused or offboarded. A key accepted less than
REMINDER_QUIET_AFTER_ACCEPTANCE ago is not reminded unless it expires within
it; its first reminder is the next step due after that (days.first_step_day).

Days are the institution's (credentials/days.py): a step is due on the
institution's own date, and the scheduled run (hourly) reaches each
institution once its own clock has passed REMINDERS_HOUR, so a day of 23 or
25 hours (DST) or a missed hour still sends each step once, on its day.
Reminders go to the contacts (Reply-To the account owner); the owner hears
of them in one daily summary (services/owners.py).

Deciding and delivering are apart (the outbox, services/outbox.py): a run
decides, writing in one transaction the ReminderLog row per (key, step),
whose unique constraint makes the step "exactly once", and its Notice, the
step's only record of delivery (the row keeps nothing else). The outbox
claims the notice, has reminder_notice_write build the mail, sends it and
records it sent; failures are retried by the outbox for hours. The command
and the beat task decide and queue with the same function here
(reminders_send_due); the Celery workers deliver.

Missed days: each key has one *current* step, the most urgent threshold that
has come due (selectors.reminder_step; the scan is selectors.due_credentials).
A run after a week of outage sends that one step; the steps it jumped over
are recorded with a superseded notice, never mailed in a burst, and an older
step's notice still waiting for a retry is superseded by the new one.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import Counter
from dataclasses import dataclass, field

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Prefetch, Q
from django.utils import timezone, translation

from credentials.days import (
    KeyDays,
    institution_key_days,
    institution_today,
    institution_zone,
    largest_step_allowed,
    zone_days,
    zone_q,
)
from credentials.formatting import format_day
from credentials.mail.context import expiry_calendar
from credentials.mail.messages import build_email
from credentials.mail.recipients import greeting_name, owner_email, reminder_addressees, reply_to
from credentials.models import CD2Credential, Notice, ReminderLog
from credentials.outgoing import Send, Skip
from credentials.selectors import (
    due_credentials,
    newer_key_pending,
    reminder_days_before,
    reminder_step,
    step_allowed,
)
from credentials.services import health, notices, outbox, owners
from credentials.services.keys import institution_key_summary_refresh
from credentials.services.links import submission_link_create
from credentials.signals import KEY_EXPIRING, KeyEvent, key_event_build, key_events_send
from institutions.models import Contact

logger = logging.getLogger(__name__)

# Keys read per query: memory stays flat however many institutions there are.
CHUNK_SIZE = 500


@dataclass(frozen=True)
class PlannedReminder:
    """One line of a dry run: who would get which reminder."""

    institution: str
    hint: str
    threshold: int
    recipients: tuple[str, ...]
    owner: str = ""


@dataclass
class ReminderRun:
    today: dt.date
    dry_run: bool = False
    due: int = 0
    sent: int = 0
    queued: int = 0
    skipped: int = 0
    superseded: int = 0
    # Attempts that failed this run: the notice waits for its retry (or gave up).
    failed: int = 0
    owner_summaries: int = 0
    # Read back from the notices' states (outbox.reminders_report): not attempted yet,
    # owner summaries sent, and the older steps' notices the decision itself superseded.
    waiting: int = 0
    summaries_sent: int = 0
    decided_superseded: int = 0
    now: dt.datetime | None = None
    # The reminder notices and owner summaries this run wrote.
    notice_ids: list[int] = field(default_factory=list)
    summary_ids: list[int] = field(default_factory=list)
    planned: list[PlannedReminder] = field(default_factory=list)


@dataclass(frozen=True)
class SentReminder:
    """What reminder_send_now did, for the admin's message."""

    recipients: tuple[str, ...]
    threshold: int | None
    reminder: ReminderLog | None


# --------------------------------------------------------------------------
# The email
# --------------------------------------------------------------------------


def _email_context(*, credential: CD2Credential, days: KeyDays, link_context: dict) -> dict:
    return {
        **link_context,
        "credential": credential,
        "hint": credential.hint,
        "expires_on": credential.expires_on,
        "days_left": days.days_left,
        "days_left_abs": abs(days.days_left),
        "expired": days.lapsed,
        "expiry_phrase": days.phrase,
    }


def _reminder_email(*, credential: CD2Credential, to: list[str], now: dt.datetime, actor=None):
    """Make a fresh single-use link and build the reminder around it.

    Call inside the transaction that records the send: if the send fails,
    the link is rolled back with it and no unused link is left behind.
    """
    institution = credential.institution
    recipients = list(to)
    new_link = submission_link_create(
        institution=institution,
        created_by=actor,
        reason="reminder" if actor is None else "reminder (manual)",
        now=now,
        sent_to=recipients,
    )
    with translation.override(institution.language):  # days.phrase is written in the mail's language
        days = institution_key_days(institution, expires_on=credential.expires_on, now=now)
        context = _email_context(credential=credential, days=days, link_context=new_link.context())
    context["greeting_name"] = greeting_name(institution=institution, to=recipients)
    with translation.override(institution.language):
        calendar = expiry_calendar(credential=credential, now=now)  # None once the date has passed
    return build_email(
        "reminder",
        to=to,
        reply_to=reply_to(institution),
        context=context,
        language=institution.language,
        attachments=[(f"cd2-key-expiry-{institution.slug}.ics", calendar, "text/calendar")] if calendar else [],
    )


# --------------------------------------------------------------------------
# Deciding: claim the step and write its notice, in one transaction
# --------------------------------------------------------------------------


def _claim_rows(
    *, credential: CD2Credential, threshold: int, day: dt.date, now: dt.datetime, recipients: str
) -> Notice:
    """Insert the (key, threshold) step and its notice; IntegrityError when the step is already taken.

    Call inside a transaction (the claim and its notice commit together).
    """
    reminder = ReminderLog.objects.create(credential=credential, threshold=threshold, claimed_at=now)
    notice = _step_notice(credential=credential, reminder=reminder, day=day, now=now, recipients=recipients)
    notice.save(force_insert=True)
    key_events_send(events=[_step_event(credential=credential, threshold=threshold, day=day, now=now)])
    return notice


def _step_notice(
    *, credential: CD2Credential, reminder: ReminderLog, day: dt.date, now: dt.datetime, recipients: str
) -> Notice:
    """The claimed step's notice, unsaved (one claim or a chunk's bulk insert)."""
    notice = notices.notice_build(
        kind=Notice.Kind.REMINDER,
        dedupe_key=f"reminder:{reminder.pk}",
        day=day,
        now=now,
        institution_id=credential.institution_id,
        credential_id=credential.pk,
        reminder_id=reminder.pk,
        recipients=recipients,
    )
    notice.reminder = reminder
    return notice


def _step_event(*, credential: CD2Credential, threshold: int, day: dt.date, now: dt.datetime) -> KeyEvent:
    """The claimed step's key.expiring event (decided once, as its step is: the claim's unique constraint)."""
    return key_event_build(
        event_type=KEY_EXPIRING,
        credential=credential,
        occurred_at=now,
        days_left=(credential.expires_on - day).days,
        discriminator=str(threshold),
    )


def _claim(
    *, credential: CD2Credential, threshold: int, day: dt.date, now: dt.datetime, recipients: str
) -> Notice | None:
    """Take the (key, threshold) step and write its notice (returned); None when the step is already taken."""
    try:
        with transaction.atomic():
            return _claim_rows(credential=credential, threshold=threshold, day=day, now=now, recipients=recipients)
    except IntegrityError:
        return None


def reminder_step_claim(*, credential: CD2Credential, threshold: int, now: dt.datetime) -> Notice | None:
    """Claim one step of the key now, on the institution's day, with its notice to the current addressees.

    The scheduled run's claim for one key (the step row, its notice and its
    key.expiring event in one transaction); None when the step is taken.
    The outbox delivers the notice like any other.
    """
    institution = credential.institution
    return _claim(
        credential=credential,
        threshold=threshold,
        day=institution_today(institution, now),
        now=now,
        recipients=", ".join(reminder_addressees(institution=institution)),
    )


def _steps_with_their_notice_state(steps):
    """A key's steps with what _record_skipped reads: the threshold and the state of the step's notice."""
    return steps.only("pk", "credential_id", "threshold").annotate(notice_state=F("notice__state"))


def _record_skipped(*, credential: CD2Credential, step: int, today: dt.date, now: dt.datetime) -> tuple[int, int]:
    """Record the steps a catch-up run jumped over and supersede older steps still waiting for a retry.

    Returns (steps skipped, notices superseded).
    """
    largest = largest_step_allowed(
        expires_on=credential.expires_on,
        accepted_at=credential.status_changed_at,
        zone=institution_zone(credential.institution),
    )
    logs = getattr(credential, "logs", None)  # the scan's prefetch; [] is an answer too
    if logs is None:
        logs = list(_steps_with_their_notice_state(credential.reminders.all()))
    existing = {log.threshold for log in logs}
    missed = []
    for days_left in range(
        min(largest, max(reminder_days_before(), default=0)), (credential.expires_on - today).days, -1
    ):
        threshold = reminder_step(days_left=days_left)
        if (
            threshold is not None
            and threshold != step
            and threshold not in existing
            and threshold not in missed
            and threshold <= largest
        ):
            missed.append(threshold)
    note = f"Not sent on time; the run on {format_day(today)} sent the {step}-day step instead."
    if missed:
        ReminderLog.objects.bulk_create(
            [ReminderLog(credential=credential, threshold=t, claimed_at=now) for t in missed],
            ignore_conflicts=True,
        )
        # Each skipped step's notice, superseded: it records why (the step's delivery is its notice's).
        skipped = ReminderLog.objects.filter(
            credential=credential, threshold__in=missed, notice__isnull=True
        ).values_list("pk", flat=True)
        written = [
            notices.notice_build(
                kind=Notice.Kind.REMINDER,
                dedupe_key=f"reminder:{reminder_id}",
                day=today,
                now=now,
                institution_id=credential.institution_id,
                credential_id=credential.pk,
                reminder_id=reminder_id,
            )
            for reminder_id in skipped
        ]
        for notice in written:
            notice.state, notice.closed_at, notice.last_error = Notice.State.SUPERSEDED, now, note
        Notice.objects.bulk_create(written, ignore_conflicts=True)
    superseded = 0
    # Only a step whose notice is still open can be waiting for its retry,
    # and the prefetch read each step's notice state: most keys need no query here.
    if any(log.notice_state in Notice.OPEN_STATES and log.threshold != step for log in logs):
        # An older step of this key still pending (a mail server down for
        # days): the newer step says it all; never mail both in a burst.
        waiting = list(
            Notice.objects.filter(credential=credential, kind=Notice.Kind.REMINDER, state=Notice.State.PENDING)
            .exclude(reminder__threshold=step)
            .values_list("pk", flat=True)
        )
        for notice_id in waiting:
            notices.notice_supersede(notice_id=notice_id, reason=note, now=now)
        superseded = len(waiting)
    return len(missed), superseded


def reminders_decide(
    *,
    now: dt.datetime,
    today: dt.date | None = None,
    dry_run: bool = False,
    chunk_size: int = CHUNK_SIZE,
    not_before: dt.time | None = None,
) -> ReminderRun:
    """Claim every reminder step now due and write its notice; send nothing (the outbox does).

    Each institution is decided on its own day at `now` (credentials/days.py):
    the scan runs once per date the zones are on, over the institutions of
    those zones. With `not_before` (the scheduled run), only institutions
    whose clock has reached that time of day; the others wait for a later
    run of the same local day. Safe to run twice or concurrently: each step
    is claimed once. A dry run lists what the outbox would hold and writes nothing.
    """
    run = ReminderRun(today=today or timezone.localdate(now), dry_run=dry_run)
    for day, zones in zone_days(now, not_before=not_before):
        _decide_day(run=run, day=day, zones=zones, now=now, chunk_size=chunk_size)
    return run


def _decide_day(*, run: ReminderRun, day: dt.date, zones, now: dt.datetime, chunk_size: int) -> None:
    """Decide the institutions of `zones`, whose today is `day`."""
    base = (
        due_credentials(today=day, now=now)
        .filter(zone_q(zones, prefix="institution__"))
        .select_related("institution__account_owner")
        .prefetch_related(
            Prefetch(
                "institution__contacts",
                queryset=Contact.objects.filter(receives_reminders=True).order_by("pk"),
                to_attr="reminder_contacts",
            ),
            Prefetch(
                "reminders",
                queryset=_steps_with_their_notice_state(ReminderLog.objects.all()),
                to_attr="logs",
            ),
        )
    )
    last_pk = 0
    while True:
        # Keyset pages: each query reads one chunk, so memory stays flat and
        # rows handled meanwhile cannot shift the pages.
        page = list(base.filter(pk__gt=last_pk).order_by("pk")[:chunk_size])
        if not page:
            break
        last_pk = page[-1].pk
        # The scan's test of acceptance is a day wide; this one is exact (in the institution's zone).
        chunk = [credential for credential in page if step_allowed(credential, threshold=credential.step)]
        if not chunk:
            continue
        if run.dry_run:
            for credential in chunk:
                _decide_one(credential, run=run, today=day, now=now)
            continue
        # One commit per chunk: a commit waits for the disk, so one per key
        # was most of the decision's time (bench/RESULTS.md). The chunk is
        # decided in bulk; only when another run holds a step of it is it
        # decided key by key, a savepoint each, so that key alone rolls back.
        with transaction.atomic():
            if not _decide_chunk(chunk, run=run, today=day, now=now):
                for credential in chunk:
                    _decide_one(credential, run=run, today=day, now=now)


def _decide_chunk(chunk: list[CD2Credential], *, run: ReminderRun, today: dt.date, now: dt.datetime) -> bool:
    """Claim every key's step of the chunk at once, with its notice, event and skipped steps; False if one is taken.

    A handful of queries for the chunk, however many keys: one insert of the
    steps, one of their notices, one batch of key.expiring events (the
    webhook listener reads its accounts once), and _record_skipped, which
    queries only for a key that jumped steps or has an older one waiting.
    When another run already holds a step of the chunk (a concurrent run),
    the insert fails and nothing of the chunk is written: the caller decides
    it key by key, which skips the taken steps. Call inside a transaction.
    """
    recipients = {
        credential.pk: ", ".join(reminder_addressees(institution=credential.institution)) for credential in chunk
    }
    try:
        with transaction.atomic():
            steps = ReminderLog.objects.bulk_create(
                [ReminderLog(credential=credential, threshold=credential.step, claimed_at=now) for credential in chunk]
            )
            written = Notice.objects.bulk_create(
                [
                    _step_notice(
                        credential=credential, reminder=step, day=today, now=now, recipients=recipients[credential.pk]
                    )
                    for credential, step in zip(chunk, steps, strict=True)
                ]
            )
            key_events_send(
                events=[
                    _step_event(credential=credential, threshold=credential.step, day=today, now=now)
                    for credential in chunk
                ]
            )
            counts = [
                _record_skipped(credential=credential, step=credential.step, today=today, now=now)
                for credential in chunk
            ]
    except IntegrityError:
        return False
    run.due += len(chunk)
    run.skipped += sum(skipped for skipped, _ in counts)
    run.superseded += sum(superseded for _, superseded in counts)
    run.notice_ids.extend(notice.pk for notice in written)
    return True


def _decide_one(credential: CD2Credential, *, run: ReminderRun, today: dt.date, now: dt.datetime) -> None:
    run.due += 1
    institution = credential.institution
    to = reminder_addressees(institution=institution)
    if run.dry_run:
        run.planned.append(
            PlannedReminder(
                institution=institution.name,
                hint=credential.hint,
                threshold=credential.step,
                recipients=tuple(to),
                owner=owner_email(institution),
            )
        )
        return
    try:
        # One transaction: the step, its notice and the steps it jumped over.
        with transaction.atomic():
            notice = _claim_rows(
                credential=credential, threshold=credential.step, day=today, now=now, recipients=", ".join(to)
            )
            skipped, superseded = _record_skipped(credential=credential, step=credential.step, today=today, now=now)
    except IntegrityError:
        return  # another run has it
    run.skipped += skipped
    run.superseded += superseded
    run.notice_ids.append(notice.pk)


# --------------------------------------------------------------------------
# Delivering one reminder notice (called by the outbox after it claimed it)
# --------------------------------------------------------------------------


def reminder_notice_write(*, notice: Notice, now: dt.datetime, actor=None) -> Send | Skip:
    """The outbox's sender of a reminder: the mail with its fresh link, or why not to send it.

    Superseded, not sent, when the key is no longer active or the
    institution no longer served (a new key arrived, the key was revoked,
    the institution paused) since the decision. The link made for the mail,
    the notice's "sent" and the key summary it changes commit together
    after the mail server accepted the message.
    """
    credential = notice.credential
    institution = credential.institution
    reminder_id = notice.reminder_id
    newer_pending = getattr(notice, "newer_key_pending", None)  # outbox._loaded() reads it with the page
    if newer_pending is None:
        newer_pending = CD2Credential.objects.filter(pk=credential.pk).filter(newer_key_pending()).exists()
    if newer_pending:
        return Skip(
            state=Notice.State.SUPERSEDED,
            reason=(
                "Not sent: a newer key for this institution arrived and is waiting for its check; "
                "this key's reminders pause until that check ends."
            ),
            closed_with=lambda: _release_for_newer_key(notice=notice),
        )
    if credential.status != CD2Credential.Status.ACTIVE or not institution.is_served():
        return Skip(
            state=Notice.State.SUPERSEDED,
            reason=f"Not sent: the key is {credential.status}, institution {institution.status}.",
        )
    to = reminder_addressees(institution=institution)
    if not to:
        return Skip(
            state=Notice.State.FAILED,
            reason="Nobody to send to: add a contact who receives reminders or an account owner.",
        )
    message = _reminder_email(credential=credential, to=to, now=now, actor=actor)

    def sent_with(sent_at: dt.datetime) -> None:
        # The list's "reminded, no new key yet" is stored with the key summary; a reminder changes only it.
        # It reads the notice, marked sent by now in this same transaction.
        institution_key_summary_refresh(institution_id=institution.pk, fields=("key_reminded_unanswered",))
        logger.info("Reminder %s sent for key %s (%s)", reminder_id, credential.pk, institution.slug)

    return Send(message=message, recipients=to, sent_with=sent_with)


def _release_for_newer_key(*, notice: Notice) -> None:
    """Give back the step of a reminder superseded because a newer key is waiting for its check.

    The claim row is removed and the notice kept as the record: when the
    newer key becomes active the old key is superseded and nothing is due;
    when it ends invalid, the next run claims this step again and the
    reminders go on where they stopped.
    """
    if notice.reminder_id is not None:
        Notice.objects.filter(pk=notice.pk).update(reminder=None)
        ReminderLog.objects.filter(pk=notice.reminder_id).delete()
    logger.info("Reminder notice %s superseded: a newer key is waiting for its check", notice.pk)


def simulated_now(day: dt.date) -> dt.datetime:
    """`day` at the current wall-clock time in TIME_ZONE: "now", as of another day."""
    wall_clock = timezone.localtime().time().replace(tzinfo=None)
    return timezone.make_aware(dt.datetime.combine(day, wall_clock))


# --------------------------------------------------------------------------
# The daily run: decide, then queue for the workers
# --------------------------------------------------------------------------


def reminders_send_due(
    *,
    today: dt.date | None = None,
    dry_run: bool = False,
    now: dt.datetime | None = None,
    chunk_size: int = CHUNK_SIZE,
    scheduled: bool = False,
) -> ReminderRun:
    """The daily reminder run: decide every reminder step now due and the owners' summaries, and queue them.

    The beat task and the command both call this; the workers deliver
    (reminders_report reads how far they got, reminders_wait waits for
    them). Failures wait in the outbox for their retry.

    `today` alone runs as of that day: `now` becomes that day at the current
    wall-clock time (TIME_ZONE), so every date the run computes (the link's
    end, the "N days" wording, the .ics stamp) moves with it and a dry run
    for a future day shows exactly what that day will send. Each institution
    is decided on its own day at `now`, each owner's summary on the owner's.

    `scheduled` (the hourly beat task): only the institutions and owners
    whose own clock has reached REMINDERS_HOUR:REMINDERS_MINUTE; the
    command and the other doors decide everything due now.
    """
    if now is None:
        now = simulated_now(today) if today is not None else timezone.now()
    today = today or timezone.localdate(now)
    not_before = dt.time(settings.REMINDERS_HOUR, settings.REMINDERS_MINUTE) if scheduled else None
    started = timezone.now()
    run = reminders_decide(today=today, now=now, dry_run=dry_run, chunk_size=chunk_size, not_before=not_before)
    run.now, run.decided_superseded = now, run.superseded
    if dry_run:
        planned = {item.owner for item in run.planned if item.owner}
        run.owner_summaries = len(planned | owners.owner_summaries_planned(now=now, not_before=not_before))
        return run
    run.summary_ids = owners.owner_summaries_decide(now=now, not_before=not_before)
    run.owner_summaries = len(run.summary_ids)
    run.queued = outbox.outbox_enqueue_due(now=now)
    logger.info(
        "Reminder run for %s: due=%s queued=%s skipped=%s superseded=%s owner_summaries=%s",
        today,
        run.due,
        run.queued,
        run.skipped,
        run.superseded,
        run.owner_summaries,
    )
    counts = {"due": run.due, "queued": run.queued, "skipped": run.skipped}
    health.job_record(name=health.JOB_REMINDERS, started_at=started, finished_at=timezone.now(), counts=counts)
    health.job_ping(url=settings.REMINDERS_PING_URL)
    return run


# A notice no sender has tried yet: queued, or in a worker's hands now.
UNTRIED = Q(state=Notice.State.SENDING) | Q(state=Notice.State.PENDING, attempts=0)


def _run_notices(run: ReminderRun):
    """The reminder notices and owner summaries the run wrote."""
    return Notice.objects.filter(pk__in=[*run.notice_ids, *run.summary_ids])


def reminders_report(run: ReminderRun) -> ReminderRun:
    """Fill the run's sent / failed / superseded / waiting from the states of the notices it decided.

    failed: gave up, or waiting for a retry after a failed attempt; waiting:
    not attempted yet (queued, or in a worker's hands now).
    """
    states = Counter(
        (kind, state, attempts > 0)
        for kind, state, attempts in _run_notices(run).values_list("kind", "state", "attempts")
    )
    reminder = Notice.Kind.REMINDER

    def count(*wanted) -> int:
        return sum(n for key, n in states.items() if key in wanted)

    run.sent = count((reminder, Notice.State.SENT, True))
    run.failed = count((reminder, Notice.State.FAILED, True), (reminder, Notice.State.FAILED, False))
    run.failed += count((reminder, Notice.State.PENDING, True))
    run.superseded = run.decided_superseded + sum(
        n
        for (kind, state, _), n in states.items()
        if kind == reminder and state in (Notice.State.SUPERSEDED, Notice.State.CANCELLED)
    )
    run.waiting = _run_notices(run).filter(UNTRIED).count()
    run.summaries_sent = sum(
        n for (kind, state, _), n in states.items() if kind == Notice.Kind.OWNER_SUMMARY and state == Notice.State.SENT
    )
    return run


def reminders_wait(run: ReminderRun, *, timeout: float, poll: float = 0.5) -> bool:
    """Wait until the workers have tried every notice the run decided (or `timeout` seconds); True if they did.

    Each look is one EXISTS over the run's notices (it stops at the first
    untried one), so waiting costs the workers' database little.
    """
    deadline = time.monotonic() + timeout
    untried = _run_notices(run).filter(UNTRIED)
    while untried.exists():
        if time.monotonic() >= deadline:
            reminders_report(run)
            return False
        time.sleep(poll)
    reminders_report(run)
    return True


# --------------------------------------------------------------------------
# "Send reminder now" (the admin button)
# --------------------------------------------------------------------------


def reminder_send_now(*, credential: CD2Credential, actor=None, now: dt.datetime | None = None) -> SentReminder:
    """Send the key's reminder now (the admin's "Send reminder now" button).

    When the key's current step has not been sent, this send *is* that step
    (claimed like the scheduled one, with its notice, so the daily run will
    not repeat it); a failed or waiting step is taken over and sent now.
    When the step was already sent, or none is due yet, an extra reminder
    goes out and the schedule is left as it is. SMTP errors propagate for
    the admin to show (the step's notice then waits for its retry).
    """
    now = now or timezone.now()
    institution = credential.institution
    if credential.status != CD2Credential.Status.ACTIVE:
        raise ValueError(f"Only an active key is reminded; this one is {credential.get_status_display().lower()}.")
    if not institution.is_served():
        raise ValueError(f"{institution.name} is {institution.get_status_display().lower()}: reminders are off.")
    to = reminder_addressees(institution=institution)
    if not to:
        raise ValueError(f"Nobody to send to: give {institution.name} a contact who receives reminders.")
    today = institution_today(institution, now)
    step = reminder_step(days_left=(credential.expires_on - today).days)
    if step is not None:
        claimed = _claim(credential=credential, threshold=step, day=today, now=now, recipients=", ".join(to))
        if claimed is not None:
            reminder = claimed.reminder
        else:
            reminder = ReminderLog.objects.get(credential=credential, threshold=step)
            # Failed, skipped or waiting for a retry: a person asked, so take it over (its notice, re-opened).
            Notice.objects.filter(reminder=reminder).exclude(state=Notice.State.SENT).update(
                state=Notice.State.PENDING,
                next_attempt_at=now,
                closed_at=None,
                retry_until=now + (settings.NOTICE_GIVE_UP_AFTER),
            )
        notice_id = Notice.objects.filter(reminder_id=reminder.pk).values_list("pk", flat=True).first()
        if notice_id is not None and outbox.notice_send_now(notice_id=notice_id, now=now, actor=actor) == "sent":
            return SentReminder(recipients=tuple(to), threshold=step, reminder=reminder)
    # An extra reminder, beside the schedule: a notice of its own, delivered now like any other.
    extra = notices.notice_build(
        kind=Notice.Kind.REMINDER,
        dedupe_key=f"reminder-extra:{credential.pk}:{now.isoformat()}",
        day=today,
        now=now,
        institution_id=institution.pk,
        credential_id=credential.pk,
        recipients=", ".join(to),
        payload={"extra": True},
    )
    extra.save(force_insert=True)
    outbox.notice_send_now(notice_id=extra.pk, now=now, actor=actor)
    logger.info("Extra reminder sent for key %s (%s)", credential.pk, institution.slug)
    return SentReminder(recipients=tuple(to), threshold=None, reminder=None)
