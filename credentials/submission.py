"""The customer submission flow: sending links, taking a key, checking it live.

Every door (the public page, the admin, commands, Celery tasks) calls these
functions. A key goes through `validate_key_input`, then the live check
against CD2 (`cd2.check_key_with_settings`), and only then is stored:

- CD2 accepts it: stored as the active key, the link is used up.
- CD2 rejects it (401) or refuses the account (403): nothing is stored and
  the link still works, so the customer can correct it while the
  Instructure window is still open.
- CD2 cannot answer (5xx, 429, timeout): stored as pending_verification and
  checked again by `tasks.verify_pending_credential` with backoff, so a
  gateway outage never loses a key the customer will not see again.

The Secret lives only in local variables here (marked sensitive for Django's
error reports); only ids go to Celery, only hints to logs, audit and mail.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
from dataclasses import dataclass, field

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from credentials.cd2 import CheckResult, Verdict, check_key_with_settings
from credentials.emails import send_email
from credentials.models import AuditEvent, CD2Credential, SubmissionLink
from credentials.selectors import local_today
from credentials.services import (
    NewLink,
    audit_record,
    credential_activate,
    credential_create,
    credential_set_status,
    submission_link_create,
    submission_link_get,
)
from credentials.validators import CleanKey, validate_key_input
from institutions.models import Contact, Institution

logger = logging.getLogger(__name__)

# The first re-check of a key the gateway could not check waits a minute:
# an immediate retry would most likely meet the same outage.
FIRST_RECHECK_SECONDS = 60
# A pending key not checked for this long lost its re-check (broker down when
# it was queued) or ran out of retries: the sweep queues another. Longer than
# the longest backoff step, so a running retry chain is rarely doubled.
PENDING_SWEEP_AFTER = dt.timedelta(hours=7)

REJECTED_MESSAGE = (
    "Instructure did not accept this Client ID and Secret. Check that you copied the whole Client ID "
    "(including the part before the # sign) and the whole Secret, then paste the Secret again and resubmit. "
    "Nothing was saved, and this link still works."
)
_FORBIDDEN_REASONS = {
    "AccountNotOnboarded": "your institution's Canvas account is not yet set up for Canvas Data 2",
    "AccountDisabled": "Canvas Data 2 access is turned off for your institution's Canvas account",
    "RequestTypeForbidden": "Canvas Data 2 does not allow this kind of access for your institution's account",
}
FORBIDDEN_MESSAGE = (
    "Instructure recognised this key, but {reason}. Your Instructure Customer Success Manager can enable "
    "Canvas Data 2 for your account. Nothing was saved; once it is enabled, submit the same key again with "
    "this link."
)
MAINTENANCE_MESSAGE = (
    "Instructure recognised this key, but says your institution's account is under maintenance, so the key "
    "cannot be checked now. Nothing was saved. Try again with this link in a few hours; if it persists, "
    "your Instructure Customer Success Manager can tell you more."
)

# For the mail after a re-check: the customer is no longer on the page.
RECHECK_REJECTED_MESSAGE = (
    "Instructure did not accept this Client ID and Secret. Most likely part of one was not copied, "
    "or the key has been deleted since."
)
RECHECK_FORBIDDEN_MESSAGE = (
    "Instructure recognised the key, but {reason}. Your Instructure Customer Success Manager can enable "
    "Canvas Data 2 for your account."
)


class Result(enum.StrEnum):
    ACCEPTED = "accepted"  # checked and active
    PENDING = "pending"  # stored, CD2 could not be reached; re-checked later
    INVALID = "invalid"  # failed our validation; nothing stored
    REJECTED = "rejected"  # CD2 said 401; nothing stored
    FORBIDDEN = "forbidden"  # CD2 said 403; nothing stored
    LINK_UNUSABLE = "link_unusable"  # unknown, expired, revoked or (just) used link


@dataclass(frozen=True)
class SubmitOutcome:
    """What became of one submission.

    `errors` maps form field names (client_id, secret, expires_on, or
    "__all__" for the whole form) to messages safe to show the customer.
    """

    result: Result
    credential: CD2Credential | None = None
    errors: dict[str, list[str]] = field(default_factory=dict)
    check: CheckResult | None = None

    @property
    def stored(self) -> bool:
        return self.credential is not None


# --------------------------------------------------------------------------
# Links
# --------------------------------------------------------------------------


def institution_link_recipients(institution: Institution) -> list[str]:
    """Addresses of the contacts who receive reminders and new links."""
    emails = Contact.objects.filter(institution=institution, receives_reminders=True).values_list("email", flat=True)
    return sorted({email.strip() for email in emails if email.strip()}, key=str.lower)


def _owner_email(institution: Institution) -> str:
    owner = institution.account_owner
    return (owner.email or "").strip() if owner is not None else ""


def _link_context(institution: Institution, new_link: NewLink) -> dict:
    return {
        "institution": institution,
        "url": new_link.url,
        "expires_at": new_link.link.expires_at,
        "key_name": settings.CD2_KEY_NAME,
        "recommended_expiry": settings.CD2_RECOMMENDED_EXPIRY,
        "owner": institution.account_owner,
    }


def _mail_new_link(*, institution: Institution, new_link: NewLink, to: list[str], ip_address: str | None) -> None:
    """Mail the link and note where it went; raises on SMTP errors (the caller's transaction rolls back)."""
    owner = _owner_email(institution)
    send_email("link", to=to, reply_to=[owner] if owner else [], context=_link_context(institution, new_link))
    sent_to = ", ".join(to)
    SubmissionLink.objects.filter(pk=new_link.link.pk).update(sent_to=sent_to)
    new_link.link.sent_to = sent_to
    AuditEvent.objects.filter(
        kind=AuditEvent.Kind.LINK_CREATED, institution=institution, detail__link_id=new_link.link.pk
    ).update(ip_address=ip_address or None)


def submission_link_send(
    *,
    institution: Institution,
    created_by=None,
    days: int | None = None,
    reason: str = "staff",
    ip_address: str | None = None,
) -> NewLink:
    """Make a link and mail it to the institution's contacts who receive reminders.

    Reply-To is the account owner, so a customer's question reaches a person.
    Raises ValueError (with a message for staff) when there is nobody to
    mail; the link is then not made. A mail error rolls the link back too.
    """
    recipients = institution_link_recipients(institution)
    if not recipients:
        raise ValueError(
            f"{institution.name} has no contact who receives reminders, so there is nobody to send the link to. "
            f"Add a contact (or tick “receives reminders” on one) and send again."
        )
    with transaction.atomic():
        new_link = submission_link_create(institution=institution, created_by=created_by, days=days, reason=reason)
        _mail_new_link(institution=institution, new_link=new_link, to=recipients, ip_address=ip_address)
    logger.info(
        "Submission link %s mailed to %d contact(s) of institution %s",
        new_link.link.pk,
        len(recipients),
        institution.pk,
    )
    return new_link


def submission_link_revoke(*, link: SubmissionLink, actor=None, now: dt.datetime | None = None) -> bool:
    """Revoke a link that is not used or revoked yet; True if this call revoked it."""
    now = now or timezone.now()
    revoked = SubmissionLink.objects.filter(pk=link.pk, revoked_at__isnull=True, used_at__isnull=True).update(
        revoked_at=now
    )
    if revoked:
        link.revoked_at = now
        audit_record(
            kind=AuditEvent.Kind.LINK_REVOKED,
            actor=actor,
            actor_label="" if getattr(actor, "pk", None) else "system",
            institution=link.institution,
            detail={"link_id": link.pk},
        )
    return bool(revoked)


def link_request(*, email: str, ip_address: str | None = None) -> None:
    """ "Lost the link?": mail a fresh link to this address if it is a contact of a served institution.

    Does the same, returns the same and logs the same whether or not the
    address matched, so the page built on it reveals nothing. The link goes
    only to the address asked for, never to the other contacts.
    """
    email = (email or "").strip()
    if not email:
        return
    contacts = Contact.objects.select_related("institution", "institution__account_owner").filter(
        email__iexact=email, institution__status__in=Institution.SERVED_STATUSES
    )
    for contact in contacts:
        institution = contact.institution
        with transaction.atomic():
            new_link = submission_link_create(institution=institution, reason="request")
            _mail_new_link(institution=institution, new_link=new_link, to=[contact.email], ip_address=ip_address)


# --------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------


def _error_messages(exc: ValidationError) -> dict[str, list[str]]:
    return {name: list(messages) for name, messages in exc.message_dict.items()}


def _refusal(check: CheckResult) -> SubmitOutcome:
    if check.verdict is Verdict.REJECTED:
        return SubmitOutcome(Result.REJECTED, errors={"__all__": [REJECTED_MESSAGE]}, check=check)
    if check.error_type == "AccountUnderMaintenance":
        message = MAINTENANCE_MESSAGE
    else:
        reason = _FORBIDDEN_REASONS.get(check.error_type or "", "Canvas Data 2 is not enabled for your account")
        message = FORBIDDEN_MESSAGE.format(reason=reason)
    return SubmitOutcome(Result.FORBIDDEN, errors={"__all__": [message]}, check=check)


@sensitive_variables("secret", "key", "client_id")
def _validate(*, client_id: str, secret: str, expires_on, today: dt.date | None) -> CleanKey | SubmitOutcome:
    try:
        return validate_key_input(
            client_id=client_id, secret=secret, expires_on=expires_on, today=today or local_today()
        )
    except ValidationError as exc:
        return SubmitOutcome(Result.INVALID, errors=_error_messages(exc))


def _queue_recheck(credential_id: int) -> None:
    from credentials.tasks import verify_pending_credential

    # robust: with the broker down the key is stored all the same and the
    # customer must see the receipt, not an error; the hourly sweep
    # (pending_credentials_due) queues the re-check later.
    def queue_recheck() -> None:
        verify_pending_credential.apply_async((credential_id,), countdown=FIRST_RECHECK_SECONDS)

    transaction.on_commit(queue_recheck, robust=True)


def pending_credentials_due(*, now: dt.datetime | None = None) -> list[int]:
    """Ids of pending keys not checked for PENDING_SWEEP_AFTER: their re-check was lost or gave up."""
    cutoff = (now or timezone.now()) - PENDING_SWEEP_AFTER
    return list(
        CD2Credential.objects.filter(status=CD2Credential.Status.PENDING_VERIFICATION)
        .filter(Q(last_verified_at__lt=cutoff) | Q(last_verified_at__isnull=True, submitted_at__lt=cutoff))
        .order_by("pk")
        .values_list("pk", flat=True)
    )


@sensitive_variables("secret", "key", "client_id")
def credential_submit(
    *,
    token: str = "",
    link: SubmissionLink | None = None,
    client_id: str,
    secret: str,
    expires_on,
    submitted_by: str,
    submitted_by_email: str,
    ip_address: str | None = None,
    today: dt.date | None = None,
) -> SubmitOutcome:
    """Take a key from the public page: validate, check live, store, use up the link.

    The link is claimed with a conditional UPDATE (used_at IS NULL) in the
    same transaction that stores the key, so of several submissions racing
    on one link exactly one stores a key; the others get LINK_UNUSABLE.

    A caller that has already looked the link up (the page) passes it as
    `link` instead of the token; the claim re-checks it either way.
    """
    if link is None:
        link = submission_link_get(token=token)
    if link is None:
        return SubmitOutcome(Result.LINK_UNUSABLE)
    institution = link.institution
    key = _validate(client_id=client_id, secret=secret, expires_on=expires_on, today=today)
    if isinstance(key, SubmitOutcome):
        return key

    check = check_key_with_settings(client_id=key.client_id, secret=key.secret)
    detail = {"link_id": link.pk, "hint": key.hint, "check": check.summary, "outcome": check.verdict.value}
    if check.verdict in (Verdict.REJECTED, Verdict.FORBIDDEN):
        # Not stored, but recorded: staff can see a customer struggling (or someone guessing).
        audit_record(
            kind=AuditEvent.Kind.SUBMISSION,
            actor_label=submitted_by_email,
            institution=institution,
            ip_address=ip_address,
            reason="Refused by Canvas Data 2; nothing stored.",
            detail=detail,
        )
        logger.info("Key submission for institution %s refused by CD2: %s", institution.pk, check.summary)
        return _refusal(check)

    status = CD2Credential.Status.ACTIVE if check.verdict is Verdict.OK else CD2Credential.Status.PENDING_VERIFICATION
    now = timezone.now()
    with transaction.atomic():
        claimed = SubmissionLink.objects.filter(
            pk=link.pk, used_at__isnull=True, revoked_at__isnull=True, expires_at__gt=now
        ).update(used_at=now)
        if claimed != 1:
            return SubmitOutcome(Result.LINK_UNUSABLE)
        credential = credential_create(
            institution=institution,
            key=key,
            source=CD2Credential.Source.LINK,
            status=status,
            verification=check.summary,
            submitted_by=submitted_by.strip(),
            submitted_by_email=submitted_by_email.strip(),
            submission_link=link,
            now=now,
        )
        audit_record(
            kind=AuditEvent.Kind.SUBMISSION,
            actor_label=submitted_by_email,
            credential=credential,
            ip_address=ip_address,
            reason="Checked and active." if status == CD2Credential.Status.ACTIVE else "CD2 unavailable; pending.",
            detail=detail,
        )
        audit_record(
            kind=AuditEvent.Kind.LINK_USED,
            actor_label=submitted_by_email,
            credential=credential,
            ip_address=ip_address,
            detail={"link_id": link.pk},
        )
        _after_commit_send_receipt(credential.pk)
        if status == CD2Credential.Status.PENDING_VERIFICATION:
            _queue_recheck(credential.pk)
    logger.info("Key %s stored for institution %s as %s (%s)", credential.pk, institution.pk, status, check.summary)
    return SubmitOutcome(
        Result.ACCEPTED if status == CD2Credential.Status.ACTIVE else Result.PENDING,
        credential=credential,
        check=check,
    )


@sensitive_variables("secret", "key", "client_id")
def credential_add_by_staff(
    *,
    institution: Institution,
    client_id: str,
    secret: str,
    expires_on,
    user,
    ip_address: str | None = None,
    today: dt.date | None = None,
) -> SubmitOutcome:
    """A key staff received another way: the same validation and live check, source admin."""
    key = _validate(client_id=client_id, secret=secret, expires_on=expires_on, today=today)
    if isinstance(key, SubmitOutcome):
        return key
    check = check_key_with_settings(client_id=key.client_id, secret=key.secret)
    if check.verdict in (Verdict.REJECTED, Verdict.FORBIDDEN):
        return _refusal(check)
    status = CD2Credential.Status.ACTIVE if check.verdict is Verdict.OK else CD2Credential.Status.PENDING_VERIFICATION
    with transaction.atomic():
        credential = credential_create(
            institution=institution,
            key=key,
            source=CD2Credential.Source.ADMIN,
            status=status,
            verification=check.summary,
            submitted_by=(user.get_full_name() or user.get_username()) if user else "",
            submitted_by_email=getattr(user, "email", "") or "",
            created_by=user,
        )
        audit_record(
            kind=AuditEvent.Kind.SUBMISSION,
            actor=user,
            credential=credential,
            ip_address=ip_address,
            reason="Entered by staff.",
            detail={"hint": key.hint, "check": check.summary, "outcome": check.verdict.value},
        )
        if status == CD2Credential.Status.PENDING_VERIFICATION:
            _queue_recheck(credential.pk)
    return SubmitOutcome(
        Result.ACCEPTED if status == CD2Credential.Status.ACTIVE else Result.PENDING,
        credential=credential,
        check=check,
    )


class VerifyResult(enum.StrEnum):
    ACTIVE = "active"
    INVALID = "invalid"
    UNAVAILABLE = "unavailable"  # try again later
    SUPERSEDED = "superseded"  # a newer key became active while this one waited
    SKIPPED = "skipped"  # gone, or no longer pending (already handled)


@sensitive_variables()
def credential_verify_pending(*, credential_id: int) -> str:
    """Check a pending_verification key again; returns a VerifyResult value.

    OK: the key becomes active and the submitter gets a receipt. Rejected or
    forbidden: the key becomes invalid and the submitter and the account
    owner get a fresh link (in the same transaction: if the mail fails,
    nothing changes and the task retries). Unavailable: only the attempt is
    counted; the Celery task retries with backoff.
    """
    credential = CD2Credential.objects.filter(pk=credential_id).first()
    if credential is None or credential.status != CD2Credential.Status.PENDING_VERIFICATION:
        return VerifyResult.SKIPPED
    check = check_key_with_settings(client_id=credential.client_id, secret=credential.secret)
    now = timezone.now()
    with transaction.atomic():
        # Claim: only the run that still finds it pending acts, so a task
        # delivered twice does not mail twice.
        locked = (
            CD2Credential.objects.select_for_update(of=("self",))
            .select_related("institution", "institution__account_owner")
            .filter(pk=credential_id, status=CD2Credential.Status.PENDING_VERIFICATION)
            .first()
        )
        if locked is None:
            return VerifyResult.SKIPPED
        locked.verification_attempts += 1
        locked.last_verified_at = now
        locked.last_verification = check.summary[:200]
        locked.save(update_fields=["verification_attempts", "last_verified_at", "last_verification"])

        # Maintenance is a 403 but passes: not a reason to throw the key away.
        if check.verdict is Verdict.UNAVAILABLE or check.error_type == "AccountUnderMaintenance":
            return VerifyResult.UNAVAILABLE
        if check.verdict is Verdict.OK:
            return _activate_checked(locked, check, now)
        return _invalidate_checked(locked, check)


def _activate_checked(credential: CD2Credential, check: CheckResult, now: dt.datetime) -> str:
    newer_active = CD2Credential.objects.filter(
        institution_id=credential.institution_id,
        status=CD2Credential.Status.ACTIVE,
        submitted_at__gt=credential.submitted_at,
    ).exists()
    if newer_active:
        # Activating would replace a key the customer handed us later.
        CD2Credential.objects.filter(pk=credential.pk).update(
            status=CD2Credential.Status.SUPERSEDED,
            status_changed_at=now,
            status_reason="A newer key became active before this one could be checked.",
        )
        return VerifyResult.SUPERSEDED
    credential_activate(credential=credential, verification=check.summary, now=now)
    audit_record(
        kind=AuditEvent.Kind.SUBMISSION,
        actor_label="system (re-check)",
        credential=credential,
        reason="Checked after CD2 was unavailable; now active.",
        detail={"hint": credential.hint, "check": check.summary, "outcome": check.verdict.value},
    )
    _after_commit_send_receipt(credential.pk)
    return VerifyResult.ACTIVE


def _invalidate_checked(credential: CD2Credential, check: CheckResult) -> str:
    institution = credential.institution
    credential_set_status(
        credential=credential,
        status=CD2Credential.Status.INVALID,
        reason=f"Refused by CD2 on re-check: {check.summary}",
    )
    audit_record(
        kind=AuditEvent.Kind.KEY_INVALID,
        actor_label="system (re-check)",
        credential=credential,
        reason="Refused by Canvas Data 2 when checked after an outage.",
        detail={"hint": credential.hint, "check": check.summary},
    )
    recipients = _unique([credential.submitted_by_email, _owner_email(institution)])
    if not recipients:
        recipients = institution_link_recipients(institution)
    if not recipients:
        logger.warning("Key %s refused on re-check; nobody to mail for institution %s", credential.pk, institution.pk)
        return VerifyResult.INVALID
    new_link = submission_link_create(institution=institution, reason="rejected")
    if check.verdict is Verdict.REJECTED:
        message = RECHECK_REJECTED_MESSAGE
    else:
        reason = _FORBIDDEN_REASONS.get(check.error_type or "", "Canvas Data 2 is not enabled for your account")
        message = RECHECK_FORBIDDEN_MESSAGE.format(reason=reason)
    owner = _owner_email(institution)
    send_email(
        "submission-rejected",
        to=recipients,
        reply_to=[owner] if owner else [],
        context={
            **_link_context(institution, new_link),
            "credential": credential,
            "message": message,
            "rejected": check.verdict is Verdict.REJECTED,
        },
    )
    sent_to = ", ".join(recipients)
    SubmissionLink.objects.filter(pk=new_link.link.pk).update(sent_to=sent_to)
    return VerifyResult.INVALID


def _unique(addresses: list[str]) -> list[str]:
    seen: dict[str, str] = {}
    for address in addresses:
        address = (address or "").strip()
        if address and address.lower() not in seen:
            seen[address.lower()] = address
    return list(seen.values())


# --------------------------------------------------------------------------
# Receipts
# --------------------------------------------------------------------------


def reminder_dates(expires_on: dt.date, *, today: dt.date) -> list[dt.date]:
    """The dates the expiry reminders for a key will go out, soonest first (future ones only)."""
    dates = {expires_on - dt.timedelta(days=days) for days in settings.REMINDER_DAYS_BEFORE}
    return sorted(day for day in dates if day > today)


def receipt_context(credential: CD2Credential) -> dict:
    institution = credential.institution
    return {
        "credential": credential,
        "institution": institution,
        "pending": credential.status == CD2Credential.Status.PENDING_VERIFICATION,
        "reminder_dates": reminder_dates(credential.expires_on, today=local_today()),
        "owner": institution.account_owner,
    }


def _after_commit_send_receipt(credential_id: int) -> None:
    """Mail the receipt once the key is committed; a mail error never undoes the key."""

    def send_receipt() -> None:  # a named function: Django logs a robust callback's __qualname__
        receipt_send(credential_id=credential_id)

    transaction.on_commit(send_receipt, robust=True)


def receipt_send(*, credential_id: int) -> None:
    """Mail the receipt (no secret, no Client ID beyond its hint) after the key is stored.

    Runs after commit: the key is safe whatever happens here, so a mail
    error is logged (class name only) rather than shown to the customer.
    """
    credential = (
        CD2Credential.objects.without_secrets()
        .select_related("institution", "institution__account_owner")
        .filter(pk=credential_id)
        .first()
    )
    if credential is None:
        return
    owner = _owner_email(credential.institution)
    to = _unique([credential.submitted_by_email]) or _unique([owner])
    if not to:
        return
    cc = [address for address in _unique([owner]) if address.lower() not in {t.lower() for t in to}]
    try:
        send_email("receipt", to=to, cc=cc, reply_to=[owner] if owner else [], context=receipt_context(credential))
    except Exception as exc:  # any mail failure: the key is stored either way
        logger.warning("Receipt for key %s not sent: %s", credential_id, type(exc).__name__)
