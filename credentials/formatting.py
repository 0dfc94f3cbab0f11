"""How dates, times and names are written wherever staff or customers read them: one rule, one place.

A day is "3 Dec 2026" ("Thursday 3 Dec 2026" in a sentence of a customer's
mail, where the weekday helps to plan), a moment "3 Dec 2026, 05:25"
(24-hour clock), a month "Dec 2026". Moments are shown in the given time
zone (the institution's for customers, then with the zone's abbreviation),
else the current one (the staff member's, see credentials/middleware.py).
The template filters in credentials/templatetags/cd2_format.py (a builtin
library: no {% load %} needed) call these, and Django's own date display in
the admin follows the same formats (edpotential/formats). Machine formats
(ISO 8601 in CSV, JSON, the API, .ics) are not for people and stay as they are.
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


def _day_text(value: dt.date) -> str:
    # A datetime already in the zone it is read in: its own date, not moved again.
    return f"{value.day} {value:%b %Y}"


def format_day(value: dt.date | dt.datetime | None, tz: str | dt.tzinfo | None = None) -> str:
    """ "3 Dec 2026"; a datetime is first moved to `tz` (default: the current time zone)."""
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        value = _local(value, tz)
    return _day_text(value)


def format_weekday(value: dt.date | dt.datetime | None, tz: str | dt.tzinfo | None = None) -> str:
    """ "Thursday 3 Dec 2026"."""
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        value = _local(value, tz)
    return f"{value:%A} {_day_text(value)}"


def format_moment(value: dt.datetime | None, tz: str | dt.tzinfo | None = None, *, with_zone: bool = False) -> str:
    """ "3 Dec 2026, 05:25" in `tz` (default: the current time zone); with_zone adds its abbreviation ("NZDT")."""
    if value is None:
        return ""
    value = _local(value, tz)
    text = f"{_day_text(value)}, {value:%H:%M}"
    if with_zone and value.tzinfo is not None:
        text += f" {value:%Z}"
    return text


def format_month(value: dt.date) -> str:
    """ "Dec 2026": a month never reads like a day ("Dec 26")."""
    return f"{value:%b %Y}"


def possessive(name: str) -> str:
    """ "Harbour City Schools'" and "Lakeside College's"."""
    name = (name or "").strip()
    return f"{name}'" if name.endswith(("s", "S")) else f"{name}'s"


def masked_address(address: str) -> str:
    """An address as a page may show it to someone who is not signed in: "a•••@northfield.edu".

    The first letter of the mailbox and the whole domain: enough for a
    customer to know which of their colleagues got a mail, too little to
    learn an address from.
    """
    local, at, domain = (address or "").strip().rpartition("@")
    if not at or not local:
        return "•••"
    return f"{local[0]}•••@{domain}"
