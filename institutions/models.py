from __future__ import annotations

import functools
import unicodedata
import zoneinfo

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import models
from django.db.models.functions import Lower, Upper

# A Canvas host name such as school.instructure.com or canvas.school.edu:
# lower-case labels separated by dots, no scheme, path or port.
canvas_domain_validator = RegexValidator(
    regex=r"\A(?=.{4,253}\Z)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}\Z",
    message=("Enter the Canvas host name only, for example school.instructure.com (no https://, no path)."),
)


def email_key(address: str) -> str:
    """The one comparison form of an email address: Unicode NFKC, then case folding, trimmed.

    Used wherever two addresses are compared: the "lost the link?" rate
    limit, the contact lookup, "is this address on file?" and de-duplicating
    recipients. NFKC turns compatibility look-alikes into their plain letter
    (the Kelvin sign K into K, fullwidth letters into ASCII) and casefold()
    is full Unicode case folding (ſ into s), so every spelling that reaches
    the same contact shares one key. Letters that only *look* alike but are
    different letters (dotless ı) keep different keys, and a lookup by key
    never matches them to a contact, unlike the database's UPPER(), which
    turns ı into I. Addresses are stored as typed (NFKC only, stripped):
    the key is for comparing, never for sending.
    """
    return unicodedata.normalize("NFKC", address or "").casefold().strip()


def email_for_storage(address: str) -> str:
    """An address as we keep it: NFKC and stripped, case as typed (a mailbox's local part may be case-sensitive)."""
    return unicodedata.normalize("NFKC", address or "").strip()


@functools.cache
def time_zone_names() -> frozenset[str]:
    """The IANA zone names this machine knows, read once per process.

    zoneinfo.available_timezones() walks the zone folder on every call (about
    15 ms, 600 files): once per imported row made a 500-row import spend most
    of its time listing files.
    """
    return frozenset(zoneinfo.available_timezones())


def validate_timezone(value: str) -> None:
    if value not in time_zone_names():
        raise ValidationError(
            f"{value!r} is not a time zone name. Use an IANA name such as America/Chicago or Europe/London."
        )


class KeyState(models.TextChoices):
    """An institution's key in a word: the one vocabulary of the model, the admin, the API, the digest and the mails.

    The institution's stored summary (Institution.key_condition) holds the
    states that do not move with the calendar (STORED_KEY_STATES); expiring
    and expired are an ok key's expiry read on a given day
    (credentials.selectors.key_state_case).
    """

    OK = "ok", "Active"
    EXPIRING = "expiring", "Expiring"
    EXPIRED = "expired", "Expired"
    FAILING = "failing", "Failing check"
    PENDING = "pending", "Pending check"
    MISSING = "missing", "Missing"
    # The registry can no longer read the institution's key (FERNET_KEYS lost
    # for good, `manage.py mark_keys_lost`): the key still works at
    # Instructure, but we must ask for a new one.
    LOST = "lost", "Lost: ask for a new key"


# The key states by urgency, for sorting: what customer success acts on first.
KEY_STATES_BY_URGENCY = (
    KeyState.EXPIRED,
    KeyState.FAILING,
    KeyState.LOST,
    KeyState.MISSING,
    KeyState.EXPIRING,
    KeyState.PENDING,
    KeyState.OK,
)

# "No working key": the states in which the pipeline cannot pull with the key
# on file. The one rule the dashboard and the staff digest count by
# (credentials.selectors.institutions_without_working_key).
NO_WORKING_KEY_STATES = (KeyState.EXPIRED, KeyState.FAILING, KeyState.PENDING, KeyState.MISSING, KeyState.LOST)

# The key states stored on the institution: the ones the date does not change.
STORED_KEY_STATES = (KeyState.OK, KeyState.PENDING, KeyState.FAILING, KeyState.MISSING, KeyState.LOST)


class Institution(models.Model):
    class Status(models.TextChoices):
        ONBOARDING = "onboarding", "Onboarding"
        ACTIVE = "active", "Active"
        PAUSED = "paused", "Paused"
        OFFBOARDED = "offboarded", "Offboarded"

    # Only these receive reminders and key checks; paused and offboarded
    # institutions must not be mailed about a key we no longer use.
    SERVED_STATUSES = (Status.ONBOARDING, Status.ACTIVE)

    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=80, unique=True)
    canvas_domain = models.CharField(
        max_length=253,
        validators=[canvas_domain_validator],
        help_text="The institution's Canvas host, e.g. school.instructure.com.",
    )
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.ONBOARDING)
    timezone = models.CharField(
        max_length=64,
        default="UTC",
        validators=[validate_timezone],
        help_text="Dates in emails are shown in this time zone.",
    )
    # English unless staff choose another. Not guessed from the region of the
    # institution's CD2 key: no region names one language (ca-central-1 serves
    # bilingual Canada, us-east-1 Spanish-speaking districts as well as others).
    language = models.CharField(
        max_length=10,
        choices=settings.LANGUAGES,
        default=settings.LANGUAGE_CODE,
        # In the table too: rows written by code that predates the field (older migrations' models) get English.
        db_default=settings.LANGUAGE_CODE,
        help_text="The language of the mails its contacts receive (the page follows their browser).",
    )
    account_owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="owned_institutions",
        help_text=(
            "The staff member responsible for this customer: Reply-To on customer mail, "
            "and a daily summary of their institutions."
        ),
    )
    notes = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # Also moved by the key services whenever the institution's key changes
    # (new, activated, revoked, invalid): the API's changed_at, so indexed.
    updated_at = models.DateTimeField(auto_now=True, db_index=True)

    # The current key's summary, for the staff list to sort and filter with an
    # index instead of a join (issue 14 item 8). Written only by the key
    # services (credentials.services.keys.institution_key_summary_refresh) in
    # the transaction that changes the key; `manage.py check_key_summary`
    # finds drift. Expired is not stored: it is key_expires_on before today.
    key_condition = models.CharField(
        max_length=10,
        choices=[(state.value, state.label) for state in STORED_KEY_STATES],
        default=KeyState.MISSING,
        db_default=KeyState.MISSING,
        editable=False,
    )
    # The active key's id: a plain number, not a foreign key, so that institutions depends on nothing in credentials.
    key_pk = models.PositiveBigIntegerField(null=True, blank=True, editable=False, help_text="The active key's id.")
    key_expires_on = models.DateField(null=True, blank=True, editable=False, help_text="The active key's expiry.")
    key_checked_at = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="When the active key was last checked against CD2."
    )
    key_region = models.CharField(max_length=40, blank=True, default="", db_default="", editable=False)
    # A reminder was sent about the active key and no key came since (the list's "reminded, no new key
    # yet"): also rewritten by the reminder service when it marks a reminder sent.
    key_reminded_unanswered = models.BooleanField(default=False, db_default=False, editable=False)

    class Meta:
        ordering = ("name",)
        indexes = [
            # The staff list's default order (soonest expiry first, no key last, then name)
            # and its expiry filters, which are ranges of key_expires_on.
            models.Index(fields=("key_expires_on", "name"), name="institution_key_expiry"),
            # The check filters (failing, pending, missing) in the same order.
            models.Index(fields=("key_condition", "key_expires_on", "name"), name="institution_key_condition"),
            # The region filter, and its list of regions in use (one probe per region).
            models.Index(fields=("key_region", "key_expires_on", "name"), name="institution_key_region"),
            # Rare rows that sit at the end of the expiry order (no active key, or never checked): without
            # these, a page of them walks the whole expiry index to find its 50 rows.
            models.Index(
                fields=("key_expires_on", "name"),
                condition=models.Q(key_condition__in=("missing", "pending")),
                name="institution_key_not_working",
            ),
            models.Index(
                fields=("key_expires_on", "name"),
                condition=models.Q(key_checked_at__isnull=True),
                name="institution_key_never_checked",
            ),
            models.Index(
                fields=("key_expires_on", "name"),
                condition=models.Q(key_reminded_unanswered=True),
                name="institution_key_reminded",
            ),
        ]
        permissions = [("export_institutions", "Can export the institution list (audited)")]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if self.canvas_domain:
            self.canvas_domain = self.canvas_domain.strip().lower()

    def is_served(self) -> bool:
        return self.status in self.SERVED_STATUSES


class Contact(models.Model):
    class Role(models.TextChoices):
        CANVAS_ADMIN = "canvas_admin", "Canvas admin"
        IT_SECURITY = "it_security", "IT / security"
        DATA_LEAD = "data_lead", "Data or analytics lead"
        OTHER = "other", "Other"

    institution = models.ForeignKey(Institution, on_delete=models.CASCADE, related_name="contacts")
    name = models.CharField(max_length=200)
    email = models.EmailField()
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.CANVAS_ADMIN)
    receives_reminders = models.BooleanField(
        default=True, help_text="Send this person the expiry reminders and new submission links."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("name",)
        constraints = [
            models.UniqueConstraint("institution", Lower("email"), name="one_contact_per_email_per_institution"),
        ]
        indexes = [
            # "Lost the link?" finds an address among every institution's
            # contacts with email__iexact, which Django writes UPPER(email) =
            # UPPER(%s): this index serves exactly that (the constraint above
            # leads with the institution, so it cannot).
            models.Index(Upper("email"), name="contact_email_iexact"),
        ]

    def __str__(self) -> str:
        return f"{self.name} <{self.email}>"

    def clean(self) -> None:
        self.email = email_for_storage(self.email)
