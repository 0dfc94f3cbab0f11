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

In another language than English (a customer's page or mail in French or
Spanish, settings.LANGUAGES) the same four are written as that language
writes them, with Django's locale formats: "14 mars 2027", "dimanche 14 mars
2027", "14 mars 2027, 05:25", "mars 2027" ("14 de marzo de 2027" ...). The
staff site is always in English, so what staff read does not change.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo

from django.conf import settings
from django.utils import formats, timezone, translation
from django.utils.translation import pgettext_lazy


def _in_english() -> bool:
    return (translation.get_language() or settings.LANGUAGE_CODE).startswith("en")


def _local(value: dt.datetime, tz: str | dt.tzinfo | None) -> dt.datetime:
    if timezone.is_naive(value):
        return value
    if isinstance(tz, str):
        tz = zoneinfo.ZoneInfo(tz)
    return timezone.localtime(value, tz)


def _day_text(value: dt.date) -> str:
    # A datetime already in the zone it is read in: its own date, not moved again.
    if not _in_english():
        return formats.date_format(dt.date(value.year, value.month, value.day), "DATE_FORMAT")
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
    if not _in_english():
        return f"{formats.date_format(dt.date(value.year, value.month, value.day), 'l')} {_day_text(value)}"
    return f"{value:%A} {_day_text(value)}"


def format_moment(value: dt.datetime | None, tz: str | dt.tzinfo | None = None, *, with_zone: bool = False) -> str:
    """ "3 Dec 2026, 05:25" in `tz` (default: the current time zone); with_zone adds its abbreviation ("NZDT")."""
    if value is None:
        return ""
    value = _local(value, tz)
    # 24-hour "07:30" in every language (Django's fr_CA TIME_FORMAT writes its "h" as an hour: "07 07 30").
    text = f"{_day_text(value)}, {value:%H:%M}"
    if with_zone and value.tzinfo is not None:
        text += f" {value:%Z}"
    return text


def format_month(value: dt.date) -> str:
    """ "Dec 2026": a month never reads like a day ("Dec 26")."""
    if not _in_english():
        return formats.date_format(dt.date(value.year, value.month, 1), "YEAR_MONTH_FORMAT")
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


def recommended_expiry() -> str:
    """settings.CD2_RECOMMENDED_EXPIRY in the reader's language, read when shown ("1 year", "1 an", "1 año").

    The setting names one of the periods Instructure offers (credentials.forms.EXPIRY_PERIODS,
    whose labels the catalogues translate with the context "expiry period"); any other
    text is shown as staff wrote it.
    """
    return pgettext_lazy("expiry period", settings.CD2_RECOMMENDED_EXPIRY)


def html_lang(language: str) -> str:
    """A language code as HTML's lang attribute writes it (BCP 47): "fr-ca" is "fr-CA", "en-gb" "en-GB"."""
    return translation.to_locale(language).replace("_", "-")


# ---------------------------------------------------------------------------
# A mail send error in words
# ---------------------------------------------------------------------------
# What a notice's last_error holds is the exception as the outbox recorded it
# ("SMTPRecipientsRefused: {'a@b': (550, b'5.1.1 User unknown')}"); staff read
# this instead, and the raw text stays on the notice's own page. Ours, not a
# library's: the SMTP reply codes (RFC 5321 section 4.2, enhanced codes RFC 3463)
# are few and the wording is the registry's.
_SMTP_REPLY = re.compile(r"\(\s*(?P<code>\d{3})\s*,\s*b?['\"](?P<text>[^'\"]*)['\"]")
_ENHANCED_CODE = re.compile(r"^\s*\d\.\d{1,3}\.\d{1,3}\s*")
_EXCEPTION_NAME = re.compile(
    r"^(?P<name>[A-Za-z_][\w.]*(?:Error|Exception|Refused|Disconnected|Timeout|timeout))\b:?\s*"
)
_REPLY_WORDS = {
    "550": "the address was refused",
    "551": "the address was refused",
    "553": "the address was refused",
    "552": "the mailbox is full",
    "452": "the mailbox is full for now",
    "450": "the mailbox is unavailable for now",
    "421": "the mail server is busy",
    "451": "the mail server had a local error",
    "554": "the mail server refused the message",
}
_EXCEPTION_WORDS = {
    "SMTPRecipientsRefused": "the address was refused",
    "SMTPSenderRefused": "the mail server refused our sender address",
    "SMTPDataError": "the mail server refused the message",
    "SMTPAuthenticationError": "the mail server refused our sign-in (check EMAIL_URL)",
    "SMTPServerDisconnected": "the mail server closed the connection",
    "SMTPConnectError": "the mail server could not be reached",
    "ConnectionRefusedError": "the mail server could not be reached",
    "ConnectionResetError": "the mail server closed the connection",
    "TimeoutError": "the mail server did not answer in time",
    "timeout": "the mail server did not answer in time",
    "socket.timeout": "the mail server did not answer in time",
    "gaierror": "the mail server's name could not be looked up",
    "SSLError": "the secure connection to the mail server failed",
    "OSError": "the mail server could not be reached",
}


def send_error_words(raw: str) -> str:
    """A notice's recorded send error for people: "the address was refused: user unknown".

    Text that is not an exception (a reason written in words, "Not sent: ...")
    is returned as it is; an exception we do not know reads "sending failed"
    with the server's reply, if it gave one.
    """
    raw = (raw or "").strip()
    if not raw:
        return ""
    name_match = _EXCEPTION_NAME.match(raw)
    reply = _SMTP_REPLY.search(raw)
    if name_match is None and reply is None:
        return raw
    name = name_match.group("name").rsplit(".", 1)[-1] if name_match else ""
    words = ""
    detail = ""
    if reply is not None:
        words = _REPLY_WORDS.get(reply.group("code"), "")
        detail = _ENHANCED_CODE.sub("", reply.group("text")).strip().rstrip(".").lower()
    words = words or _EXCEPTION_WORDS.get(name, "")
    if not words and name_match is not None and reply is None:
        # An error of ours already in words after its class name ("Could not connect to the receiver ...").
        return raw[name_match.end() :].strip() or "sending failed"
    words = words or "sending failed"
    return f"{words}: {detail}" if detail else words
