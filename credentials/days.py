"""One "today" per institution: every day count, date and "N days" phrase a person reads about a key.

A key's day count is its institution's: the date it is in the institution's
time zone (Institution.timezone) at the instant asked about, whoever reads
it. The customer's mail, the receipt, the owner's summary, the staff digest,
the admin list and pages, the dashboard, the API, the CSV export and the
.ics all read it from here, so they never disagree. A reader's own zone
(a staff member's setting) decides only the reader's day: a heading's
date, "this month", the time of day of a moment.

key_days() is the rule in Python. The lists count in SQL with the same rule:
at any instant every time zone on Earth is on one of at most three dates
(UTC+14 to UTC-12), so zone_days() sorts the zones by their date at that
instant and institution_today_sql() / expiry_days_between() turn that into
a CASE over Institution.timezone, one branch per date.

Reminders stop REMINDER_STOP_AFTER_EXPIRY_MONTHS after a lapse
(reminders_end_on); a key just accepted is not reminded for
REMINDER_QUIET_AFTER_ACCEPTANCE (first_step_day).
"""

from __future__ import annotations

import datetime as dt
import functools
import operator
import zoneinfo
from collections.abc import Iterable
from dataclasses import dataclass

from django.conf import settings
from django.db import models
from django.db.models import Case, Q, Value, When
from django.utils.translation import gettext, ngettext

from credentials.expressions import DaysBetween
from credentials.validators import add_months

# What an institution whose zone is unknown (a name the zone database no longer has) counts in.
FALLBACK_ZONE = "UTC"


# --------------------------------------------------------------------------
# Zones and days (Python)
# --------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def zone_named(name: str | None) -> zoneinfo.ZoneInfo:
    """The zone of that IANA name; UTC for an empty or unknown one.

    Kept here: ZoneInfo's own cache keeps only a few zones alive, and
    reading one from the zone database costs a file read.
    """
    try:
        return zoneinfo.ZoneInfo(name or FALLBACK_ZONE)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return zoneinfo.ZoneInfo(FALLBACK_ZONE)


def institution_zone(institution) -> zoneinfo.ZoneInfo:
    return zone_named(getattr(institution, "timezone", None))


def day_in(zone: str | dt.tzinfo | None, now: dt.datetime) -> dt.date:
    """The date it is in `zone` at the instant `now`."""
    tz = zone if isinstance(zone, dt.tzinfo) else zone_named(zone)
    return now.astimezone(tz).date()


def institution_today(institution, now: dt.datetime) -> dt.date:
    """The date it is for the institution at `now`: every day count about its key starts from it."""
    return day_in(institution_zone(institution), now)


def expiry_phrase(days_left: int) -> str:
    """ "expires in 14 days", "expires today", "expired 7 days ago" ... (in the active language: a customer's mail)."""
    if days_left > 1:
        return ngettext("expires in %(count)d day", "expires in %(count)d days", days_left) % {"count": days_left}
    if days_left == 1:
        return gettext("expires tomorrow")
    if days_left == 0:
        return gettext("expires today")
    if days_left == -1:
        return gettext("expired yesterday")
    return ngettext("expired %(count)d day ago", "expired %(count)d days ago", -days_left) % {"count": -days_left}


def reminders_end_on(expires_on: dt.date) -> dt.date:
    """The last day a lapsed key is reminded about: REMINDER_STOP_AFTER_EXPIRY_MONTHS after its expiry."""
    return add_months(expires_on, int(settings.REMINDER_STOP_AFTER_EXPIRY_MONTHS))


def earliest_expiry_still_reminded(today: dt.date) -> dt.date:
    """The earliest expiry date whose reminders have not ended on `today` (reminders_end_on(e) >= today)."""
    # add_months clamps to the month's end, so it is monotone but not invertible: step to the boundary.
    guess = add_months(today, -int(settings.REMINDER_STOP_AFTER_EXPIRY_MONTHS))
    while reminders_end_on(guess) < today:
        guess += dt.timedelta(days=1)
    while reminders_end_on(guess - dt.timedelta(days=1)) >= today:
        guess -= dt.timedelta(days=1)
    return guess


@dataclass(frozen=True)
class KeyDays:
    """What a person reads about a key's expiry on a given instant, in its institution's day."""

    today: dt.date
    expires_on: dt.date
    days_left: int  # negative after expiry
    phrase: str  # "expires in 6 days"
    reminders_end_on: dt.date

    @property
    def lapsed(self) -> bool:
        return self.days_left < 0

    @property
    def days_ago(self) -> int:
        return max(-self.days_left, 0)

    @property
    def reminders_ended(self) -> bool:
        return self.today > self.reminders_end_on


def key_days(*, expires_on: dt.date, zone: str | dt.tzinfo | None, now: dt.datetime) -> KeyDays:
    """The one rule: a key's day count, phrase and reminder horizon at `now`, in its institution's zone."""
    today = day_in(zone, now)
    days_left = (expires_on - today).days
    return KeyDays(
        today=today,
        expires_on=expires_on,
        days_left=days_left,
        phrase=expiry_phrase(days_left),
        reminders_end_on=reminders_end_on(expires_on),
    )


def institution_key_days(institution, *, expires_on: dt.date, now: dt.datetime) -> KeyDays:
    return key_days(expires_on=expires_on, zone=institution_zone(institution), now=now)


def first_step_day(*, expires_on: dt.date, accepted_at: dt.datetime, zone: str | dt.tzinfo | None) -> dt.date:
    """The earliest day a reminder step of a key accepted at `accepted_at` may be due on.

    A fresh key is not reminded in its first REMINDER_QUIET_AFTER_ACCEPTANCE
    (24 hours): a step due on a day that period touches is never sent, and
    the first reminder is the next step due after it. Unless the key expires
    within that period: then only the steps due before the day it was
    accepted are dropped (we did not have the key then).
    """
    accepted_day = day_in(zone, accepted_at)
    quiet_day = day_in(zone, accepted_at + settings.REMINDER_QUIET_AFTER_ACCEPTANCE)
    if expires_on <= quiet_day:
        return accepted_day
    return quiet_day + dt.timedelta(days=1)


def largest_step_allowed(*, expires_on: dt.date, accepted_at: dt.datetime, zone: str | dt.tzinfo | None) -> int:
    """The largest threshold (days before expiry) a step of this key may have: see first_step_day."""
    return (expires_on - first_step_day(expires_on=expires_on, accepted_at=accepted_at, zone=zone)).days


# --------------------------------------------------------------------------
# The same rule in SQL: zones grouped by their date at an instant
# --------------------------------------------------------------------------


@functools.cache
def known_zones() -> frozenset[str]:
    """Every zone name an institution may have (validate_timezone allows these)."""
    return frozenset(zoneinfo.available_timezones())


@functools.lru_cache(maxsize=256)
def _zone_days(instant: dt.datetime, not_before: dt.time | None) -> tuple[tuple[dt.date, frozenset[str]], ...]:
    groups: dict[dt.date, set[str]] = {}
    for name in known_zones():
        local = instant.astimezone(zone_named(name))
        if not_before is not None and local.time() < not_before:
            continue
        groups.setdefault(local.date(), set()).add(name)
    return tuple(sorted((day, frozenset(names)) for day, names in groups.items()))


def zone_days(now: dt.datetime, *, not_before: dt.time | None = None) -> tuple[tuple[dt.date, frozenset[str]], ...]:
    """Every known zone by its date at `now`, earliest date first (two or three dates).

    With `not_before`, only the zones whose clock has reached that time of
    day (the scheduled reminder run reaches each institution at
    REMINDERS_HOUR its own time).
    """
    # Zone offsets change on whole minutes: the grouping of one minute serves every call in it.
    return _zone_days(now.astimezone(dt.UTC).replace(second=0, microsecond=0), not_before)


def zone_q(zones: Iterable[str], *, prefix: str = "") -> Q:
    """Rows (of Institution, or reached through `prefix`) whose institution counts in one of `zones`.

    An unknown zone name counts as UTC (zone_named), so the group holding
    UTC is written as "none of the other zones".
    """
    zones = frozenset(zones)
    field = f"{prefix}timezone__in"
    if FALLBACK_ZONE in zones:
        others = sorted(known_zones() - zones)
        return ~Q(**{field: others}) if others else Q()
    return Q(**{field: sorted(zones)}) if zones else Q(pk__in=[])


def institution_today_sql(now: dt.datetime, *, prefix: str = "") -> Case:
    """institution_today() in SQL: each row's institution's date at `now`."""
    groups = zone_days(now)
    *branches, (last_day, _) = sorted(groups, key=lambda group: FALLBACK_ZONE in group[1])
    return Case(
        *[When(zone_q(zones, prefix=prefix), then=Value(day)) for day, zones in branches],
        default=Value(last_day),
        output_field=models.DateField(),
    )


def days_left_sql(field: str, now: dt.datetime, *, prefix: str = ""):
    """key_days().days_left in SQL: whole days from the row's institution's today to the date in `field`."""
    return DaysBetween(field, institution_today_sql(now, prefix=prefix))


def expiry_days_between(
    field: str, now: dt.datetime, *, at_least: int | None = None, at_most: int | None = None, prefix: str = ""
) -> Q:
    """Rows whose date in `field` is between at_least and at_most days (inclusive) from their institution's today.

    Written as date ranges per group of zones, inside one range over all of
    them, so an index on `field` serves it in its own order.
    """
    groups = zone_days(now)

    def within(day: dt.date) -> Q:
        bounds = {}
        if at_least is not None:
            bounds[f"{field}__gte"] = day + dt.timedelta(days=at_least)
        if at_most is not None:
            bounds[f"{field}__lte"] = day + dt.timedelta(days=at_most)
        return Q(**bounds)

    envelope = Q()
    if at_least is not None:
        envelope &= Q(**{f"{field}__gte": groups[0][0] + dt.timedelta(days=at_least)})
    if at_most is not None:
        envelope &= Q(**{f"{field}__lte": groups[-1][0] + dt.timedelta(days=at_most)})
    per_zone = [zone_q(zones, prefix=prefix) & within(day) for day, zones in groups]
    return envelope & functools.reduce(operator.or_, per_zone)


def reminders_ended_sql(field: str, now: dt.datetime, *, prefix: str = "") -> Q:
    """Rows whose expiry in `field` is so long past, on their institution's today, that reminders have ended."""
    groups = zone_days(now)
    per_zone = [
        zone_q(zones, prefix=prefix) & Q(**{f"{field}__lt": earliest_expiry_still_reminded(day)})
        for day, zones in groups
    ]
    # The horizon moves with the day, so the zones' horizons lie between the earliest zone's and the latest's.
    # A row lapsed before the earliest zone's horizon has ended in every zone: only the day or two between
    # them need the zone test, whose lists of zone names cost per row (the /metrics scrape counts 100,000).
    earliest = earliest_expiry_still_reminded(groups[0][0])
    latest = earliest_expiry_still_reminded(groups[-1][0])
    return Q(**{f"{field}__lt": latest}) & (Q(**{f"{field}__lt": earliest}) | functools.reduce(operator.or_, per_zone))
