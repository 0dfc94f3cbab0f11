"""How dates, times and names are written wherever staff or customers read them: one rule, one place.

A day is "3 Dec 2026", a moment "3 Dec 2026, 05:25" (24-hour clock), a
month "Dec 2026". Moments are shown in the given time zone (the
institution's for customers), else the current one (the staff member's).
The template filters in credentials/templatetags/cd2_format.py call these.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo

from django.utils import timezone


def _local(value: dt.datetime, tz: str | dt.tzinfo | None) -> dt.datetime:
    if timezone.is_naive(value):
        return value
    if isinstance(tz, str):
        tz = zoneinfo.ZoneInfo(tz)
    return timezone.localtime(value, tz)


def format_day(value: dt.date | dt.datetime | None, tz: str | dt.tzinfo | None = None) -> str:
    """ "3 Dec 2026"; a datetime is first moved to `tz` (default: the current time zone)."""
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        value = _local(value, tz)
    return f"{value.day} {value:%b %Y}"


def format_moment(value: dt.datetime | None, tz: str | dt.tzinfo | None = None) -> str:
    """ "3 Dec 2026, 05:25" in `tz` (default: the current time zone)."""
    if value is None:
        return ""
    value = _local(value, tz)
    return f"{format_day(value)}, {value:%H:%M}"


def format_month(value: dt.date) -> str:
    """ "Dec 2026": a month never reads like a day ("Dec 26")."""
    return f"{value:%b %Y}"


def possessive(name: str) -> str:
    """ "Harbour City Schools'" and "Lakeside College's"."""
    name = (name or "").strip()
    return f"{name}'" if name.endswith(("s", "S")) else f"{name}'s"
