"""Who receives what, and what every customer mail shares.

One owner rule (an account owner is mailed only while their user is active
and has an address), one rule for reminders and "your key stopped working"
(the institution's contacts who receive reminders, Reply-To the owner; the
owner alone when there are none), the shared context of link
mails, the dates in the institution's time zone and the .ics attachment.
"""

from __future__ import annotations

import datetime as dt
import smtplib
import zoneinfo
from collections.abc import Iterable
from urllib.parse import urlsplit

import icalendar
from django.conf import settings
from django.urls import NoReverseMatch, reverse
from django.utils import timezone

from credentials.formatting import format_day
from credentials.models import CD2Credential
from institutions.models import Contact, Institution, email_key

# Errors worth retrying: the mail server or the network, not our templates.
# (ConnectionError and TimeoutError are OSErrors.)
SEND_ERRORS: tuple[type[Exception], ...] = (smtplib.SMTPException, OSError)


# --------------------------------------------------------------------------
# Recipients
# --------------------------------------------------------------------------


def unique_addresses(addresses: Iterable[str]) -> list[str]:
    """Addresses stripped, blanks dropped, each once (by institutions.models.email_key), in the order given."""
    seen: dict[str, str] = {}
    for address in addresses:
        address = (address or "").strip()
        if address and email_key(address) not in seen:
            seen[email_key(address)] = address
    return list(seen.values())


def without(addresses: Iterable[str], *, excluded: Iterable[str]) -> list[str]:
    """`addresses` minus those (by email_key) in `excluded`."""
    drop = {email_key(address) for address in excluded}
    return [address for address in unique_addresses(addresses) if email_key(address) not in drop]


def owner_email(institution: Institution) -> str:
    """The account owner's address, or "" when there is none to mail (no owner, deactivated, no address)."""
    owner = institution.account_owner
    if owner is None or not owner.is_active:
        return ""
    return (owner.email or "").strip()


def reply_to(institution: Institution) -> list[str]:
    """Reply-To of customer mail: the account owner, so a customer's question reaches a person."""
    owner = owner_email(institution)
    return [owner] if owner else []


def mail_owner(institution: Institution):
    """The owner to name in a mail's footer, or None when they are not mailed (owner_email's rule)."""
    return institution.account_owner if owner_email(institution) else None


def contact_emails(institution: Institution) -> list[str]:
    """Addresses of the contacts who receive reminders and new links (a prefetched list is used if set)."""
    contacts = getattr(institution, "reminder_contacts", None)
    if contacts is None:
        contacts = Contact.objects.filter(institution=institution, receives_reminders=True).order_by("pk")
    return unique_addresses(contact.email for contact in contacts)


def link_recipients(*, institution: Institution) -> list[str]:
    """Who may receive a new submission link: the contacts on file who receive reminders, and the account owner.

    The one rule for every mail that carries a link. Never an address typed
    into a form: a link is a key to the institution's page, so it goes only
    to people staff put on file.
    """
    return unique_addresses([*contact_emails(institution), owner_email(institution)])


def is_on_file(*, institution: Institution, address: str) -> bool:
    """The address is one link_recipients would mail."""
    key = email_key(address)
    return bool(key) and key in {email_key(a) for a in link_recipients(institution=institution)}


def key_conflict_recipients(*, institutions: Iterable[Institution]) -> list[str]:
    """Who hears of one key handed over for two institutions: each institution's account owner.

    Without an owner to mail, the staff digest's recipients, so a possible
    mix-up never goes unnoticed.
    """
    owners = unique_addresses(owner_email(institution) for institution in institutions)
    return owners or unique_addresses(settings.STAFF_DIGEST_RECIPIENTS)


def reminder_addressees(*, institution: Institution) -> list[str]:
    """Who a reminder or "your key stopped working" goes to: the contacts who receive reminders, else the owner.

    The owner is not copied: they hear of their institutions once a day in
    their summary (services/owners.py) and get the replies (Reply-To).
    [] means nobody can be told.
    """
    to = contact_emails(institution)
    if to:
        return to
    owner = owner_email(institution)
    return [owner] if owner else []


# --------------------------------------------------------------------------
# Dates and shared context
# --------------------------------------------------------------------------


def institution_zone(institution: Institution) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(institution.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return zoneinfo.ZoneInfo("UTC")


def institution_today(institution: Institution, now: dt.datetime) -> dt.date:
    """The date it is for the institution's readers: days in the email count from it."""
    return now.astimezone(institution_zone(institution)).date()


def admin_url(institution: Institution) -> str:
    """The institution's page in the admin, or the admin index if it is not registered."""
    try:
        return settings.SITE_URL + reverse("admin:institutions_institution_change", args=[institution.pk])
    except NoReverseMatch:
        return settings.SITE_URL + "/admin/"


def expiry_phrase(days_left: int) -> str:
    """ "expires in 14 days", "expires today", "expired 7 days ago" ..."""
    if days_left > 1:
        return f"expires in {days_left} days"
    if days_left == 1:
        return "expires tomorrow"
    if days_left == 0:
        return "expires today"
    if days_left == -1:
        return "expired yesterday"
    return f"expired {-days_left} days ago"


def link_context(*, institution: Institution, url: str, expires_at: dt.datetime) -> dict:
    """What every mail carrying a fresh submission link shows: the link, its end, the steps' settings."""
    return {
        "institution": institution,
        "link_url": url,
        "link_expires_on": timezone.localtime(expires_at, institution_zone(institution)).date(),
        "key_name": settings.CD2_KEY_NAME,
        "recommended_expiry": settings.CD2_RECOMMENDED_EXPIRY,
        "owner": mail_owner(institution),
    }


def expiry_calendar(*, credential: CD2Credential, now: dt.datetime) -> bytes:
    """An .ics file with the expiry date as an all-day event and an alarm a week ahead.

    The UID is stable per key, so a calendar updates the event instead of
    adding one per reminder.
    """
    institution = credential.institution
    host = urlsplit(settings.SITE_URL).hostname or "localhost"
    calendar = icalendar.Calendar()
    calendar.add("prodid", "-//EdPotential//CD2 key registry//EN")
    calendar.add("version", "2.0")
    calendar.add("method", "PUBLISH")
    event = icalendar.Event()
    event.add("uid", f"cd2-key-{credential.pk}@{host}")
    event.add("dtstamp", now)
    event.add("summary", f"Canvas Data 2 key for {institution.name} expires")
    event.add("dtstart", credential.expires_on)
    event.add("dtend", credential.expires_on + dt.timedelta(days=1))
    event.add(
        "description",
        f"The Canvas Data 2 key {credential.hint} for {institution.name} expires on "
        f"{format_day(credential.expires_on)}. Create a new key at identity.instructure.com "
        f"and hand it to EdPotential with the link from our reminder email before then.",
    )
    event.add("transp", "TRANSPARENT")
    alarm = icalendar.Alarm()
    alarm.add("action", "DISPLAY")
    alarm.add("description", f"Canvas Data 2 key for {institution.name} expires in a week")
    alarm.add("trigger", dt.timedelta(days=-7))
    event.add_component(alarm)
    calendar.add_component(event)
    return calendar.to_ical()


def drop_connection(connection) -> None:
    """Close a shared mail connection after a failed send, so the next send opens a fresh one.

    A server that hung up leaves the backend holding a dead socket; without
    this every later message of the page would fail on it too.
    """
    if connection is None:
        return
    try:
        connection.close()
    except SEND_ERRORS:
        pass  # the SMTP backend forgets the socket even when QUIT fails
