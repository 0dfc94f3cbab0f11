"""Reads that more than one door uses: key status, due reminders, pending keys, the current key.

Lists, the reminder scan, the dashboard and the digest all call these, so
"expiring", "failing" and "due" mean the same thing everywhere, and no list
loops over rows in Python.
"""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.db import models
from django.db.models import Case, Exists, F, FilteredRelation, OuterRef, Q, Subquery, Value, When
from django.db.models.functions import TruncDate
from django.utils import timezone

from credentials.expressions import DaysBetween, DaysUntil, ExpiryState, expiry_state_case
from credentials.models import FAILED_VERDICTS, AuditEvent, CD2Credential, PendingReason, ReminderLog
from institutions.models import Institution

__all__ = ["ExpiryState", "KeyState"]

# A claim older than this that was never sent belongs to a run that died
# between claiming and sending; the next run may take it over. Longer than
# any single send (SMTP timeout 30 s) and the task's retry backoff, so a
# send that is merely slow or retrying is never taken over.
CLAIM_STALE_AFTER = dt.timedelta(minutes=30)
# A pending key not checked for this long lost its re-check (broker down when
# it was queued) or ran out of retries: the sweep queues another. Longer than
# the longest backoff step, so a running retry chain is rarely doubled.
PENDING_SWEEP_AFTER = dt.timedelta(hours=7)
# A key Instructure answered "not enabled" (403) for is checked again about
# daily (the hourly sweep, a little under a day so it does not drift an hour
# later each day) for PENDING_NOT_ENABLED_FOR; after that staff decide.
PENDING_NOT_ENABLED_EVERY = dt.timedelta(hours=23)
PENDING_NOT_ENABLED_FOR = dt.timedelta(days=30)


class KeyState(models.TextChoices):
    """What staff see on an institution: the expiry state, or why there is no working key."""

    OK = "ok", "Active"
    EXPIRING = "expiring", "Expiring"
    EXPIRED = "expired", "Expired"
    FAILING = "failing", "Failing check"
    PENDING = "pending", "Pending check"
    MISSING = "missing", "Missing"


def local_today() -> dt.date:
    return timezone.localdate()


# --------------------------------------------------------------------------
# Institutions and their key
# --------------------------------------------------------------------------


def institutions_with_key_status(*, queryset=None, today: dt.date | None = None):
    """Institutions with their active key (one LEFT JOIN) and its state.

    Adds: active_key_id, active_expires_on, active_hint, active_region,
    active_last_verified_at, active_last_verdict, active_last_verification,
    active_last_pulled_at, days_left (NULL without an active key), expiry_state (ok, expiring,
    expired, missing), latest_key_status, the newest key when it is pending
    (pending_key_id, pending_hint, pending_expires_on, pending_reason) and
    key_state: pending when the newest key that is not history awaits its
    check (it wins over the old active key's expiry: a new key is on its
    way); else failing when the active key's last check said the key does
    not work, else its expiry state; without an active key, failing when the
    newest key failed, else missing.
    """
    today = today or local_today()
    queryset = Institution.objects.all() if queryset is None else queryset
    newest_key_status = (
        CD2Credential.objects.filter(institution=OuterRef("pk"))
        .exclude(status=CD2Credential.Status.SUPERSEDED)
        .order_by("-submitted_at", "-pk")
        .values("status")[:1]
    )
    newest_pending = (
        CD2Credential.objects.filter(institution=OuterRef("pk"))
        .exclude(status=CD2Credential.Status.SUPERSEDED)
        .order_by("-submitted_at", "-pk")
    )
    no_active = Q(active_key__id__isnull=True)
    pending = Q(latest_key_status=CD2Credential.Status.PENDING_VERIFICATION)

    def newest(field: str):
        return Case(
            When(pending, then=Subquery(newest_pending.values(field)[:1])),
            default=Value(None),
        )

    return (
        queryset.annotate(
            active_key=FilteredRelation("credentials", condition=Q(credentials__status=CD2Credential.Status.ACTIVE)),
        )
        .annotate(
            active_key_id=F("active_key__id"),
            active_expires_on=F("active_key__expires_on"),
            active_hint=F("active_key__hint"),
            active_region=F("active_key__region"),
            active_last_verified_at=F("active_key__last_verified_at"),
            active_last_verdict=F("active_key__last_verdict"),
            active_last_verification=F("active_key__last_verification"),
            active_last_pulled_at=F("active_key__last_pulled_at"),
            days_left=DaysUntil("active_key__expires_on", today),
            expiry_state=expiry_state_case(field="active_key__expires_on", today=today, missing_when=no_active),
            latest_key_status=Subquery(newest_key_status),
        )
        .annotate(
            pending_key_id=newest("pk"),
            pending_hint=newest("hint"),
            pending_expires_on=newest("expires_on"),
            pending_reason=newest("pending_reason"),
            key_state=Case(
                When(pending, then=Value(KeyState.PENDING)),
                When(~no_active & Q(active_key__last_verdict__in=FAILED_VERDICTS), then=Value(KeyState.FAILING)),
                When(~no_active, then=F("expiry_state")),
                When(latest_key_status=CD2Credential.Status.INVALID, then=Value(KeyState.FAILING)),
                default=Value(KeyState.MISSING),
                output_field=models.CharField(),
            ),
        )
    )


def current_key(*, institution: Institution, statuses: tuple[str, ...]) -> CD2Credential | None:
    """The institution's newest key in one of `statuses`, without its secrets."""
    return (
        CD2Credential.objects.without_secrets()
        .filter(institution=institution, status__in=statuses)
        .order_by("-submitted_at", "-pk")
        .first()
    )


def handoff_candidate(*, institution: Institution) -> CD2Credential | None:
    """The key the pipeline would get: the active one, else the newest that is not history."""
    return current_key(institution=institution, statuses=(CD2Credential.Status.ACTIVE,)) or current_key(
        institution=institution, statuses=(CD2Credential.Status.REVOKED, CD2Credential.Status.INVALID)
    )


def served_active_keys(*, institution_slug: str | None = None):
    """Active keys of institutions we still serve, oldest first: what the daily check covers."""
    keys = CD2Credential.objects.filter(
        status=CD2Credential.Status.ACTIVE, institution__status__in=Institution.SERVED_STATUSES
    )
    if institution_slug:
        keys = keys.filter(institution__slug=institution_slug)
    return keys.order_by("pk")


def pending_credentials_due(*, now: dt.datetime | None = None) -> list[int]:
    """Ids of pending keys due for another check by the hourly sweep.

    A key waiting for Instructure to enable CD2 (403): not checked for
    PENDING_NOT_ENABLED_EVERY, while younger than PENDING_NOT_ENABLED_FOR
    (then staff decide: it stays pending, shown as such). Any other: not
    checked for PENDING_SWEEP_AFTER, because its own re-check was lost
    (broker down) or ran out of retries.
    """
    now = now or timezone.now()

    def not_checked_since(cutoff: dt.datetime) -> Q:
        return Q(last_verified_at__lt=cutoff) | Q(last_verified_at__isnull=True, submitted_at__lt=cutoff)

    not_enabled = Q(pending_reason=PendingReason.NOT_ENABLED)
    return list(
        CD2Credential.objects.filter(status=CD2Credential.Status.PENDING_VERIFICATION)
        .filter(
            (
                not_enabled
                & not_checked_since(now - PENDING_NOT_ENABLED_EVERY)
                & Q(submitted_at__gte=now - PENDING_NOT_ENABLED_FOR)
            )
            | (~not_enabled & not_checked_since(now - PENDING_SWEEP_AFTER))
        )
        .order_by("pk")
        .values_list("pk", flat=True)
    )


def newer_key_pending(key: str = "") -> Exists:
    """The institution of the (outer) key has a newer key waiting for its check.

    `key` is the path to the key from the outer query ("" for a key query,
    "credential__" for a reminder query). While the newer key waits, the
    old key's expiry reminders pause: the customer has already made the new
    key. They resume by themselves when the check ends (the new key becomes
    active and supersedes the old one, or it is found invalid and the
    customer is told at once).
    """
    return Exists(
        CD2Credential.objects.filter(
            institution_id=OuterRef(f"{key}institution_id"),
            status=CD2Credential.Status.PENDING_VERIFICATION,
            submitted_at__gt=OuterRef(f"{key}submitted_at"),
        )
    )


# --------------------------------------------------------------------------
# Reminders due
# --------------------------------------------------------------------------


def reminder_days_before() -> list[int]:
    return sorted({int(days) for days in settings.REMINDER_DAYS_BEFORE if int(days) >= 0})


def reminder_repeat_after() -> int:
    return int(settings.REMINDER_REPEAT_AFTER_EXPIRY_DAYS)


def reminder_step(*, days_left: int) -> int | None:
    """The most urgent threshold that has come due for a key `days_left` from expiry.

    None when no reminder is due yet. Must agree with _step_expression (SQL).
    """
    before, repeat = reminder_days_before(), reminder_repeat_after()
    if days_left >= 0:
        return next((t for t in before if t >= days_left), None)
    if repeat > 0 and -days_left >= repeat:
        return -repeat * (-days_left // repeat)
    return before[0] if before else None


def _step_expression(today: dt.date) -> Case:
    """reminder_step in SQL, over expires_on ranges (the index on status, expires_on serves it)."""
    before, repeat = reminder_days_before(), reminder_repeat_after()
    days_left = DaysUntil("expires_on", today)
    whens = []
    if repeat > 0:
        # Integer division truncates toward zero on PostgreSQL and SQLite:
        # -9 / 7 * 7 = -7, the last weekly step reached.
        whens.append(
            When(
                expires_on__lte=today - dt.timedelta(days=repeat),
                then=models.ExpressionWrapper(
                    days_left / Value(repeat) * Value(repeat), output_field=models.IntegerField()
                ),
            )
        )
    if before:
        whens.append(When(expires_on__lt=today, then=Value(before[0])))
    for threshold in before:
        whens.append(When(expires_on__lte=today + dt.timedelta(days=threshold), then=Value(threshold)))
    return Case(*whens, default=Value(None), output_field=models.IntegerField())


def unsettled_claim(now: dt.datetime) -> Q:
    """A claim nobody is working on any more: still only claimed, and old."""
    return Q(state=ReminderLog.State.CLAIMED, claimed_at__lt=now - CLAIM_STALE_AFTER)


def due_credentials(*, today: dt.date, now: dt.datetime):
    """Active keys of served institutions whose current step has not been handled.

    One query: the step is computed in SQL and a NOT EXISTS drops keys whose
    step already has a sent, failed, skipped or fresh claim row. Steps that
    came due before the key was submitted are not due.
    """
    before = reminder_days_before()
    horizon = today + dt.timedelta(days=before[-1] if before else 0)
    handled = ReminderLog.objects.filter(credential=OuterRef("pk"), threshold=OuterRef("step")).exclude(
        unsettled_claim(now)
    )
    return (
        CD2Credential.objects.without_secrets()
        .filter(
            status=CD2Credential.Status.ACTIVE,
            institution__status__in=Institution.SERVED_STATUSES,
            expires_on__lte=horizon,
        )
        .annotate(
            step=_step_expression(today),
            days_left_on_arrival=DaysBetween("expires_on", TruncDate("submitted_at")),
        )
        # A step that passed before we had the key is not sent: the customer
        # just handed it over, so the next step is the first reminder.
        .filter(step__isnull=False, step__lte=F("days_left_on_arrival"))
        .filter(~Exists(handled))
        .filter(~newer_key_pending())
    )


def audit_events_by(*, user) -> int:
    """How many audit events name `user` as the actor (a user with any is kept for ever, deactivated not deleted)."""
    return AuditEvent.objects.filter(actor=user).count()
