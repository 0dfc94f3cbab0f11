from __future__ import annotations

import datetime as dt
import hashlib

from django.conf import settings
from django.core.exceptions import ObjectDoesNotExist
from django.db import models
from django.db.models import Q
from django.utils import timezone

from credentials.cd2 import Verdict
from credentials.expressions import DaysUntil, expiry_state_case
from credentials.fields import EncryptedTextField
from credentials.formatting import format_day, format_moment, send_error_words
from credentials.validators import is_short_expiry
from institutions.models import validate_timezone

# The encrypted columns: rows read for display, mail or scans leave them out,
# so a Secret is decrypted only by the code that uses it.
SECRET_FIELDS = ("client_id", "secret")


def secret_fields_of(relation: str) -> tuple[str, ...]:
    """The encrypted columns reached through `relation`, for .defer() on another model's query."""
    return tuple(f"{relation}__{name}" for name in SECRET_FIELDS)


class CredentialQuerySet(models.QuerySet):
    def without_secrets(self):
        return self.defer(*SECRET_FIELDS)

    def active(self):
        return self.filter(status=CD2Credential.Status.ACTIVE)

    def with_expiry(self, *, today: dt.date):
        """Annotate days_left and expiry_state (ok, expiring, expired) in SQL, no Python loop over rows."""
        return self.annotate(
            days_left=DaysUntil("expires_on", today),
            expiry_state=expiry_state_case(field="expires_on", today=today),
        )


# What a check against CD2 found (credentials.cd2.Verdict), as a column.
VERDICT_CHOICES = [
    (Verdict.OK.value, "OK"),
    (Verdict.REJECTED.value, "Rejected (wrong Client ID or Secret)"),
    (Verdict.FORBIDDEN.value, "Forbidden (no Canvas Data 2 access)"),
    (Verdict.UNAVAILABLE.value, "Gateway unavailable (not a verdict on the key)"),
]
# The short words for a column ("Rejected"); the choice label explains.
VERDICT_LABELS = {value: label.split(" (")[0] for value, label in VERDICT_CHOICES}
# Verdicts that say the key itself does not work.
# The statuses of a key by urgency, for sorting the keys list: the ones staff act on first.
KEY_STATUSES_BY_URGENCY = ("invalid", "lost", "pending_verification", "active", "revoked", "superseded")
FAILED_VERDICTS = (Verdict.REJECTED.value, Verdict.FORBIDDEN.value)


class PendingReason(models.TextChoices):
    """Why a key is stored pending_verification instead of checked: none of these is a verdict on the key."""

    # 403 AccountNotOnboarded, AccountDisabled, RequestTypeForbidden: the key
    # is real, CD2 is not enabled; the customer asks Instructure, no new key.
    NOT_ENABLED = "not_enabled", "Canvas Data 2 not enabled (403)"
    # 403 AccountUnderMaintenance: Instructure's side, it passes.
    MAINTENANCE = "maintenance", "Account under maintenance at Instructure (403)"
    # 5xx, 429, timeouts, connection errors.
    UNAVAILABLE = "unavailable", "Gateway unavailable"


class CD2Credential(models.Model):
    """One Canvas Data 2 key as the customer created it at identity.instructure.com.

    Keys are never edited in place: a new key supersedes the old one, which
    stays as history.
    """

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        PENDING_VERIFICATION = "pending_verification", "Pending verification"
        SUPERSEDED = "superseded", "Superseded"
        REVOKED = "revoked", "Revoked"
        INVALID = "invalid", "Invalid"
        # Unreadable for good (FERNET_KEYS lost): its Client ID and Secret are
        # wiped (credentials.services.lost_keys); a new key must be asked for.
        LOST = "lost", "Lost: ask for a new key"

    class KeyType(models.TextChoices):
        INSTITUTIONAL = "institutional", "Institutional Use"
        PARTNER = "partner", "Instructure Partner"

    class Source(models.TextChoices):
        LINK = "link", "Submission link"
        ADMIN = "admin", "Entered by staff"
        IMPORT = "import", "Import"

    institution = models.ForeignKey("institutions.Institution", on_delete=models.PROTECT, related_name="credentials")
    # NULL only on a key whose ciphertext no key could read any more and an
    # operator marked lost (mark_keys_lost): the value is gone, not hidden.
    client_id = EncryptedTextField(null=True)
    secret = EncryptedTextField(null=True)
    # HMAC of the Client ID (fields.client_id_index): what the uniqueness
    # constraint below compares. NULL only on rows older than migration 0005
    # that no configured key could decrypt.
    client_id_index = models.CharField(max_length=64, null=True, blank=True, editable=False)  # noqa: DJ001 (NULL: no index, never a conflict)
    # True only on rows that migration 0005 found sharing a Client ID with an
    # older row: kept as they were, exempt from the constraint, and reported
    # by the system check credentials.W002 when the institutions differ.
    client_id_index_duplicate = models.BooleanField(default=False, db_default=False, editable=False)
    region = models.CharField(max_length=40, help_text="Parsed from the Client ID, e.g. us-east-1.")
    hint = models.CharField(max_length=60, help_text="Region and the last 4 characters of the Client ID: safe to show.")
    key_name = models.CharField(max_length=100, blank=True)
    key_type = models.CharField(max_length=20, choices=KeyType.choices, default=KeyType.INSTITUTIONAL)
    expires_on = models.DateField(help_text="The expiry date the customer chose for this key.")
    status = models.CharField(max_length=24, choices=Status.choices, default=Status.PENDING_VERIFICATION)
    source = models.CharField(max_length=10, choices=Source.choices)
    submitted_at = models.DateTimeField(default=timezone.now)
    submitted_by = models.CharField(max_length=200, blank=True, help_text="Name of whoever handed us the key.")
    submitted_by_email = models.EmailField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The staff member who entered the key, for keys entered in the admin.",
    )
    submission_link = models.ForeignKey(
        "credentials.SubmissionLink", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    last_verified_at = models.DateTimeField(null=True, blank=True, help_text="When the last check against CD2 ran.")
    last_verdict = models.CharField(
        max_length=12,
        choices=VERDICT_CHOICES,
        blank=True,
        default="",
        db_default="",
        help_text="What the last check found; only rejected and forbidden are verdicts on the key itself.",
    )
    last_verification = models.CharField(max_length=200, blank=True, help_text="The last check, in words.")
    verification_attempts = models.PositiveIntegerField(default=0)
    status_changed_at = models.DateTimeField(default=timezone.now)
    status_reason = models.CharField(max_length=500, blank=True)
    last_pulled_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When the data pipeline last reported a successful pull with this key (API sync report).",
    )
    check_requested_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="The pipeline reported the key failing and asked for a check (API sync report); cleared once "
        "CD2 has answered about the key. The hourly sweep queues the check again if it was lost.",
    )
    pending_reason = models.CharField(
        max_length=12,
        choices=PendingReason.choices,
        blank=True,
        default="",
        db_default="",
        help_text="Why a pending key waits for its check; decides when it is checked again and what we "
        "tell the customer.",
    )

    objects = CredentialQuerySet.as_manager()

    class Meta:
        verbose_name = "CD2 key"
        verbose_name_plural = "CD2 keys"
        ordering = ("-submitted_at",)
        constraints = [
            # The pipeline reads "the" key of an institution: there must never be two.
            models.UniqueConstraint(
                fields=("institution",),
                condition=Q(status="active"),
                name="one_active_key_per_institution",
            ),
            # One Client ID, one institution, ever: a key is stored once, so a
            # second row with the same index (another institution's, or the
            # same key again) is refused, superseded and revoked rows included.
            models.UniqueConstraint(
                fields=("client_id_index",),
                condition=Q(client_id_index_duplicate=False),
                name="one_row_per_client_id",
            ),
        ]
        indexes = [
            models.Index(fields=("status", "expires_on"), name="credential_status_expiry"),
            # "Is this Client ID on file?" (services/submission._on_file) asks
            # for every row with the index, duplicates included: the partial
            # unique index above leaves the duplicates out, so it cannot serve
            # that question and the lookup was a scan of every key.
            models.Index(fields=("client_id_index",), name="credential_client_id_index"),
        ]
        permissions = [
            ("reveal_secret", "Can reveal a key's Secret (audited)"),
            ("handoff_credential", "Can hand a key to the data pipeline (audited)"),
            ("check_key", "Can check a key against CD2 now"),
            ("revoke_key", "Can revoke a key (audited)"),
        ]

    def __str__(self) -> str:
        # Never the Client ID or the Secret: __str__ ends up in logs and admin history.
        return f"{self.hint} ({self.get_status_display()}, expires {format_day(self.expires_on)})"

    def __repr__(self) -> str:
        return f"<CD2Credential {self.pk} {self.hint} {self.status}>"

    def days_left(self, today: dt.date) -> int:
        return (self.expires_on - today).days

    def is_usable(self, today: dt.date) -> bool:
        return self.status == self.Status.ACTIVE and self.expires_on >= today

    def is_short_expiry(self) -> bool:
        """The key was made to last less than validators.SHORT_EXPIRY_MONTHS from when we received it."""
        return is_short_expiry(self.expires_on, today=timezone.localtime(self.submitted_at).date())

    def state_label(self, today: dt.date) -> str:
        """What staff call the key: "Expired" once its date has passed, whatever the row's status, else the status.

        A history status is kept in brackets ("Expired (superseded)"): both are true.
        An active key whose last check was refused is "Failing check", never "Active".
        """
        if self.expires_on < today:
            if self.status == self.Status.ACTIVE:
                return "Expired"
            return f"Expired ({self.get_status_display().lower()})"
        if self.status == self.Status.ACTIVE and self.check_failed():
            # Still the active row, but CD2 refuses it: staff read what the institution shows.
            return "Failing check"
        return self.get_status_display()

    def check_failed(self) -> bool:
        """The last check said the key itself does not work (401 or 403), whatever its status."""
        return self.last_verdict in FAILED_VERDICTS


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SubmissionLink(models.Model):
    """A single-use link to the public page where a customer hands us a key.

    Only the SHA-256 of the token is stored: a database dump cannot be
    replayed as links.
    """

    institution = models.ForeignKey(
        "institutions.Institution", on_delete=models.CASCADE, related_name="submission_links"
    )
    token_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    reason = models.CharField(max_length=40, blank=True, help_text="Why it was made: staff, reminder, request ...")
    expires_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)
    used_at = models.DateTimeField(null=True, blank=True)
    sent_to = models.TextField(blank=True, help_text="Addresses the link was mailed to.")
    # One live link per institution: issuing a link ends the older open ones
    # (services/links.py) and names the newer one here, so an older link's
    # page can say a newer link was sent, and to whom.
    superseded_by = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The newer link that ended this one.",
    )

    class Meta:
        ordering = ("-created_at",)
        permissions = [("send_submission_link", "Can send a submission link to an institution's contacts")]
        constraints = [
            # The customer holds one working link, never several: an open link
            # (neither used nor ended) is unique per institution. Expiry is not
            # part of it (now() is not a column); issuing ends expired ones too.
            models.UniqueConstraint(
                fields=("institution",),
                condition=Q(revoked_at__isnull=True, used_at__isnull=True),
                name="one_open_link_per_institution",
            ),
        ]

    def __str__(self) -> str:
        return f"Link for {self.institution} made {format_day(self.created_at)} ({self.state(timezone.now())})"

    def is_usable(self, now: dt.datetime | None = None) -> bool:
        now = now or timezone.now()
        return self.revoked_at is None and self.used_at is None and now < self.expires_at

    def state(self, now: dt.datetime | None = None) -> str:
        now = now or timezone.now()
        if self.used_at:
            return "used"
        if self.revoked_at and self.superseded_by_id:
            # Ended by a newer link; one that had run out first stays "expired".
            return "expired" if self.expires_at <= self.revoked_at else "replaced"
        if self.revoked_at:
            return "revoked"
        if now >= self.expires_at:
            return "expired"
        return "usable"


class ReminderLog(models.Model):
    """One reminder step for one key: the unique row is what makes it "exactly once".

    threshold is days before expires_on (0 on the day, negative after it).
    The row is the step's claim and nothing more: its delivery (state,
    recipients, when it went out or gave up, attempts, the last error, why
    it was skipped) is its notice's (Notice.reminder, written with the
    claim). A step skipped on purpose has a superseded notice.
    """

    credential = models.ForeignKey(CD2Credential, on_delete=models.CASCADE, related_name="reminders")
    threshold = models.IntegerField()
    claimed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = "reminder"
        verbose_name_plural = "reminders"
        ordering = ("-claimed_at", "-id")
        constraints = [
            models.UniqueConstraint(fields=("credential", "threshold"), name="one_reminder_per_key_and_threshold"),
        ]
        permissions = [
            ("send_reminder", "Can send a key's expiry reminder now"),
            ("export_reminders", "Can export the reminder list (audited)"),
        ]
        # The reminder list's default order (newest first) at a page of rows, however many steps there are.
        indexes = [models.Index(fields=("-claimed_at", "-id"), name="reminder_claimed_newest")]

    def __str__(self) -> str:
        return f"Reminder {self.step_label()} for {self.credential.hint}"

    def step_label(self) -> str:
        return step_label(self.threshold)

    # The reminder list's states: what customer success asks of a step (sent, failed, waiting), and skipped.
    STATE_LABELS = {"sent": "Sent", "failed": "Failed", "waiting": "Waiting", "skipped": "Skipped"}
    # Each state as the notice states it stands for (the list's filter).
    STATE_NOTICE_STATES = {
        "sent": ("sent",),
        "failed": ("failed",),
        "waiting": ("pending", "sending"),
        "skipped": ("superseded", "cancelled"),
    }

    def delivery_state(self) -> str:
        """sent, failed (gave up), waiting (queued, being sent or waiting for a retry) or skipped (on purpose)."""
        notice = self.delivery_notice()
        return reminder_state(notice.state if notice is not None else None)

    def delivery_notice(self):
        """The step's notice (None only while a step is being released); select_related("notice") to read many."""
        try:
            return self.notice
        except ObjectDoesNotExist:
            return None

    def delivery(self) -> str:
        """The delivery state in words, for staff: "Sent", "Failed: 550 ...", "Skipped: ...", "Being sent"."""
        notice = self.delivery_notice()
        if notice is None or notice.state in Notice.OPEN_STATES:
            return "Being sent"
        if notice.state == Notice.State.SENT:
            return "Sent"
        label = "Failed" if notice.state == Notice.State.FAILED else "Skipped"
        return f"{label}: {notice.error_in_words()}" if notice.last_error else label

    def delivered_at(self):
        """When the step was settled (sent, given up or skipped), else when it was claimed."""
        notice = self.delivery_notice()
        if notice is None:
            return self.claimed_at
        return notice.sent_at or notice.closed_at or self.claimed_at

    def recipients(self) -> str:
        notice = self.delivery_notice()
        return notice.recipients if notice is not None else ""

    def attempts(self) -> int:
        notice = self.delivery_notice()
        return notice.attempts if notice is not None else 0


def reminder_state(notice_state: str | None) -> str:
    """A reminder notice's state in the reminder list's words (ReminderLog.STATE_LABELS); no notice yet is waiting."""
    state = notice_state or "pending"
    return next(word for word, states in ReminderLog.STATE_NOTICE_STATES.items() if state in states)


def step_label(threshold: int | None) -> str:
    """A reminder step in words: "14 days before", "on the day", "7 days after", "1 day before".

    None: a reminder outside the schedule, sent by staff ("Send reminder now" once the step was sent).
    """
    if threshold is None:
        return "extra reminder"
    if threshold == 0:
        return "on the day"
    days = abs(threshold)
    return f"{days} day{'' if days == 1 else 's'} {'before' if threshold > 0 else 'after'}"


class AuditEvent(models.Model):
    """Append-only record of every time a secret leaves the registry, and other sensitive acts."""

    class Kind(models.TextChoices):
        REVEAL = "reveal", "Secret revealed"
        EXPORT = "export", "Export"
        HANDOFF = "handoff", "Hand-off to pipeline"
        SUBMISSION = "submission", "Key submitted"
        LINK_CREATED = "link_created", "Submission link created"
        LINK_USED = "link_used", "Submission link used"
        LINK_REVOKED = "link_revoked", "Submission link revoked"
        KEY_REVOKED = "key_revoked", "Key revoked"
        KEY_INVALID = "key_invalid", "Key refused by CD2, marked invalid"
        KEY_CHECKED = "key_checked", "Key checked by staff"
        KEY_ROTATION = "key_rotation", "Encryption keys rotated"
        # FERNET_KEYS lost for good: an operator wiped what no key could read (mark_keys_lost).
        KEYS_LOST = "keys_lost", "Unreadable keys marked lost"
        LOGIN_FAILED = "login_failed", "Admin sign-in failed"
        # A signed-in staff member typed a wrong password where an act asks for it again.
        REAUTH_FAILED = "reauth_failed", "Wrong password on re-entry (reveal or authenticator reset)"
        IMPORT = "import", "Institutions imported"
        LOGIN = "login", "Admin sign-in"
        HANDOFF_REFUSED = "handoff_refused", "Hand-off refused"
        TWO_FACTOR_RESET = "2fa_reset", "Authenticator reset started"
        TWO_FACTOR_ENROLLED = "2fa_enrolled", "Authenticator enrolled"
        TWO_FACTOR_DELETED = "2fa_deleted", "Two-factor device deleted"
        CONTACT_ADDED = "contact_added", "Key submitter added as a contact"
        # The API's service accounts (api/): never the token or secret itself.
        TOKEN_ISSUED = "token_issued", "API token issued"
        TOKEN_REVOKED = "token_revoked", "API token revoked"
        WEBHOOK_SECRET = "webhook_secret", "Webhook signing secret set or rotated"
        # Staff sign-in with the identity provider (staffsso/): the provider's subject, never a token.
        SSO_LOGIN = "sso_login", "Sign-in with the identity provider"
        SSO_REFUSED = "sso_refused", "Sign-in with the identity provider refused"
        SSO_SIGNED_OUT = "sso_signed_out", "Signed out: the identity provider no longer vouches"
        ROLE_CHANGED = "role_changed", "Role set from the identity provider's groups"
        DEACTIVATED = "deactivated", "Staff account deactivated"
        BREAK_GLASS = "break_glass", "Break-glass password sign-in"
        BREAK_GLASS_SET = "break_glass_set", "Break-glass account marked or unmarked"

    kind = models.CharField(max_length=20, choices=Kind.choices)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    # PROTECT: a staff user with audit history is deactivated, never deleted
    # (the user admin explains); actor_username keeps the name whatever happens.
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    actor_username = models.CharField(
        max_length=150, blank=True, help_text="The staff user's username at the time, kept for ever."
    )
    actor_label = models.CharField(
        max_length=254, blank=True, help_text="Who, when not a staff user (a customer's email, a command)."
    )
    institution = models.ForeignKey(
        "institutions.Institution", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    credential = models.ForeignKey(CD2Credential, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    reason = models.TextField(blank=True)
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ("-created_at",)
        indexes = [models.Index(fields=("kind", "created_at"), name="audit_kind_created")]

    def __str__(self) -> str:
        who = self.actor_username or self.actor_label or "system"
        return f"{self.get_kind_display()} by {who} at {format_moment(self.created_at)}"


class LinkBatch(models.Model):
    """One "send submission links" to many institutions: queued, mailed at a steady rate, each once."""

    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ("-created_at",)
        verbose_name = "bulk link send"

    def __str__(self) -> str:
        return f"Links sent {format_moment(self.created_at)}"


class LinkBatchItem(models.Model):
    """One institution of a LinkBatch and the outbox notice that mails its link (the notice's state is its progress)."""

    batch = models.ForeignKey(LinkBatch, on_delete=models.CASCADE, related_name="items")
    institution = models.ForeignKey("institutions.Institution", on_delete=models.CASCADE, related_name="+")
    notice = models.OneToOneField("Notice", on_delete=models.CASCADE, related_name="link_batch_item")

    # How the progress page names the notice's states for a bulk send.
    PROGRESS_LABELS = {
        "pending": "Queued (or waiting to retry)",
        "sending": "Being sent",
        "sent": "Sent",
        "cancelled": "Skipped (nobody to mail)",
        "superseded": "Skipped (institution paused or offboarded)",
        "failed": "Failed (gave up retrying)",
    }

    class Meta:
        constraints = [models.UniqueConstraint(fields=("batch", "institution"), name="one_link_per_batch_institution")]

    def __str__(self) -> str:
        return f"Link for institution {self.institution_id} (batch {self.batch_id})"

    def progress_label(self) -> str:
        return self.PROGRESS_LABELS.get(self.notice.state, self.notice.get_state_display())


class Notice(models.Model):
    """One outgoing notice: written in the transaction that decides to send it, delivered by a task.

    The outbox (credentials.services.outbox). A row is the fact "this must be
    said"; its state says how far delivery got. `dedupe_key` is unique, so a
    decision taken twice (two runs, a retried task) writes one notice.
    Each kind has one sender, registered by the app that owns it
    (credentials.outgoing.sender_register). `payload` holds
    what a kind must fix at decision time (never a secret).
    """

    class Kind(models.TextChoices):
        REMINDER = "reminder", "Expiry reminder"
        OWNER_SUMMARY = "owner_summary", "Owner's daily summary"
        STAFF_DIGEST = "staff_digest", "Staff digest"
        SUBMISSION_LINK = "submission_link", "Submission link"
        # "Lost the link?": the request itself, stored before the page answers;
        # its delivery looks the address up and writes a SUBMISSION_LINK per match.
        LINK_REQUEST = "link_request", "Lost-link request"
        RECEIPT = "receipt", "Submission receipt"
        KEY_INVALID = "key_invalid", "Key stopped working"
        KEY_REJECTED = "key_rejected", "New key does not work"
        KEY_CONFLICT = "key_conflict", "Key on file for another institution"
        WEBHOOK = "webhook", "Webhook"
        BREAK_GLASS = "break_glass", "Break-glass sign-in alert"
        # Staff alerts (services/alerts.py): one per event and chat channel, one per event and staff member
        # who asked for it by mail; delivered in groups (outgoing.Sender.group_by).
        STAFF_ALERT = "staff_alert", "Staff alert (chat)"
        STAFF_ALERT_MAIL = "staff_alert_mail", "Staff alert (mail)"

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        SENDING = "sending", "Sending"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed (gave up)"
        # Never sent, on purpose: the key it speaks of was replaced or revoked,
        # the institution paused, or a more urgent step of the same key came due.
        SUPERSEDED = "superseded", "Superseded"
        CANCELLED = "cancelled", "Cancelled"

    # States a sweep or a run may still deliver.
    OPEN_STATES = (State.PENDING, State.SENDING)

    kind = models.CharField(max_length=20, choices=Kind.choices)
    state = models.CharField(max_length=12, choices=State.choices, default=State.PENDING)
    dedupe_key = models.CharField(max_length=120, unique=True)
    institution = models.ForeignKey(
        "institutions.Institution", null=True, blank=True, on_delete=models.CASCADE, related_name="notices"
    )
    credential = models.ForeignKey(
        CD2Credential, null=True, blank=True, on_delete=models.CASCADE, related_name="notices"
    )
    reminder = models.OneToOneField(ReminderLog, null=True, blank=True, on_delete=models.CASCADE, related_name="notice")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="notices"
    )
    # The day the decision was taken for (a run "as of" another day renders as of it).
    day = models.DateField()
    as_of = models.DateTimeField()
    recipients = models.TextField(blank=True)
    payload = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    # Retries stop here (NOTICE_GIVE_UP_AFTER after writing; a resend moves it).
    retry_until = models.DateTimeField()
    lease_until = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    sent_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ("-created_at", "-pk")
        indexes = [
            models.Index(fields=("state", "next_attempt_at"), name="notice_state_next_attempt"),
            models.Index(fields=("kind", "day"), name="notice_kind_day"),
        ]
        permissions = [("resend_notice", "Can resend a notice that failed for good")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} of {format_day(self.day)} ({self.get_state_display().lower()})"

    def error_in_words(self) -> str:
        """The last send error for people ("the address was refused: user unknown"); last_error keeps the raw text."""
        return send_error_words(self.last_error)


class ScheduledJob(models.Model):
    """The last successful run of one scheduled job: what /healthz and the dashboard read."""

    name = models.CharField(max_length=60, unique=True)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField()
    counts = models.JSONField(default=dict, blank=True)
    first_run_at = models.DateTimeField()

    class Meta:
        ordering = ("name",)

    def __str__(self) -> str:
        return f"{self.name} last ran {format_moment(self.finished_at)}"


class StaffAlert(models.TextChoices):
    """What happened that staff must hear of today (services/alerts.py): in chat, and by mail to who asked."""

    KEY_LAPSED = "key_lapsed", "A served institution's key expired with no new key"
    KEY_CHECK_FAILED = "key_check_failed", "A key failed its check against CD2"
    NOTICE_GAVE_UP = "notice_gave_up", "A notice gave up (mail or webhook not delivered)"
    JOB_OVERDUE = "job_overdue", "A scheduled job is overdue"
    KEY_CONFLICT = "key_conflict", "A key was refused: on file for another institution"


class StaffSettings(models.Model):
    """A staff member's own settings: the time zone the staff site writes times in, and the alerts mailed to them.

    One row per staff member who changed something; without a row (or with
    an empty zone) the site's TIME_ZONE applies, and no alert is mailed.
    """

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="staff_settings")
    time_zone = models.CharField(
        max_length=64,
        blank=True,
        default="",
        validators=[validate_timezone],
        help_text="Times on the staff site are shown in this zone; empty: the site's own.",
    )
    # StaffAlert values this person is mailed about (chat gets every alert: STAFF_ALERT_URLS).
    alert_events = models.JSONField(default=list, blank=True)

    class Meta:
        verbose_name = "staff member's settings"
        verbose_name_plural = "staff members' settings"

    def __str__(self) -> str:
        return f"Settings of {self.user}"


class MetricCount(models.Model):
    """One counter of /metrics, or one bucket of a histogram, since the registry began: the same for every process.

    services/metrics.py adds to it (a flush of the counts waiting in Redis, or one
    UPDATE per event without Redis) and reads the whole table per scrape (a few
    hundred rows at most: names and labels are bounded; the row named
    cd2_metrics_flush records the last batches flushed and is no metric).
    `labels` is the label set in Prometheus' own syntax, sorted
    (`outcome="accepted"`); `total` is a histogram bucket's sum of observations.
    """

    name = models.CharField(max_length=80)
    labels = models.CharField(max_length=200, blank=True, default="")
    count = models.PositiveBigIntegerField(default=0)
    total = models.FloatField(default=0.0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=("name", "labels"), name="one_row_per_metric_and_labels")]

    def __str__(self) -> str:
        return f"{self.name}{{{self.labels}}} {self.count}"
