"""Services behind the staff admin and the hand-off command.

Every act that lets a secret (or a list of customers) leave the registry
writes exactly one AuditEvent in the same transaction as the act itself, so
there is no reveal, hand-off or export without its record.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from credentials.days import institution_today
from credentials.formatting import format_day
from credentials.models import (
    VERDICT_LABELS,
    AuditEvent,
    CD2Credential,
    StaffAlert,
    StaffSettings,
    reminder_state,
    step_label,
)
from credentials.selectors import handoff_candidate, institution_next_reminder
from credentials.services.audit import audit_record
from credentials.services.keys import credential_set_status
from institutions.models import Contact, Institution, email_for_storage, email_key

# What each act needs: a permission named for it (models' Meta.permissions).
REVEAL_PERMISSION = "credentials.reveal_secret"
HANDOFF_PERMISSION = "credentials.handoff_credential"
EXPORT_PERMISSION = "institutions.export_institutions"
EXPORT_REMINDERS_PERMISSION = "credentials.export_reminders"
REVOKE_PERMISSION = "credentials.revoke_key"
CHECK_PERMISSION = "credentials.check_key"
SEND_REMINDER_PERMISSION = "credentials.send_reminder"
SEND_LINK_PERMISSION = "credentials.send_submission_link"
ADD_KEY_PERMISSION = "credentials.add_cd2credential"
# Adding a key's submitter as a contact is adding a contact: the same right as the contacts inline.
ADD_CONTACT_PERMISSION = "institutions.add_contact"
# A reason is what an auditor reads later; "x" explains nothing.
MIN_REASON_LENGTH = 5


class StaffActionRefused(Exception):
    """The act is not allowed as asked; the message says why and what to do instead."""


def clean_reason(reason: str, *, what: str) -> str:
    reason = " ".join((reason or "").split())
    if len(reason) < MIN_REASON_LENGTH:
        raise StaffActionRefused(
            f"Give a reason for the {what} (at least {MIN_REASON_LENGTH} characters): it is kept in the audit log."
        )
    return reason


# --------------------------------------------------------------------------
# Revoke
# --------------------------------------------------------------------------


def submitter_contact_add(*, credential: CD2Credential, actor, ip_address: str | None = None) -> tuple[Contact, bool]:
    """Make the person who handed over `credential` a contact of its institution; (contact, created).

    Idempotent: an address already on file (compared by email_key) returns
    that contact and records nothing. The new contact receives reminders and
    links (what the button promises: the person who sends the keys hears
    about the next one). One audit event per contact added.
    """
    address = email_for_storage(credential.submitted_by_email)
    if not address:
        raise StaffActionRefused("This key was not handed over with an email address; there is nobody to add.")
    with transaction.atomic():
        # The institution's row lock serialises two clicks: the second sees the first's contact.
        institution = Institution.objects.select_for_update().get(pk=credential.institution_id)
        for contact in institution.contacts.all():
            if email_key(contact.email) == email_key(address):
                return contact, False
        contact = Contact.objects.create(
            institution=institution,
            name=(credential.submitted_by or "").strip()[:200] or address,
            email=address,
            role=Contact.Role.OTHER,
            receives_reminders=True,
        )
        audit_record(
            kind=AuditEvent.Kind.CONTACT_ADDED,
            actor=actor,
            institution=institution,
            credential=credential,
            ip_address=ip_address,
            reason=f"Added {address}, who handed over key {credential.hint}, as a contact who receives reminders.",
            detail={"contact_id": contact.pk, "hint": credential.hint},
        )
    return contact, True


def credential_revoke(*, credential: CD2Credential, actor, reason: str, ip_address: str | None = None) -> CD2Credential:
    """Stop using a key: it becomes revoked (kept as history) and the act is audited."""
    reason = clean_reason(reason, what="revocation")
    with transaction.atomic():
        locked = CD2Credential.objects.without_secrets().select_for_update().get(pk=credential.pk)
        if locked.status not in (CD2Credential.Status.ACTIVE, CD2Credential.Status.PENDING_VERIFICATION):
            raise StaffActionRefused(
                f"This key is already {locked.get_status_display().lower()}; only an active or pending key "
                f"can be revoked."
            )
        credential_set_status(credential=locked, status=CD2Credential.Status.REVOKED, reason=reason)
        audit_record(
            kind=AuditEvent.Kind.KEY_REVOKED,
            actor=actor,
            credential=locked,
            institution=locked.institution,
            ip_address=ip_address,
            reason=reason,
            detail={"hint": locked.hint, "expires_on": locked.expires_on.isoformat()},
        )
    return locked


# --------------------------------------------------------------------------
# Reveal (admin) and hand-off (command)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class RevealedKey:
    """A key in plaintext, for one response or one command output only."""

    credential: CD2Credential
    client_id: str
    secret: str

    def __repr__(self) -> str:
        # The default dataclass repr would print the secret in tracebacks.
        return f"RevealedKey(credential={self.credential.pk}, hint={self.credential.hint!r})"


def _refuse_lost(credential: CD2Credential) -> None:
    """A key whose values were wiped when FERNET_KEYS was lost has nothing to show or hand out."""
    if credential.client_id is None or credential.secret is None:
        raise StaffActionRefused(
            f"The registry can no longer read this key ({credential.hint}): FERNET_KEYS was lost and its values "
            f"were wiped. Ask {credential.institution.name} for a new key."
        )


def credential_reveal(*, credential_id: int, actor, reason: str, ip_address: str | None = None) -> RevealedKey:
    """Decrypt one key for a staff member allowed to see it; audited.

    The caller (the admin view) has already made the staff member re-enter
    their password; this checks the permission again so no other door can
    skip it.
    """
    if not getattr(actor, "is_active", False) or not actor.has_perm(REVEAL_PERMISSION):
        raise StaffActionRefused("You do not have permission to reveal Secrets. Ask a Data engineer.")
    reason = clean_reason(reason, what="reveal")
    with transaction.atomic():
        credential = CD2Credential.objects.select_related("institution").get(pk=credential_id)
        _refuse_lost(credential)
        audit_record(
            kind=AuditEvent.Kind.REVEAL,
            actor=actor,
            credential=credential,
            institution=credential.institution,
            ip_address=ip_address,
            reason=reason,
            detail={"hint": credential.hint, "status": credential.status},
        )
    return RevealedKey(credential=credential, client_id=credential.client_id, secret=credential.secret)


def credential_handoff(
    *,
    institution_slug: str,
    actor_username: str,
    reason: str,
    actor_label: str = "",
    allow_expired: bool = False,
    output_format: str = "",
    today: dt.date | None = None,
) -> RevealedKey:
    """The institution's key for the data pipeline, for a named staff member; audited as a hand-off.

    `actor_username` must name an active user with the hand-off permission,
    and the reason is required: the audit row says who and why. Refuses an
    expired, revoked or invalid key unless allow_expired, and a key still
    waiting for its first check (it may be a typo). A refusal is audited
    too (handoff_refused), with what was asked and why it was refused.
    """
    actor = get_user_model()._default_manager.filter(**{get_user_model().USERNAME_FIELD: actor_username}).first()
    institution = Institution.objects.filter(slug=institution_slug).first()
    try:
        return _handoff(
            institution=institution,
            institution_slug=institution_slug,
            actor=actor,
            actor_username=actor_username,
            actor_label=actor_label,
            reason=reason,
            allow_expired=allow_expired,
            output_format=output_format,
            today=today or (institution_today(institution, timezone.now()) if institution else None),
        )
    except StaffActionRefused as exc:
        audit_record(
            kind=AuditEvent.Kind.HANDOFF_REFUSED,
            actor=actor,
            actor_label=actor_label,
            institution=institution,
            reason=" ".join((reason or "").split()),
            detail={
                "refused": str(exc),
                "as": actor_username[:150],
                "institution_slug": institution_slug[:100],
                "allow_expired": allow_expired,
            },
        )
        raise


def _handoff(
    *,
    institution: Institution | None,
    institution_slug: str,
    actor,
    actor_username: str,
    actor_label: str,
    reason: str,
    allow_expired: bool,
    output_format: str,
    today: dt.date,
) -> RevealedKey:
    if actor is None or not actor.is_active or not actor.has_perm(HANDOFF_PERMISSION):
        # One answer for unknown, inactive and unauthorised: the command
        # line is not a way to find out who may hand off keys.
        raise StaffActionRefused(
            f"{actor_username!r} is not an active staff user allowed to hand off keys. Pass --as with your own "
            f"username; a Data engineer has the permission."
        )
    reason = clean_reason(reason, what="hand-off")
    if institution is None:
        raise StaffActionRefused(f"No institution has the slug {institution_slug!r}. Check the slug in the admin list.")
    candidate = handoff_candidate(institution=institution)
    if candidate is None:
        raise StaffActionRefused(
            f"{institution.name} has no usable CD2 key. Send them a submission link from the admin."
        )
    problem = ""
    if candidate.status != CD2Credential.Status.ACTIVE:
        problem = f"its newest key ({candidate.hint}) is {candidate.get_status_display().lower()}"
    elif candidate.expires_on < today:
        problem = f"its key ({candidate.hint}) expired on {format_day(candidate.expires_on)}"
    if problem and not allow_expired:
        raise StaffActionRefused(
            f"{institution.name} has no usable CD2 key: {problem}. Ask them for a new key, or pass "
            f"--allow-expired to hand it out anyway."
        )
    return credential_handoff_record(
        credential_id=candidate.pk,
        actor=actor,
        actor_label=actor_label,
        reason=reason,
        detail={"allow_expired": allow_expired, "format": output_format, "problem": problem},
    )


def credential_handoff_record(
    *,
    credential_id: int,
    actor_label: str,
    actor=None,
    reason: str = "",
    ip_address: str | None = None,
    detail: dict | None = None,
) -> RevealedKey:
    """Decrypt one key for the data pipeline and write its hand-off audit event, in one transaction.

    Every hand-off door (the command, the API) ends here, once it has decided
    the key may go. `detail` adds the door's own non-secret facts.
    """
    with transaction.atomic():
        credential = CD2Credential.objects.select_related("institution").get(pk=credential_id)
        _refuse_lost(credential)
        audit_record(
            kind=AuditEvent.Kind.HANDOFF,
            actor=actor,
            actor_label=actor_label,
            credential=credential,
            institution=credential.institution,
            ip_address=ip_address,
            reason=reason,
            detail={
                "hint": credential.hint,
                "status": credential.status,
                "expires_on": credential.expires_on.isoformat(),
                **(detail or {}),
            },
        )
    return RevealedKey(credential=credential, client_id=credential.client_id, secret=credential.secret)


# --------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------

EXPORT_COLUMNS = (
    "name",
    "slug",
    "canvas_domain",
    "status",
    "account_owner",
    "key_state",
    "key_hint",
    "region",
    "expires_on",
    "days_left",
    "last_checked_at",
    "last_check_verdict",
    "last_check",
    "last_reminder",
    "last_reminder_state",
    "last_reminder_at",
    "next_reminder",
    "next_reminder_on",
)
# A spreadsheet runs a cell starting with one of these as a formula.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(value) -> str | int:
    """A cell of the export: text that a spreadsheet would run as a formula gets a leading quote (OWASP's
    CSV-injection rule); a number (days left, -9 for a lapsed key) is written as the number it is."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def _rows(institutions: Iterable[Institution], *, now: dt.datetime) -> Iterable[list[str]]:
    for inst in institutions:
        owner = inst.account_owner
        upcoming = institution_next_reminder(inst, now=now)
        yield [
            _cell(v)
            for v in (
                inst.name,
                inst.slug,
                inst.canvas_domain,
                inst.status,
                (owner.get_full_name() or owner.get_username()) if owner else "",
                inst.key_state,
                inst.active_hint,
                inst.active_region,
                inst.active_expires_on.isoformat() if inst.active_expires_on else "",
                inst.days_left,
                inst.active_last_verified_at.isoformat() if inst.active_last_verified_at else "",
                VERDICT_LABELS.get(inst.active_last_verdict or "", ""),
                inst.active_last_verification,
                step_label(inst.last_reminder_step) if inst.last_reminder_at else "",
                reminder_state(inst.last_reminder_state) if inst.last_reminder_at else "",
                inst.last_reminder_at.isoformat() if inst.last_reminder_at else "",
                upcoming.label() if upcoming else "",
                upcoming.on.isoformat() if upcoming else "",
            )
        ]


def institutions_export(*, queryset, actor, ip_address: str | None = None) -> str:
    """CSV of institutions with their key status and expiry; one audit event per export.

    `queryset` must carry the key-status annotations (with_key_status). No
    Secret and no full Client ID is read: only the hint.
    """
    if not getattr(actor, "is_active", False) or not actor.has_perm(EXPORT_PERMISSION):
        raise StaffActionRefused("You do not have permission to export the institution list.")
    institutions = list(queryset.select_related("account_owner"))
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(EXPORT_COLUMNS)
    writer.writerows(_rows(institutions, now=timezone.now()))
    audit_record(
        kind=AuditEvent.Kind.EXPORT,
        actor=actor,
        ip_address=ip_address,
        detail={"what": "institutions", "rows": len(institutions), "at": timezone.now().isoformat()},
    )
    return out.getvalue()


REMINDER_EXPORT_COLUMNS = (
    "institution",
    "slug",
    "account_owner",
    "key_hint",
    "key_expires_on",
    "step",
    "state",
    "when",
    "recipients",
    "attempts",
    "detail",
)


class _Line:
    """A file-like csv.writer writes one row into, whose text is then handed on (a streamed CSV)."""

    def write(self, text: str) -> str:
        return text


def reminders_export(*, queryset, actor, ip_address: str | None = None) -> Iterator[str]:
    """The reminder list as CSV lines (header first), read in chunks; one audit event per export, written first.

    `queryset`: ReminderLog rows with their key, institution, owner and notice
    selected (the list's own query). No Secret is read: the key's hint only.
    """
    if not getattr(actor, "is_active", False) or not actor.has_perm(EXPORT_REMINDERS_PERMISSION):
        raise StaffActionRefused("You do not have permission to export the reminder list.")
    rows = queryset.count()
    audit_record(
        kind=AuditEvent.Kind.EXPORT,
        actor=actor,
        ip_address=ip_address,
        detail={"what": "reminders", "rows": rows, "at": timezone.now().isoformat()},
    )
    return _reminder_lines(queryset)


# What a line reads: building every column of five models per row was most of an export's time.
_REMINDER_EXPORT_FIELDS = (
    "threshold",
    "claimed_at",
    "credential__hint",
    "credential__expires_on",
    "credential__institution__name",
    "credential__institution__slug",
    "credential__institution__account_owner__username",
    "credential__institution__account_owner__first_name",
    "credential__institution__account_owner__last_name",
    "notice__state",
    "notice__recipients",
    "notice__attempts",
    "notice__sent_at",
    "notice__closed_at",
    "notice__last_error",
)


def _reminder_lines(queryset) -> Iterator[str]:
    writer = csv.writer(_Line())
    yield writer.writerow(REMINDER_EXPORT_COLUMNS)
    rows = queryset.select_related("credential__institution__account_owner", "notice").only(*_REMINDER_EXPORT_FIELDS)
    for step in rows.iterator(chunk_size=2000):
        key = step.credential
        institution = key.institution
        owner = institution.account_owner
        state = step.delivery_state()
        yield writer.writerow(
            [
                _cell(value)
                for value in (
                    institution.name,
                    institution.slug,
                    (owner.get_full_name() or owner.get_username()) if owner else "",
                    key.hint,
                    key.expires_on.isoformat(),
                    step.step_label(),
                    state,
                    step.delivered_at().isoformat(),
                    step.recipients(),
                    step.attempts(),
                    step.delivery() if state in ("failed", "skipped") else "",
                )
            ]
        )


def staff_time_zone_set(*, user, time_zone: str) -> StaffSettings:
    """Save the zone `user` reads the staff site in ("" for the site's own); raises ValidationError for a non-zone."""
    row = StaffSettings.objects.filter(user=user).first() or StaffSettings(user=user)
    row.time_zone = (time_zone or "").strip()
    row.full_clean()
    row.save()
    return row


def staff_alert_events_set(*, user, events: list[str]) -> StaffSettings:
    """Save which staff alerts (models.StaffAlert) `user` is mailed about; raises ValidationError for another word."""
    unknown = sorted(set(events) - set(StaffAlert.values))
    if unknown:
        raise ValidationError(f"Not a staff alert: {', '.join(unknown)}.")
    row = StaffSettings.objects.filter(user=user).first() or StaffSettings(user=user)
    row.alert_events = [event for event in StaffAlert.values if event in set(events)]
    row.save()
    return row
