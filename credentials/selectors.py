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
from credentials.models import FAILED_VERDICTS, CD2Credential, ReminderLog
from institutions.models import Institution

__all__ = ["ExpiryState", "KeyState"]

# A pending key not checked for this long lost its re-check (broker down when
# it was queued) or ran out of retries: the sweep queues another. Longer than
# the longest backoff step, so a running retry chain is rarely doubled.
PENDING_SWEEP_AFTER = dt.timedelta(hours=7)


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
    days_left (NULL without an active key), expiry_state (ok, expiring,
    expired, missing), latest_key_status and key_state: failing when the
    active key's last check said the key does not work, else its expiry
    state; without an active key, failing or pending when the newest key
    failed or awaits its check, else missing.
    """
    today = today or local_today()
    queryset = Institution.objects.all() if queryset is None else queryset
    newest_key_status = (
        CD2Credential.objects.filter(institution=OuterRef("pk"))
        .exclude(status=CD2Credential.Status.SUPERSEDED)
        .order_by("-submitted_at", "-pk")
        .values("status")[:1]
    )
    no_active = Q(active_key__id__isnull=True)
    return queryset.annotate(
        active_key=FilteredRelation("credentials", condition=Q(credentials__status=CD2Credential.Status.ACTIVE)),
    ).annotate(
        active_key_id=F("active_key__id"),
        active_expires_on=F("active_key__expires_on"),
        active_hint=F("active_key__hint"),
        active_region=F("active_key__region"),
        active_last_verified_at=F("active_key__last_verified_at"),
        active_last_verdict=F("active_key__last_verdict"),
        active_last_verification=F("active_key__last_verification"),
        days_left=DaysUntil("active_key__expires_on", today),
        expiry_state=expiry_state_case(field="active_key__expires_on", today=today, missing_when=no_active),
        latest_key_status=Subquery(newest_key_status),
        key_state=Case(
            When(~no_active & Q(active_key__last_verdict__in=FAILED_VERDICTS), then=Value(KeyState.FAILING)),
            When(~no_active, then=F("expiry_state")),
            When(latest_key_status=CD2Credential.Status.INVALID, then=Value(KeyState.FAILING)),
            When(latest_key_status=CD2Credential.Status.PENDING_VERIFICATION, then=Value(KeyState.PENDING)),
            default=Value(KeyState.MISSING),
            output_field=models.CharField(),
        ),
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
    """Ids of pending keys not checked for PENDING_SWEEP_AFTER: their re-check was lost or gave up."""
    cutoff = (now or timezone.now()) - PENDING_SWEEP_AFTER
    return list(
        CD2Credential.objects.filter(status=CD2Credential.Status.PENDING_VERIFICATION)
        .filter(Q(last_verified_at__lt=cutoff) | Q(last_verified_at__isnull=True, submitted_at__lt=cutoff))
        .order_by("pk")
        .values_list("pk", flat=True)
    )


# --------------------------------------------------------------------------
# Reminders due
# --------------------------------------------------------------------------


def reminder_days_before() -> list[int]:
    return sorted({int(days) for days in settings.REMINDER_DAYS_BEFORE if int(days) >= 0})


def reminder_repeat_after() -> int:
    return int(settings.REMINDER_REPEAT_AFTER_EXPIRY_DAYS)


def reminder_cadence_after_expiry() -> tuple[int, int, int]:
    """(repeat, weekly_until, monthly): every `repeat` days until `weekly_until` after expiry, then every `monthly`.

    weekly_until is a whole number of repeats; 0 repeat means no reminder after the day-of one.
    """
    repeat = reminder_repeat_after()
    if repeat <= 0:
        return 0, 0, 0
    weekly_until = max(int(settings.REMINDER_WEEKLY_AFTER_EXPIRY_FOR_DAYS) // repeat, 1) * repeat
    return repeat, weekly_until, max(int(settings.REMINDER_MONTHLY_REPEAT_DAYS), 0)


def reminder_step(*, days_left: int) -> int | None:
    """The most urgent threshold that has come due for a key `days_left` from expiry.

    None when no reminder is due yet. After expiry: weekly (-7, -14 ... -42),
    then monthly (-72, -102 ...). Must agree with _step_expression (SQL).
    """
    before = reminder_days_before()
    repeat, weekly_until, monthly = reminder_cadence_after_expiry()
    if days_left >= 0:
        return next((t for t in before if t >= days_left), None)
    since = -days_left
    if repeat and since >= weekly_until:
        months = (since - weekly_until) // monthly if monthly else 0
        return -(weekly_until + months * monthly)
    if repeat and since >= repeat:
        return -repeat * (since // repeat)
    return before[0] if before else None


def _step_expression(today: dt.date) -> Case:
    """reminder_step in SQL, over expires_on ranges (the index on status, expires_on serves it)."""
    before = reminder_days_before()
    repeat, weekly_until, monthly = reminder_cadence_after_expiry()
    days_since = DaysBetween(Value(today), "expires_on")  # days since expiry, positive after it
    whens = []

    def integer(expression):
        return models.ExpressionWrapper(expression, output_field=models.IntegerField())

    if repeat:
        # Integer division of non-negative numbers: the last step reached.
        if monthly:
            whens.append(
                When(
                    expires_on__lte=today - dt.timedelta(days=weekly_until + monthly),
                    then=integer(
                        Value(-weekly_until) - (days_since - Value(weekly_until)) / Value(monthly) * Value(monthly)
                    ),
                )
            )
        whens.append(When(expires_on__lte=today - dt.timedelta(days=weekly_until), then=Value(-weekly_until)))
        whens.append(
            When(
                expires_on__lte=today - dt.timedelta(days=repeat),
                then=integer(Value(0) - days_since / Value(repeat) * Value(repeat)),
            )
        )
    if before:
        whens.append(When(expires_on__lt=today, then=Value(before[0])))
    for threshold in before:
        whens.append(When(expires_on__lte=today + dt.timedelta(days=threshold), then=Value(threshold)))
    return Case(*whens, default=Value(None), output_field=models.IntegerField())


def due_credentials(*, today: dt.date, now: dt.datetime):
    """Active keys of served institutions whose current step has not been handled.

    One query: the step is computed in SQL and a NOT EXISTS drops keys whose
    step already has a row (claimed steps have their notice in the outbox,
    written with the claim, which delivers or retries them). Steps that came
    due before the key was submitted are not due.
    """
    before = reminder_days_before()
    horizon = today + dt.timedelta(days=before[-1] if before else 0)
    handled = ReminderLog.objects.filter(credential=OuterRef("pk"), threshold=OuterRef("step"))
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
    )
