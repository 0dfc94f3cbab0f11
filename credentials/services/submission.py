"""A key handed over: validate, check live against CD2, store; re-check later when CD2 could not answer.

Both doors that take a key, a customer's submission link and staff entering
a key in the admin, call `credential_submit` and differ only in the `Door`
they pass (who hands the key over, and the link if any). A key goes through `validate_key_input`, then the live check
against CD2 (`cd2.check_key_with_settings`), and only then is stored:

- CD2 accepts it: stored as the active key, the link is used up.
- CD2 rejects it (401) or refuses the account (403): nothing is stored and
  the link still works, so the customer can correct it while the
  Instructure window is still open.
- CD2 cannot answer (5xx, 429, timeout): stored as pending_verification and
  checked again by the verify_pending_credential task with backoff, so a
  gateway outage never loses a key the customer will not see again.

The Secret lives only in local variables here (marked sensitive for Django's
error reports); only ids go to Celery, only hints to logs, audit and mail.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
from dataclasses import dataclass, field

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from credentials.cd2 import CheckResult, Verdict, check_key_with_settings
from credentials.emails import send_email
from credentials.models import AuditEvent, CD2Credential, SubmissionLink
from credentials.notifications import (
    contact_emails,
    institution_today,
    mail_owner,
    owner_email,
    reply_to,
    unique_addresses,
)
from credentials.selectors import local_today, reminder_days_before
from credentials.services import jobs
from credentials.services.audit import audit_record
from credentials.services.keys import (
    credential_activate,
    credential_check_record,
    credential_create,
    credential_set_status,
)
from credentials.services.links import submission_link_create, submission_link_mark_sent
from credentials.validators import CleanKey, validate_key_input
from institutions.models import Institution

logger = logging.getLogger(__name__)

# The first re-check of a key the gateway could not check waits a minute:
# an immediate retry would most likely meet the same outage.
FIRST_RECHECK_SECONDS = 60

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


@dataclass(frozen=True)
class Door:
    """What a door supplies with a key: the institution, who hands it over, and the link if any.

    Door.customer: the public page (the link names the institution and is
    used up by the submission; the submitter gets a receipt). Door.staff: a
    staff member entering a key a customer shared another way.
    """

    institution: Institution | None
    source: str
    link: SubmissionLink | None = None
    user: object = None
    submitted_by: str = ""
    submitted_by_email: str = ""
    ip_address: str | None = None

    @classmethod
    def customer(
        cls, *, link: SubmissionLink | None, submitted_by: str, submitted_by_email: str, ip_address: str | None = None
    ) -> Door:
        return cls(
            institution=link.institution if link is not None else None,
            source=CD2Credential.Source.LINK,
            link=link,
            submitted_by=submitted_by.strip(),
            submitted_by_email=submitted_by_email.strip(),
            ip_address=ip_address,
        )

    @classmethod
    def staff(cls, *, institution: Institution, user, ip_address: str | None = None) -> Door:
        return cls(
            institution=institution,
            source=CD2Credential.Source.ADMIN,
            user=user,
            submitted_by=(user.get_full_name() or user.get_username()) if user else "",
            submitted_by_email=(getattr(user, "email", "") or "") if user else "",
            ip_address=ip_address,
        )

    @property
    def by_link(self) -> bool:
        return self.source == CD2Credential.Source.LINK

    def audit_who(self) -> dict:
        return {"actor": self.user} if self.user is not None else {"actor_label": self.submitted_by_email}


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


def _claim_link(link: SubmissionLink, now: dt.datetime) -> bool:
    """Use the link up: a conditional UPDATE, so of several racing submissions exactly one wins."""
    return (
        SubmissionLink.objects.filter(
            pk=link.pk, used_at__isnull=True, revoked_at__isnull=True, expires_at__gt=now
        ).update(used_at=now)
        == 1
    )


def _queue_recheck(credential_id: int) -> None:
    # robust: with the broker down the key is stored all the same and the
    # customer must see the receipt, not an error; the hourly sweep
    # (selectors.pending_credentials_due) queues the re-check later.
    jobs.job_enqueue_on_commit(
        jobs.VERIFY_PENDING_CREDENTIAL, args=(credential_id,), countdown=FIRST_RECHECK_SECONDS, robust=True
    )


@sensitive_variables("secret", "key", "client_id")
def credential_submit(
    *, door: Door, client_id: str, secret: str, expires_on, today: dt.date | None = None
) -> SubmitOutcome:
    """Take a key through a door: validate, check live, store, use up the link (if any).

    The link is claimed with a conditional UPDATE (used_at IS NULL) in the
    same transaction that stores the key, so of several submissions racing
    on one link exactly one stores a key; the others get LINK_UNUSABLE.
    A refusal by CD2 stores nothing but is audited: staff can see a customer
    struggling (or someone guessing).
    """
    if door.institution is None:
        return SubmitOutcome(Result.LINK_UNUSABLE)
    institution = door.institution
    key = _validate(client_id=client_id, secret=secret, expires_on=expires_on, today=today)
    if isinstance(key, SubmitOutcome):
        return key

    check = check_key_with_settings(client_id=key.client_id, secret=key.secret)
    detail = {"hint": key.hint, "check": check.summary, "outcome": check.verdict.value}
    if door.link is not None:
        detail["link_id"] = door.link.pk
    if check.verdict in (Verdict.REJECTED, Verdict.FORBIDDEN):
        audit_record(
            kind=AuditEvent.Kind.SUBMISSION,
            institution=institution,
            ip_address=door.ip_address,
            reason="Refused by Canvas Data 2; nothing stored.",
            detail=detail,
            **door.audit_who(),
        )
        logger.info("Key submission for institution %s refused by CD2: %s", institution.pk, check.summary)
        return _refusal(check)

    status = CD2Credential.Status.ACTIVE if check.verdict is Verdict.OK else CD2Credential.Status.PENDING_VERIFICATION
    now = timezone.now()
    with transaction.atomic():
        if door.link is not None and not _claim_link(door.link, now):
            return SubmitOutcome(Result.LINK_UNUSABLE)
        credential = credential_create(
            institution=institution,
            key=key,
            source=door.source,
            status=status,
            check=check,
            submitted_by=door.submitted_by,
            submitted_by_email=door.submitted_by_email,
            created_by=door.user,
            submission_link=door.link,
            now=now,
        )
        if status == CD2Credential.Status.ACTIVE:
            reason = "Checked and active."
        else:
            reason = "CD2 unavailable; pending."
        audit_record(
            kind=AuditEvent.Kind.SUBMISSION,
            credential=credential,
            ip_address=door.ip_address,
            reason=reason if door.by_link else f"Entered by staff. {reason}",
            detail=detail,
            **door.audit_who(),
        )
        if door.link is not None:
            audit_record(
                kind=AuditEvent.Kind.LINK_USED,
                credential=credential,
                ip_address=door.ip_address,
                detail={"link_id": door.link.pk},
                **door.audit_who(),
            )
        if door.by_link:
            _after_commit_send_receipt(credential.pk)
        if status == CD2Credential.Status.PENDING_VERIFICATION:
            _queue_recheck(credential.pk)
    logger.info("Key %s stored for institution %s as %s (%s)", credential.pk, institution.pk, status, check.summary)
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
def credential_verify_pending(*, credential_id: int, actor=None) -> str:
    """Check a pending_verification key again; returns a VerifyResult value.

    OK: the key becomes active and the submitter gets a receipt. Rejected or
    forbidden: the key becomes invalid and the submitter and the account
    owner get a fresh link (in the same transaction: if the mail fails,
    nothing changes and the task retries). Unavailable: only the attempt is
    counted; the Celery task retries with backoff. `actor` is the staff
    member who pressed "Check key now" (None: the re-check task).
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
        locked.save(update_fields=credential_check_record(credential=locked, check=check, now=now, count_attempt=True))

        # Maintenance is a 403 but passes: not a reason to throw the key away.
        if check.verdict is Verdict.UNAVAILABLE or check.error_type == "AccountUnderMaintenance":
            if actor is not None:
                audit_record(
                    kind=AuditEvent.Kind.KEY_CHECKED,
                    actor=actor,
                    credential=locked,
                    reason=check.summary,
                    detail={"hint": locked.hint, "outcome": check.verdict.value},
                )
            return VerifyResult.UNAVAILABLE
        if check.verdict is Verdict.OK:
            return _activate_checked(locked, check, now, actor=actor)
        return _invalidate_checked(locked, check, actor=actor)


def _who(actor) -> dict:
    """Audit arguments naming the staff member who asked for the check, or the re-check task."""
    return {"actor": actor} if actor is not None else {"actor_label": "system (re-check after CD2 was down)"}


def _activate_checked(credential: CD2Credential, check: CheckResult, now: dt.datetime, *, actor=None) -> str:
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
    credential_activate(credential=credential, now=now)
    audit_record(
        kind=AuditEvent.Kind.SUBMISSION,
        **_who(actor),
        credential=credential,
        reason="Checked after CD2 was unavailable; now active.",
        detail={"hint": credential.hint, "check": check.summary, "outcome": check.verdict.value},
    )
    _after_commit_send_receipt(credential.pk)
    return VerifyResult.ACTIVE


def _invalidate_checked(credential: CD2Credential, check: CheckResult, *, actor=None) -> str:
    institution = credential.institution
    credential_set_status(
        credential=credential,
        status=CD2Credential.Status.INVALID,
        reason=f"Refused by CD2 on re-check: {check.summary}",
    )
    audit_record(
        kind=AuditEvent.Kind.KEY_INVALID,
        **_who(actor),
        credential=credential,
        reason="Refused by Canvas Data 2 when checked after an outage.",
        detail={"hint": credential.hint, "check": check.summary},
    )
    recipients = unique_addresses([credential.submitted_by_email, owner_email(institution)])
    if not recipients:
        recipients = contact_emails(institution)
    if not recipients:
        logger.warning("Key %s refused on re-check; nobody to mail for institution %s", credential.pk, institution.pk)
        return VerifyResult.INVALID
    new_link = submission_link_create(institution=institution, reason="rejected")
    if check.verdict is Verdict.REJECTED:
        message = RECHECK_REJECTED_MESSAGE
    else:
        reason = _FORBIDDEN_REASONS.get(check.error_type or "", "Canvas Data 2 is not enabled for your account")
        message = RECHECK_FORBIDDEN_MESSAGE.format(reason=reason)
    send_email(
        "submission-rejected",
        to=recipients,
        reply_to=reply_to(institution),
        context={
            **new_link.context(),
            "credential": credential,
            "message": message,
            "rejected": check.verdict is Verdict.REJECTED,
        },
    )
    submission_link_mark_sent(new_link=new_link, recipients=recipients)
    return VerifyResult.INVALID


# --------------------------------------------------------------------------
# Receipts
# --------------------------------------------------------------------------


def reminder_dates(expires_on: dt.date, *, today: dt.date) -> list[dt.date]:
    """The dates the expiry reminders for a key will go out, soonest first (future ones only)."""
    dates = {expires_on - dt.timedelta(days=days) for days in reminder_days_before()}
    return sorted(day for day in dates if day > today)


def receipt_context(credential: CD2Credential) -> dict:
    institution = credential.institution
    return {
        "credential": credential,
        "institution": institution,
        "pending": credential.status == CD2Credential.Status.PENDING_VERIFICATION,
        "reminder_dates": reminder_dates(credential.expires_on, today=institution_today(institution, timezone.now())),
        "owner": mail_owner(institution),
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
    institution = credential.institution
    owner = owner_email(institution)
    to = unique_addresses([credential.submitted_by_email]) or unique_addresses([owner])
    if not to:
        return
    cc = [address for address in unique_addresses([owner]) if address.lower() not in {t.lower() for t in to}]
    try:
        send_email("receipt", to=to, cc=cc, reply_to=reply_to(institution), context=receipt_context(credential))
    except Exception as exc:  # any mail failure: the key is stored either way
        logger.warning("Receipt for key %s not sent: %s", credential_id, type(exc).__name__)
