"""The one validation path for a key, used by every way a key enters.

The public page, the admin form and imports all call `validate_key_input`,
so a key that one door refuses no other door accepts. Every message says
what to do next.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.utils.translation import gettext, gettext_lazy

from credentials.fields import client_id_index

# The official client reads the region with ([\w-]+)#([\w-]+); we require the
# whole value to match (ASCII only) instead of falling back to "Unknown".
CLIENT_ID_RE = re.compile(r"([\w-]+)#([\w-]+)", re.ASCII)
CLIENT_ID_EXAMPLE = "us-east-1#0a1b2c3d-4e5f-6789-abcd-ef0123456789"
MAX_CLIENT_ID_LENGTH = 200
# Secrets are opaque; this only stops a pasted page or file.
MAX_SECRET_LENGTH = 1000
# Instructure offers keys of up to 3 years; a few days of slack covers time
# zones and a key created a day or two before it was handed to us.
MAX_KEY_LIFETIME = dt.timedelta(days=3 * 365 + 7)
# The page asks for a key of at least a year; one ending sooner than this is
# accepted only when the submitter confirms it was meant (Instructure also
# offers 1 day, 1 week, 1 month), and staff see "short expiry" on it.
SHORT_EXPIRY_MONTHS = 6
SHORT_EXPIRY_MESSAGE = gettext_lazy(
    "This key expires in less than {months} months, so you would need to make another one soon. "
    "Instructure offers 1 year or longer under Expiry; a longer key means fewer interruptions. "
    "If you chose the short expiry on purpose, tick the box to confirm and submit again."
)


@dataclass(frozen=True)
class CleanKey:
    client_id: str
    secret: str
    expires_on: dt.date

    @property
    def region(self) -> str:
        return client_id_region(self.client_id)

    @property
    def hint(self) -> str:
        return client_id_hint(self.client_id)

    @property
    def index(self) -> str:
        """The Client ID's blind index (fields.client_id_index)."""
        return client_id_index(self.client_id)

    def __repr__(self) -> str:
        # The default dataclass repr would print the secret in tracebacks.
        return f"CleanKey(hint={self.hint!r}, expires_on={self.expires_on!r})"


def client_id_region(client_id: str) -> str:
    return client_id.split("#", 1)[0]


def client_id_hint(client_id: str) -> str:
    """Region and the last 4 characters of the Client ID: enough to tell keys apart."""
    return f"{client_id_region(client_id)} …{client_id[-4:]}"


def add_months(start: dt.date, months: int) -> dt.date:
    """start plus whole calendar months; 31 Aug + 6 months is the last day of February."""
    month_index = start.month - 1 + months
    year, month = start.year + month_index // 12, month_index % 12 + 1
    return dt.date(year, month, min(start.day, calendar.monthrange(year, month)[1]))


def is_short_expiry(expires_on: dt.date, *, today: dt.date) -> bool:
    return expires_on < add_months(today, SHORT_EXPIRY_MONTHS)


def clean_client_id(value: object) -> str:
    client_id = str(value or "").strip()
    if not client_id:
        raise ValidationError(
            gettext(
                "Enter the Client ID. It is shown with the Secret in the “Reveal OAuth Credentials” "
                "window at identity.instructure.com."
            ),
            code="required",
        )
    if len(client_id) > MAX_CLIENT_ID_LENGTH or not CLIENT_ID_RE.fullmatch(client_id):
        raise ValidationError(
            gettext(
                "This is not a Canvas Data 2 Client ID. A Client ID is a region, a # sign and an ID, "
                "for example %(example)s. Copy the whole value, including the part before the #."
            )
            % {"example": CLIENT_ID_EXAMPLE},
            code="client_id_format",
        )
    return client_id


def clean_secret(value: object) -> str:
    # The value is never put in a message: messages are shown, logged and mailed.
    secret = str(value or "").strip()
    if not secret:
        raise ValidationError(
            gettext(
                "Enter the Secret. Instructure shows it only once, next to the Client ID; "
                "if that window is closed, create a new key."
            ),
            code="required",
        )
    if any(ch.isspace() for ch in secret):
        raise ValidationError(
            gettext(
                "The Secret contains a space or a line break. Copy it again in one piece "
                "(the copy button next to it at identity.instructure.com does this)."
            ),
            code="secret_whitespace",
        )
    if len(secret) > MAX_SECRET_LENGTH or not secret.isascii() or not secret.isprintable():
        raise ValidationError(
            gettext(
                "This is not a Canvas Data 2 Secret: it has characters a Secret never has, or is far too "
                "long. Copy only the Secret from the “Reveal OAuth Credentials” window."
            ),
            code="secret_format",
        )
    return secret


def clean_expires_on(value: object, *, today: dt.date) -> dt.date:
    if value in (None, ""):
        raise ValidationError(
            gettext("Enter the key's expiry date: the date shown for the key at identity.instructure.com."),
            code="required",
        )
    if isinstance(value, dt.datetime):
        value = value.date()
    if not isinstance(value, dt.date):
        try:
            value = dt.date.fromisoformat(str(value).strip())
        except ValueError:
            raise ValidationError(
                gettext("Enter the expiry date as a date, for example 2027-11-26."), code="invalid"
            ) from None
    if value <= today:
        raise ValidationError(
            gettext(
                "This expiry date is not in the future, so the key is no longer usable. Check the date "
                "shown at identity.instructure.com, or create a new key."
            ),
            code="expires_in_past",
        )
    if value - today > MAX_KEY_LIFETIME:
        raise ValidationError(
            gettext(
                "Instructure keys last at most 3 years, so this date cannot be right. Enter the expiry "
                "date shown for the key at identity.instructure.com."
            ),
            code="expires_too_far",
        )
    return value


def validate_key_input(
    *, client_id: object, secret: object, expires_on: object, today: dt.date, short_expiry_confirmed: bool = True
) -> CleanKey:
    """Clean all three values; raise one ValidationError keyed by field with every problem.

    A valid expiry under SHORT_EXPIRY_MONTHS needs short_expiry_confirmed
    (error code "short_expiry" on the field confirm_short_expiry).
    """
    errors: dict[str, list[ValidationError]] = {}
    cleaned: dict[str, object] = {}
    for field, clean in (
        ("client_id", clean_client_id),
        ("secret", clean_secret),
        ("expires_on", lambda v: clean_expires_on(v, today=today)),
    ):
        try:
            cleaned[field] = clean({"client_id": client_id, "secret": secret, "expires_on": expires_on}[field])
        except ValidationError as exc:
            errors[field] = exc.error_list
    if "client_id" in cleaned and "secret" in cleaned and cleaned["client_id"] == cleaned["secret"]:
        errors["secret"] = [
            ValidationError(
                gettext(
                    "The Secret is the same as the Client ID. Paste the Secret, the second value in the "
                    "“Reveal OAuth Credentials” window."
                ),
                code="secret_is_client_id",
            )
        ]
    if "expires_on" in cleaned and not short_expiry_confirmed and is_short_expiry(cleaned["expires_on"], today=today):
        errors["confirm_short_expiry"] = [
            ValidationError(SHORT_EXPIRY_MESSAGE.format(months=SHORT_EXPIRY_MONTHS), code="short_expiry")
        ]
    if errors:
        raise ValidationError(errors)
    return CleanKey(**cleaned)
