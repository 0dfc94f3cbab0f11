"""SQL expressions for dates and expiry, shared by models and selectors.

Kept apart so the models can annotate their own querysets without importing
the selectors (which import the models).
"""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.db import models
from django.db.models import Case, Q, Value, When
from django.db.models.lookups import LessThan, LessThanOrEqual


class ExpiryState(models.TextChoices):
    OK = "ok", "OK"
    EXPIRING = "expiring", "Expiring"
    EXPIRED = "expired", "Expired"
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


def expiry_state_case(
    *, field: str, today: dt.date | None = None, days_left=None, missing_when: Q | None = None
) -> Case:
    """ExpiryState of the date in `field`: expired before today, expiring within CD2_EXPIRING_DAYS.

    Either one `today` for every row, or `days_left`: an expression of each
    row's day count (credentials.days.days_left_sql, each institution's own today).
    """
    whens = []
    if missing_when is not None:
        whens.append(When(missing_when, then=Value(ExpiryState.MISSING)))
    if days_left is not None:
        whens += [
            When(LessThan(days_left, 0), then=Value(ExpiryState.EXPIRED)),
            When(LessThanOrEqual(days_left, settings.CD2_EXPIRING_DAYS), then=Value(ExpiryState.EXPIRING)),
        ]
    else:
        whens += [
            When(**{f"{field}__lt": today}, then=Value(ExpiryState.EXPIRED)),
            When(
                **{f"{field}__lte": today + dt.timedelta(days=settings.CD2_EXPIRING_DAYS)},
                then=Value(ExpiryState.EXPIRING),
            ),
        ]
    return Case(*whens, default=Value(ExpiryState.OK), output_field=models.CharField())


def urgency_order(field: str, states) -> Case:
    """A sort key for `field` that puts `states` in their given order (most urgent first), others last.

    The admin's "Key status" and "State" columns sort by this, not by the
    internal codes' alphabet.
    """
    return Case(
        *(When(**{field: state}, then=Value(rank)) for rank, state in enumerate(states)),
        default=Value(len(states)),
        output_field=models.IntegerField(),
    )
