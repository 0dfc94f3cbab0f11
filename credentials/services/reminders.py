"""Expiry reminders: the right people, early enough, exactly once per step.

Policy (settings): a reminder REMINDER_DAYS_BEFORE days before a key's
expires_on (0 is the day itself), then every REMINDER_REPEAT_AFTER_EXPIRY_DAYS
days after it, until a new key is active (the old one is then superseded and
no longer scanned). Only active keys of served institutions are reminded,
and not while a newer key of the institution waits for its check
(selectors.newer_key_pending): they resume as soon as that check ends.

Exactly once: a ReminderLog row per (key, threshold) under a unique
constraint. A run claims the row first (an INSERT that only one writer can
win, state "claimed"), then sends, then marks it "sent". A claim that was
never sent (the process died in between) goes stale after
selectors.CLAIM_STALE_AFTER and the next run re-claims it with a conditional
UPDATE, so it is sent once, not never.

Missed days: each key has one *current* step, the most urgent threshold that
has come due (selectors.reminder_step; the scan is selectors.due_credentials).
A run after a week of outage sends that one step; the steps it jumped over
are recorded in state "skipped", never mailed in a burst.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

from django.core.mail import get_connection
from django.db import IntegrityError, transaction
from django.db.models import F, Prefetch
from django.utils import timezone

from credentials.emails import build_email
from credentials.models import CD2Credential, ReminderLog, secret_fields_of
from credentials.notifications import (
    SEND_ERRORS,
    admin_url,
    drop_connection,
    expiry_calendar,
    expiry_phrase,
    institution_today,
    owner_email,
    reminder_recipients,
    reply_to,
)
from credentials.selectors import (
    due_credentials,
    newer_key_pending,
    reminder_days_before,
    reminder_step,
    unsettled_claim,
)
from credentials.services import jobs
from credentials.services.links import submission_link_create, submission_link_mark_sent
from institutions.models import Contact

logger = logging.getLogger(__name__)

# Keys read per query: memory stays flat however many institutions there are.
CHUNK_SIZE = 500
# The account owner is told directly (not only in copy) from this many days out.
OWNER_DIRECT_FROM_DAYS = 7


@dataclass(frozen=True)
class PlannedReminder:
    """One line of a dry run: who would get which reminder."""

    institution: str
    hint: str
    threshold: int
    recipients: tuple[str, ...]


@dataclass
class ReminderRun:
    today: dt.date
    dry_run: bool = False
    due: int = 0
    sent: int = 0
    queued: int = 0
    skipped: int = 0
    failed: int = 0
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


def _email_context(*, credential: CD2Credential, days_left: int, link_context: dict) -> dict:
    return {
        **link_context,
        "credential": credential,
        "hint": credential.hint,
        "expires_on": credential.expires_on,
        "days_left": days_left,
        "days_left_abs": abs(days_left),
        "expired": days_left < 0,
        "expiry_phrase": expiry_phrase(days_left),
    }


def _send_reminder_email(
    *,
    credential: CD2Credential,
    to: list[str],
    cc: list[str],
    today: dt.date,
    now: dt.datetime,
    actor=None,
    connection=None,
) -> None:
    """Make a fresh single-use link and mail the reminder. SMTP errors propagate.

    Call inside a transaction: if the send fails, the link is rolled back
    with it and no unused link is left behind. `connection` is an open (or
    openable) mail backend shared by a run's page; None opens one for this message.
    """
    institution = credential.institution
    recipients = [*to, *cc]
    new_link = submission_link_create(
        institution=institution, created_by=actor, reason="reminder" if actor is None else "reminder (manual)", now=now
    )
    submission_link_mark_sent(new_link=new_link, recipients=recipients)
    days_left = (credential.expires_on - today).days
    context = _email_context(credential=credential, days_left=days_left, link_context=new_link.context())
    message = build_email(
        "reminder",
        to=to,
        cc=cc,
        reply_to=reply_to(institution),
        context=context,
        attachments=[
            (f"cd2-key-expiry-{institution.slug}.ics", expiry_calendar(credential=credential, now=now), "text/calendar")
        ],
        connection=connection,
    )
    if connection is not None:
        connection.open()  # no-op when open; after a failure, a fresh connection
    message.send(fail_silently=False)


def _tell_owner(*, credential: CD2Credential, to: list[str], today: dt.date, connection=None) -> None:
    """Close to expiry the account owner gets their own short note, not only a copy.

    Best effort: the customer's reminder is already sent (and the owner was
    in copy), so a failure here is logged, never retried into a duplicate.
    """
    institution = credential.institution
    owner = owner_email(institution)
    if not owner:
        return
    days_left = (credential.expires_on - today).days
    context = {
        "institution": institution,
        "hint": credential.hint,
        "expires_on": credential.expires_on,
        "days_left": days_left,
        "expiry_phrase": expiry_phrase(days_left),
        "recipients": to,
        "owner": institution.account_owner,
        "owner_days": OWNER_DIRECT_FROM_DAYS,
        "admin_url": admin_url(institution),
    }
    try:
        message = build_email("reminder-owner", to=[owner], context=context, connection=connection)
        if connection is not None:
            connection.open()
        message.send(fail_silently=False)
    except SEND_ERRORS as exc:
        drop_connection(connection)
        logger.warning(
            "Owner note for reminder of key %s (%s) not sent: %s", credential.pk, institution.slug, type(exc).__name__
        )


# --------------------------------------------------------------------------
# Claim, deliver, fail
# --------------------------------------------------------------------------


def _claim(*, credential: CD2Credential, threshold: int, now: dt.datetime, recipients: str) -> ReminderLog | None:
    """Take the (key, threshold) step for this run, or None when another run has it."""
    try:
        with transaction.atomic():
            return ReminderLog.objects.create(
                credential=credential, threshold=threshold, claimed_at=now, recipients=recipients
            )
    except IntegrityError:
        pass
    # The row exists: take it over only if its claim went stale. The UPDATE's
    # WHERE re-checks that under the row lock, so of two runs one wins.
    taken = (
        ReminderLog.objects.filter(credential=credential, threshold=threshold)
        .filter(unsettled_claim(now))
        .update(claimed_at=now, recipients=recipients)
    )
    if taken != 1:
        return None
    logger.info("Re-claimed stale reminder for key %s at threshold %s", credential.pk, threshold)
    return ReminderLog.objects.get(credential=credential, threshold=threshold)


def _came_due_before_arrival(credential: CD2Credential, threshold: int) -> bool:
    arrived = timezone.localtime(credential.submitted_at).date()
    return credential.expires_on - dt.timedelta(days=threshold) < arrived


def _record_skipped(*, credential: CD2Credential, step: int, today: dt.date, now: dt.datetime) -> int:
    """Record the steps a catch-up run jumped over (came due after the key arrived, never sent)."""
    arrived = timezone.localtime(credential.submitted_at).date()
    days_at_arrival = (credential.expires_on - arrived).days
    logs = getattr(credential, "logs", None)  # the scan's prefetch; [] is an answer too
    existing = {log.threshold for log in (credential.reminders.all() if logs is None else logs)}
    missed = []
    for days_left in range(
        min(days_at_arrival, max(reminder_days_before(), default=0)), (credential.expires_on - today).days, -1
    ):
        threshold = reminder_step(days_left=days_left)
        if (
            threshold is not None
            and threshold != step
            and threshold not in existing
            and threshold not in missed
            and not _came_due_before_arrival(credential, threshold)
        ):
            missed.append(threshold)
    note = f"Not sent on time; the run on {today:%d %B %Y} sent the {step}-day step instead."
    ReminderLog.objects.bulk_create(
        [
            ReminderLog(
                credential=credential, threshold=t, claimed_at=now, state=ReminderLog.State.SKIPPED, last_error=note
            )
            for t in missed
        ],
        ignore_conflicts=True,
    )
    return len(missed)


def _record_failure(*, reminder_id: int, error: BaseException | str, now: dt.datetime, final: bool) -> None:
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    changes = {"last_error": text[:500], "attempts": F("attempts") + 1, "claimed_at": now}
    if final:
        changes.update(failed_at=now, state=ReminderLog.State.FAILED)
    ReminderLog.objects.filter(pk=reminder_id, state=ReminderLog.State.CLAIMED).update(**changes)


def reminder_deliver(
    *,
    reminder_id: int,
    today: dt.date | None = None,
    now: dt.datetime | None = None,
    actor=None,
    contacts: list[Contact] | None = None,
    connection=None,
) -> bool:
    """Send one claimed reminder; True if this call sent it.

    The row is locked while sending and re-checked unsent, so a task that
    was delivered twice sends once. SMTP and connection errors are recorded
    on the row (attempts, last_error) and raised again for the caller to
    retry; the final failure is marked by reminder_mark_failed.

    A run passes the institution's reminder contacts it already read
    (`contacts`) and the mail connection its page shares (`connection`).
    """
    now = now or timezone.now()
    try:
        with transaction.atomic():
            reminder = (
                ReminderLog.objects.select_for_update(of=("self",))
                .select_related("credential__institution__account_owner")
                .defer(*secret_fields_of("credential"))
                .annotate(paused=newer_key_pending("credential__"))
                .filter(pk=reminder_id, state=ReminderLog.State.CLAIMED)
                .first()
            )
            if reminder is None:
                return False
            credential = reminder.credential
            institution = credential.institution
            if credential.status != CD2Credential.Status.ACTIVE or not institution.is_served():
                # A new key arrived (or the institution was paused) after the claim.
                reminder.state = ReminderLog.State.SKIPPED
                reminder.last_error = f"Not sent: the key is {credential.status}, institution {institution.status}."
                reminder.save(update_fields=["state", "last_error"])
                return False
            if reminder.paused:
                # A newer key arrived and waits for its check after the claim:
                # the step is released, not spent, so it is sent if the check
                # ends invalid (due_credentials finds it again).
                reminder.delete()
                return False
            local_today = today or institution_today(institution, now)
            if contacts is not None:
                institution.reminder_contacts = contacts
            to, cc = reminder_recipients(institution=institution)
            if not to:
                reminder.state = ReminderLog.State.FAILED
                reminder.failed_at = now
                reminder.last_error = "Nobody to send to: add a contact who receives reminders or an account owner."
                reminder.save(update_fields=["state", "failed_at", "last_error"])
                return False
            _send_reminder_email(
                credential=credential, to=to, cc=cc, today=local_today, now=now, actor=actor, connection=connection
            )
            reminder.state = ReminderLog.State.SENT
            reminder.sent_at = timezone.now()
            reminder.attempts += 1
            reminder.recipients = ", ".join([*to, *cc])
            reminder.last_error = ""
            reminder.save(update_fields=["state", "sent_at", "attempts", "recipients", "last_error"])
    except SEND_ERRORS as exc:
        _record_failure(reminder_id=reminder_id, error=exc, now=now, final=False)
        logger.warning("Reminder %s not sent yet: %s", reminder_id, type(exc).__name__)
        raise
    logger.info(
        "Reminder %s sent for key %s (%s), threshold %s",
        reminder_id,
        credential.pk,
        institution.slug,
        reminder.threshold,
    )
    if reminder.threshold <= OWNER_DIRECT_FROM_DAYS:
        _tell_owner(credential=credential, to=to, today=local_today, connection=connection)
    return True


def reminder_mark_failed(*, reminder_id: int, error: BaseException | str, now: dt.datetime | None = None) -> None:
    """Give up on a reminder after its last retry; staff see failed_at and last_error."""
    _record_failure(reminder_id=reminder_id, error=error, now=now or timezone.now(), final=True)
    logger.error(
        "Reminder %s failed for good: %s", reminder_id, error if isinstance(error, str) else type(error).__name__
    )


# --------------------------------------------------------------------------
# The doors' services
# --------------------------------------------------------------------------


def simulated_now(day: dt.date) -> dt.datetime:
    """`day` at the current wall-clock time in TIME_ZONE: "now", as of another day."""
    wall_clock = timezone.localtime().time().replace(tzinfo=None)
    return timezone.make_aware(dt.datetime.combine(day, wall_clock))


def _queue_send(reminder_id: int) -> None:
    jobs.job_enqueue_on_commit(jobs.SEND_REMINDER, args=(reminder_id,))


def reminders_send_due(
    *,
    today: dt.date | None = None,
    dry_run: bool = False,
    now: dt.datetime | None = None,
    queue: bool = False,
    chunk_size: int = CHUNK_SIZE,
) -> ReminderRun:
    """Claim and send every reminder that has come due.

    queue=False sends in this process, one attempt each (the command and
    tests); queue=True hands each claimed reminder to the send_reminder
    task, which retries SMTP errors with backoff (the beat task). Safe to run
    twice or concurrently: each step is claimed once.

    `today` alone runs as of that day: `now` becomes that day at the current
    wall-clock time (TIME_ZONE), so every date the run computes (the link's
    end, the "N days" wording, the .ics stamp, claim times) moves with it and
    a dry run for a future day shows exactly what that day will send.
    """
    if now is None:
        now = simulated_now(today) if today is not None else timezone.now()
    today = today or timezone.localdate(now)
    run = ReminderRun(today=today, dry_run=dry_run)
    base = (
        due_credentials(today=today, now=now)
        .select_related("institution__account_owner")
        .prefetch_related(
            Prefetch(
                "institution__contacts",
                queryset=Contact.objects.filter(receives_reminders=True).order_by("pk"),
                to_attr="reminder_contacts",
            ),
            Prefetch(
                "reminders", queryset=ReminderLog.objects.only("pk", "credential_id", "threshold"), to_attr="logs"
            ),
        )
    )
    last_pk = 0
    while True:
        # Keyset pages: each query reads one chunk, so memory stays flat and
        # rows handled meanwhile cannot shift the pages.
        chunk = list(base.filter(pk__gt=last_pk).order_by("pk")[:chunk_size])
        if not chunk:
            break
        last_pk = chunk[-1].pk
        # One SMTP connection per page when sending here (opened at the first
        # send, replaced after a failure, closed at the end of the page).
        connection = None if dry_run or queue else get_connection()
        try:
            for credential in chunk:
                _handle_due(
                    credential, run=run, today=today, now=now, dry_run=dry_run, queue=queue, connection=connection
                )
        finally:
            drop_connection(connection)
    logger.info(
        "Reminder run for %s%s: due=%s sent=%s queued=%s skipped=%s failed=%s",
        today,
        " (dry run)" if dry_run else "",
        run.due,
        run.sent,
        run.queued,
        run.skipped,
        run.failed,
    )
    return run


def _handle_due(
    credential: CD2Credential,
    *,
    run: ReminderRun,
    today: dt.date,
    now: dt.datetime,
    dry_run: bool,
    queue: bool,
    connection=None,
) -> None:
    run.due += 1
    institution = credential.institution
    to, cc = reminder_recipients(institution=institution)
    if dry_run:
        run.planned.append(
            PlannedReminder(
                institution=institution.name,
                hint=credential.hint,
                threshold=credential.step,
                recipients=tuple([*to, *cc]),
            )
        )
        return
    reminder = _claim(credential=credential, threshold=credential.step, now=now, recipients=", ".join([*to, *cc]))
    if reminder is None:
        return  # another run has it
    run.skipped += _record_skipped(credential=credential, step=credential.step, today=today, now=now)
    if queue:
        _queue_send(reminder.pk)
        run.queued += 1
        return
    try:
        sent = reminder_deliver(
            reminder_id=reminder.pk,
            today=today,
            now=now,
            contacts=getattr(institution, "reminder_contacts", None),
            connection=connection,
        )
    except SEND_ERRORS as exc:
        drop_connection(connection)
        reminder_mark_failed(reminder_id=reminder.pk, error=exc, now=now)
        run.failed += 1
        return
    if sent:
        run.sent += 1
    elif ReminderLog.objects.filter(pk=reminder.pk, state=ReminderLog.State.FAILED).exists():
        run.failed += 1


def reminder_send_now(*, credential: CD2Credential, actor=None, now: dt.datetime | None = None) -> SentReminder:
    """Send the key's reminder now (the admin's "Send reminder now" button).

    When the key's current step has not been sent, this send *is* that step
    (claimed like the scheduled one, so the daily run will not repeat it);
    a failed or stale step is taken over and retried. When the step was
    already sent, or none is due yet, an extra reminder goes out and the
    schedule is left as it is. SMTP errors propagate for the admin to show.
    """
    now = now or timezone.now()
    institution = credential.institution
    if credential.status != CD2Credential.Status.ACTIVE:
        raise ValueError(f"Only an active key is reminded; this one is {credential.get_status_display().lower()}.")
    if not institution.is_served():
        raise ValueError(f"{institution.name} is {institution.get_status_display().lower()}: reminders are off.")
    to, cc = reminder_recipients(institution=institution)
    if not to:
        raise ValueError(f"Nobody to send to: give {institution.name} a contact who receives reminders.")
    today = institution_today(institution, now)
    step = reminder_step(days_left=(credential.expires_on - today).days)
    recipients = ", ".join([*to, *cc])
    if step is not None:
        reminder = _claim(credential=credential, threshold=step, now=now, recipients=recipients)
        if reminder is None:
            # Failed or fresh claims too: a person asked, so take it over.
            ReminderLog.objects.filter(credential=credential, threshold=step).exclude(
                state=ReminderLog.State.SENT
            ).update(
                state=ReminderLog.State.CLAIMED, failed_at=None, last_error="", claimed_at=now, recipients=recipients
            )
            reminder = ReminderLog.objects.get(credential=credential, threshold=step)
        if reminder.state == ReminderLog.State.CLAIMED and reminder_deliver(
            reminder_id=reminder.pk, today=today, now=now, actor=actor
        ):
            return SentReminder(recipients=tuple(to + cc), threshold=step, reminder=reminder)
    with transaction.atomic():
        _send_reminder_email(credential=credential, to=to, cc=cc, today=today, now=now, actor=actor)
    logger.info("Extra reminder sent for key %s (%s)", credential.pk, institution.slug)
    return SentReminder(recipients=tuple(to + cc), threshold=None, reminder=None)
