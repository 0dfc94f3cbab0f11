"""What every customer mail shares: link context, the .ics (the days themselves: credentials/days.py)."""

from __future__ import annotations

import datetime as dt
from urllib.parse import urlsplit

import icalendar
from django.conf import settings
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.translation import gettext

from credentials.days import institution_key_days, institution_zone
from credentials.formatting import format_day, recommended_expiry
from credentials.mail.recipients import mail_owner
from credentials.models import CD2Credential
from institutions.models import Institution

# The .ics's alarm rings this many days before the expiry date.
ICS_ALARM_DAYS_BEFORE = 7

# --------------------------------------------------------------------------
# Shared context
# --------------------------------------------------------------------------


def admin_url(institution: Institution) -> str:
    """The institution's page in the admin, or the admin index if it is not registered."""
    try:
        return settings.SITE_URL + reverse("admin:institutions_institution_change", args=[institution.pk])
    except NoReverseMatch:
        return settings.SITE_URL + "/admin/"


def link_context(*, institution: Institution, url: str, expires_at: dt.datetime) -> dict:
    """What every mail carrying a fresh submission link shows: the link, its end, the steps' settings."""
    return {
        "institution": institution,
        "link_url": url,
        "link_expires_on": timezone.localtime(expires_at, institution_zone(institution)).date(),
        "key_name": settings.CD2_KEY_NAME,
        "recommended_expiry": recommended_expiry(),
        "owner": mail_owner(institution),
    }


def expiry_calendar(*, credential: CD2Credential, now: dt.datetime) -> bytes | None:
    """An .ics file with the expiry date as an all-day event, or None once that date has passed.

    A calendar entry for a day gone by helps nobody; the alarm a week ahead
    is left out when the date is closer than that (it would ring at once).
    The UID is stable per key, so a calendar updates the event instead of
    adding one per reminder.
    """
    institution = credential.institution
    days = institution_key_days(institution, expires_on=credential.expires_on, now=now)
    if days.lapsed:
        return None
    host = urlsplit(settings.SITE_URL).hostname or "localhost"
    calendar = icalendar.Calendar()
    calendar.add("prodid", "-//EdPotential//CD2 key registry//EN")
    calendar.add("version", "2.0")
    calendar.add("method", "PUBLISH")
    event = icalendar.Event()
    event.add("uid", f"cd2-key-{credential.pk}@{host}")
    event.add("dtstamp", now)
    # Written in the active language: the reminder builds it inside its institution's.
    event.add("summary", gettext("Canvas Data 2 key for %(institution)s expires") % {"institution": institution.name})
    event.add("dtstart", credential.expires_on)
    event.add("dtend", credential.expires_on + dt.timedelta(days=1))
    event.add(
        "description",
        gettext(
            "The Canvas Data 2 key %(hint)s for %(institution)s expires on %(day)s. Create a new key at "
            "identity.instructure.com and hand it to %(sender)s with the link from our reminder email before then."
        )
        % {
            "hint": credential.hint,
            "institution": institution.name,
            "day": format_day(credential.expires_on),
            "sender": settings.REGISTRY_SENDER_NAME,
        },
    )
    event.add("transp", "TRANSPARENT")
    if days.days_left > ICS_ALARM_DAYS_BEFORE:
        alarm = icalendar.Alarm()
        alarm.add("action", "DISPLAY")
        alarm.add(
            "description",
            gettext("Canvas Data 2 key for %(institution)s expires in a week") % {"institution": institution.name},
        )
        alarm.add("trigger", dt.timedelta(days=-ICS_ALARM_DAYS_BEFORE))
        event.add_component(alarm)
    calendar.add_component(event)
    return calendar.to_ical()
