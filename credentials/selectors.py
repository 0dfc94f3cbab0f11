"""Reusable queries: expiry state and key status computed in SQL.

Lists, the reminder scan and the digest all call these, so "expiring" means
the same thing everywhere and no list loops over rows in Python.
"""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.db import models
from django.db.models import Case, F, FilteredRelation, OuterRef, Q, Subquery, Value, When
from django.utils import timezone


class ExpiryState(models.TextChoices):
    OK = "ok", "OK"
    EXPIRING = "expiring", "Expiring"
    EXPIRED = "expired", "Expired"
    MISSING = "missing", "Missing"


class KeyState(models.TextChoices):
    """What staff see on an institution: the expiry state, or why there is no active key."""

    OK = "ok", "Active"
    EXPIRING = "expiring", "Expiring"
    EXPIRED = "expired", "Expired"
    FAILING = "failing", "Failing check"
    PENDING = "pending", "Pending check"
    MISSING = "missing", "Missing"


class DaysBetween(models.Func):
    """Whole days from one date expression to another (later minus earlier), on every backend."""

    output_field = models.IntegerField()

    def as_postgresql(self, compiler, connection, **extra):
        # date - date is an integer number of days in PostgreSQL.
        return self.as_sql(compiler, connection, template="(%(expressions)s)", arg_joiner=" - ", **extra)

    def as_sqlite(self, compiler, connection, **extra):
        return self.as_sql(
            compiler,
            connection,
            template="CAST(julianday(%(expressions)s) AS INTEGER)",
            arg_joiner=") - julianday(",
            **extra,
        )


class DaysUntil(DaysBetween):
    """Whole days from `today` to a date column."""

    def __init__(self, expression, today: dt.date):
        super().__init__(expression, Value(today, output_field=models.DateField()))


def local_today() -> dt.date:
    return timezone.localdate()


def expiring_days() -> int:
    return settings.CD2_EXPIRING_DAYS


def _expiry_case(*, field: str, today: dt.date, missing_when: Q | None = None) -> Case:
    whens = []
    if missing_when is not None:
        whens.append(When(missing_when, then=Value(ExpiryState.MISSING)))
    whens += [
        When(**{f"{field}__lt": today}, then=Value(ExpiryState.EXPIRED)),
        When(**{f"{field}__lte": today + dt.timedelta(days=expiring_days())}, then=Value(ExpiryState.EXPIRING)),
    ]
    return Case(*whens, default=Value(ExpiryState.OK), output_field=models.CharField())


def annotate_expiry(queryset, *, today: dt.date | None = None):
    """Credentials with days_left (int) and expiry_state (ok, expiring, expired)."""
    today = today or local_today()
    return queryset.annotate(
        days_left=DaysUntil("expires_on", today),
        expiry_state=_expiry_case(field="expires_on", today=today),
    )


def institutions_with_key_status(*, queryset=None, today: dt.date | None = None):
    """Institutions with their active key (one LEFT JOIN) and its state.

    Adds: active_key_id, active_expires_on, active_hint, active_region,
    active_last_verified_at, active_last_verification, days_left (NULL
    without an active key), expiry_state (ok, expiring, expired, missing),
    latest_key_status and key_state (expiry_state, or failing / pending
    when the newest key awaits or failed its check).
    """
    from credentials.models import CD2Credential
    from institutions.models import Institution

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
        active_last_verification=F("active_key__last_verification"),
        days_left=DaysUntil("active_key__expires_on", today),
        expiry_state=_expiry_case(field="active_key__expires_on", today=today, missing_when=no_active),
        latest_key_status=Subquery(newest_key_status),
        key_state=Case(
            When(~no_active, then=F("expiry_state")),
            When(latest_key_status=CD2Credential.Status.INVALID, then=Value(KeyState.FAILING)),
            When(latest_key_status=CD2Credential.Status.PENDING_VERIFICATION, then=Value(KeyState.PENDING)),
            default=Value(KeyState.MISSING),
            output_field=models.CharField(),
        ),
    )
