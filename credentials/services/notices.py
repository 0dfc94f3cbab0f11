"""The outbox's rows: write a notice, claim it for one sender, record what delivery did.

Every outgoing notice is a Notice row written in the transaction that
decides to send it (credentials.models.Notice). Delivery (services/outbox.py)
claims the row with a conditional UPDATE (pending and due, or sending with
an expired lease) so one sender at a time has it, sends, and records the
result here. A failed send goes back to pending with an exponential,
jittered backoff until NOTICE_GIVE_UP_AFTER after it was written; only then
is it failed, which staff see (dashboard, digest) with a one-click resend.

The duplicate bound: the row is marked sent in the transaction that follows
the mail server's acceptance. A sender killed between the two leaves the
row in "sending"; after NOTICE_LEASE the sweep hands it to another sender,
which sends it again. So each crash in that window (milliseconds wide) can
cost one duplicate of that one message; nothing else sends a notice twice.
A sender has one message in flight at a time: a worker that dies with
several senders (its concurrency) can cost one duplicate per sender, each
of a different message, never two of one.
The lease is far longer than a send (EMAIL_TIMEOUT), so a slow sender is
not overtaken by a second one.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from credentials.models import Notice
from credentials.services import jobs
from edpotential.logging import mask_secrets

logger = logging.getLogger(__name__)

_random = secrets.SystemRandom()


def notice_due(now: dt.datetime) -> Q:
    """Rows a sender may take now: pending and due, or sending past their lease (the sender died)."""
    return Q(state=Notice.State.PENDING, next_attempt_at__lte=now) | Q(state=Notice.State.SENDING, lease_until__lt=now)


def notice_build(
    *,
    kind: str,
    dedupe_key: str,
    day: dt.date,
    now: dt.datetime,
    institution_id: int | None = None,
    credential_id: int | None = None,
    reminder_id: int | None = None,
    user_id: int | None = None,
    recipients: str = "",
    payload: dict | None = None,
) -> Notice:
    """An unsaved notice (for create or bulk_create in the deciding transaction).

    A decision "as of" a later day (send_expiry_reminders --today) is due at
    once all the same: the workers claim by the real clock, and the outbox
    renders it as of `as_of`.
    """
    return Notice(
        kind=kind,
        dedupe_key=dedupe_key,
        day=day,
        as_of=now,
        created_at=now,
        next_attempt_at=min(now, timezone.now()),
        retry_until=now + settings.NOTICE_GIVE_UP_AFTER,
        institution_id=institution_id,
        credential_id=credential_id,
        reminder_id=reminder_id,
        user_id=user_id,
        recipients=recipients,
        payload=payload or {},
    )


def notice_write(
    *,
    kind: str,
    dedupe_key: str,
    now: dt.datetime,
    day: dt.date | None = None,
    institution_id: int | None = None,
    credential_id: int | None = None,
    user_id: int | None = None,
    payload: dict | None = None,
    delay: dt.timedelta | None = None,
) -> int | None:
    """Write one notice in the deciding transaction and queue its delivery once that commits.

    `delay`: first due that long after now (a staff alert waits for others to join its group).

    The decision's own notice (a receipt, "your key stopped working" ...):
    written beside the fact it speaks of, so both commit or neither does.
    Returns the new notice's id, or None when `dedupe_key` is already taken
    (the same decision taken again: a retried task, a repeated submission),
    which writes and queues nothing. With the broker down the notice waits
    for the sweep (robust).
    """
    notice = notice_build(
        kind=kind,
        dedupe_key=dedupe_key,
        day=day or timezone.localdate(now),
        now=now,
        institution_id=institution_id,
        credential_id=credential_id,
        user_id=user_id,
        payload=payload,
    )
    if delay:
        notice.next_attempt_at += delay
    try:
        with transaction.atomic():
            notice.save(force_insert=True)
    except IntegrityError:
        return None
    countdown = delay.total_seconds() if delay else None
    jobs.job_enqueue_on_commit(jobs.DELIVER_NOTICE, args=(notice.pk,), countdown=countdown, robust=True)
    return notice.pk


def lease_end(now: dt.datetime) -> dt.datetime:
    """When a claim made now runs out: NOTICE_LEASE from the claim itself.

    `now` is the run's clock (its start, or a test's); a run that has been
    sending for longer than the lease would otherwise claim with a lease
    already over, and another sender could take the notice mid-send.
    """
    return max(now, timezone.now()) + settings.NOTICE_LEASE


def notice_claim(*, notice_id: int, now: dt.datetime) -> bool:
    """Take the notice for this sender (lease NOTICE_LEASE); False when it is not due or another has it."""
    return (
        Notice.objects.filter(notice_due(now), pk=notice_id).update(
            state=Notice.State.SENDING, lease_until=lease_end(now), attempts=F("attempts") + 1
        )
        == 1
    )


def notices_claim(*, notice_ids: list[int], now: dt.datetime) -> set[int]:
    """Take several notices for this sender in one transaction; the ids taken (due, and no other sender has them).

    Rows another sender holds locked are skipped, not waited for. The caller
    sends them one after the other, so the last one's lease must outlast the
    sends before it (outbox.claim_batch_size keeps a batch within half the lease).
    """
    with transaction.atomic():
        taken = list(
            Notice.objects.select_for_update(skip_locked=True)
            .filter(notice_due(now), pk__in=notice_ids)
            .values_list("pk", flat=True)
        )
        if taken:
            Notice.objects.filter(pk__in=taken).update(
                state=Notice.State.SENDING, lease_until=lease_end(now), attempts=F("attempts") + 1
            )
    return set(taken)


def notice_mark_sent(*, notice_id: int, recipients: str, now: dt.datetime) -> None:
    Notice.objects.filter(pk=notice_id, state=Notice.State.SENDING).update(
        state=Notice.State.SENT, sent_at=now, closed_at=now, lease_until=None, last_error="", recipients=recipients
    )


def notice_close(*, notice_id: int, state: str, reason: str, now: dt.datetime) -> None:
    """Close a notice unsent: superseded (replaced key, paused institution, newer step), cancelled or failed."""
    Notice.objects.filter(pk=notice_id, state__in=Notice.OPEN_STATES).update(
        state=state, closed_at=now, lease_until=None, last_error=mask_secrets(reason)[:500]
    )


def notice_supersede(*, notice_id: int, reason: str, now: dt.datetime) -> None:
    """A decision replaced an open notice (a newer step of the same key): close it unsent, as superseded."""
    notice_close(notice_id=notice_id, state=Notice.State.SUPERSEDED, reason=reason, now=now)


def retry_delay(attempts: int) -> dt.timedelta:
    """Exponential backoff from NOTICE_RETRY_FIRST, capped at NOTICE_RETRY_MAX, jittered to 50-100%.

    The jitter spreads the notices of one outage so they do not all return at once.
    """
    first, cap = settings.NOTICE_RETRY_FIRST, settings.NOTICE_RETRY_MAX
    delay = min(first * 2 ** min(max(attempts - 1, 0), 30), cap)
    return delay * _random.uniform(0.5, 1.0)


def notice_retry_later(*, notice_id: int, error: BaseException | str, now: dt.datetime) -> str:
    """Record a failed attempt: back to pending with the next attempt set, or failed past retry_until.

    Returns the state written. The error is its type and message (an SMTP
    reply, a receiver's refusal), masked as logs are: every staff role reads
    it, so no URL's query string or user name and nothing secret-looking.
    """
    text = mask_secrets(error if isinstance(error, str) else f"{type(error).__name__}: {error}")
    notice = Notice.objects.filter(pk=notice_id, state=Notice.State.SENDING).first()
    if notice is None:
        return ""
    if now >= notice.retry_until:
        notice_close(notice_id=notice_id, state=Notice.State.FAILED, reason=text, now=now)
        logger.error("Notice %s (%s) failed for good after %s attempts", notice_id, notice.kind, notice.attempts)
        return Notice.State.FAILED
    Notice.objects.filter(pk=notice_id, state=Notice.State.SENDING).update(
        state=Notice.State.PENDING,
        lease_until=None,
        next_attempt_at=now + retry_delay(notice.attempts),
        last_error=text[:500],
    )
    return Notice.State.PENDING


def notice_resend(*, notice_id: int, now: dt.datetime | None = None) -> bool:
    """Staff's one-click resend of a failed notice: pending again, due now, with a fresh retry window."""
    now = now or timezone.now()
    return (
        Notice.objects.filter(pk=notice_id, state=Notice.State.FAILED).update(
            state=Notice.State.PENDING,
            next_attempt_at=now,
            retry_until=now + settings.NOTICE_GIVE_UP_AFTER,
            closed_at=None,
        )
        == 1
    )


def due_notices(*, now: dt.datetime) -> list[tuple[int, str]]:
    """(id, kind) of every due notice, oldest due first."""
    return list(Notice.objects.filter(notice_due(now)).order_by("next_attempt_at", "pk").values_list("pk", "kind"))


# --------------------------------------------------------------------------
# Groups: notices of one kind and one audience sent as one message (outgoing.Sender.group_key)
# --------------------------------------------------------------------------


def notices_claim_group(*, lead_id: int, kind: str, group: dict, now: dt.datetime, until: dt.datetime) -> list[int]:
    """Take every notice of `kind` in `group` (filter arguments) that is due by `until`, or whose sender died.

    Only while `lead_id` (the notice whose delivery asks) is itself due:
    the task of a notice already sent with its group takes nothing, and so
    does not cut short the wait of notices written since. Claimed like
    notices_claim (rows another sender holds are skipped), so two senders
    never send one notice; `until` reaches past now to gather the notices
    still waiting for their group (STAFF_ALERT_GROUP_SECONDS). The ids
    taken, oldest first.
    """
    due = Q(state=Notice.State.PENDING, next_attempt_at__lte=until) | Q(state=Notice.State.SENDING, lease_until__lt=now)
    with transaction.atomic():
        if not Notice.objects.select_for_update(skip_locked=True).filter(notice_due(now), pk=lead_id).exists():
            return []
        taken = list(
            Notice.objects.select_for_update(skip_locked=True)
            .filter(due, kind=kind, **group)
            .order_by("created_at", "pk")
            .values_list("pk", flat=True)
        )
        if taken:
            Notice.objects.filter(pk__in=taken).update(
                state=Notice.State.SENDING, lease_until=lease_end(now), attempts=F("attempts") + 1
            )
    return taken


def notices_mark_sent(*, notice_ids: list[int], recipients: str, now: dt.datetime) -> None:
    Notice.objects.filter(pk__in=notice_ids, state=Notice.State.SENDING).update(
        state=Notice.State.SENT, sent_at=now, closed_at=now, lease_until=None, last_error="", recipients=recipients
    )


def notices_close(*, notice_ids: list[int], state: str, reason: str, now: dt.datetime) -> None:
    Notice.objects.filter(pk__in=notice_ids, state__in=Notice.OPEN_STATES).update(
        state=state, closed_at=now, lease_until=None, last_error=reason[:500]
    )


def notices_retry_later(*, notice_ids: list[int], error: BaseException | str, now: dt.datetime) -> list[str]:
    """notice_retry_later for a group: one next attempt for all (they stay one message); the states written.

    Each notice gives up at its own retry_until.
    """
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    rows = list(Notice.objects.filter(pk__in=notice_ids, state=Notice.State.SENDING).values("pk", "retry_until"))
    given_up = [row["pk"] for row in rows if now >= row["retry_until"]]
    waiting = [row["pk"] for row in rows if now < row["retry_until"]]
    if given_up:
        notices_close(notice_ids=given_up, state=Notice.State.FAILED, reason=text, now=now)
        logger.error("%s grouped notices failed for good", len(given_up))
    if waiting:
        attempts = max(Notice.objects.filter(pk__in=waiting).values_list("attempts", flat=True))
        Notice.objects.filter(pk__in=waiting, state=Notice.State.SENDING).update(
            state=Notice.State.PENDING,
            lease_until=None,
            next_attempt_at=now + retry_delay(attempts),
            last_error=text[:500],
        )
    return [Notice.State.FAILED] * len(given_up) + [Notice.State.PENDING] * len(waiting)
