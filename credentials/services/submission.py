"""A key handed over: validate, check live against CD2, store; re-check later when CD2 could not say yes.

Both doors that take a key, a customer's submission link and staff entering
a key in the admin, call `credential_submit` and differ only in the `Door`
they pass (who hands the key over, and the link if any). A key goes through
`validate_key_input`, then the blind-index lookup (a key belongs to one
institution), then the live check against CD2 (`cd2.check_key_with_settings`),
and only then is stored:

- On file for another institution: refused, nothing stored, the link still
  works, both institutions' account owners told (possible mix-up), but only
  once the key is proved: CD2 accepted it (or answered 403, "real key, no
  CD2 access"), or CD2 could not be asked and the Secret is the one on file.
  Anyone else (a link holder trying Client IDs with a made-up Secret) gets,
  byte for byte, the answer of a key Instructure refused, and nobody is
  mailed: the page is no oracle of which Client IDs we hold.
  On file for this institution: "we already have this key", nothing changes.
  The constraint one_row_per_client_id settles a race between two doors.
- CD2 accepts it: stored as the active key, the link is used up.
- CD2 rejects it (401): nothing is stored and the link still works, so the
  customer can correct it while the Instructure window is still open.
- Anything else that is not about the key (403 "not enabled", maintenance,
  5xx, 429, timeouts): stored as pending_verification with its
  PendingReason and checked again (verify_pending_credential with backoff;
  a 403 "not enabled" daily for PENDING_NOT_ENABLED_DAYS by the hourly
  sweep), so nothing a customer typed is lost to a refusal they cannot fix
  by typing. Reminders about the old key pause while the new one waits.

The Secret lives only in local variables here (marked sensitive for Django's
error reports); only ids go to Celery, only hints to logs, audit and mail.

Every mail a decision here makes (the receipt, the key-conflict notice,
"your new key does not work") is a Notice written in the decision's
transaction and delivered by the outbox (services/outbox.py), which
renders it from ids then and retries it while the mail server is down.
"""

from __future__ import annotations

import datetime as dt
import enum
import hmac
import logging
from dataclasses import dataclass, field

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone, translation
from django.utils.translation import gettext
from django.views.decorators.debug import sensitive_variables

from credentials.cd2 import CheckResult, Verdict, check_key_with_settings
from credentials.days import institution_today
from credentials.mail.context import admin_url
from credentials.mail.messages import build_email
from credentials.mail.recipients import (
    greeting_name,
    key_conflict_recipients,
    mail_owner,
    owner_email,
    reply_to,
    unique_addresses,
    without,
)
from credentials.mail.wording import customer_message
from credentials.models import AuditEvent, CD2Credential, Notice, PendingReason, SubmissionLink
from credentials.outgoing import Send, Skip
from credentials.selectors import reminder_days_before
from credentials.services import alerts, jobs, metrics, notices
from credentials.services.audit import audit_record
from credentials.services.keys import (
    credential_create,
)
from credentials.validators import CleanKey, validate_key_input
from institutions.models import Institution, email_for_storage

logger = logging.getLogger(__name__)

# The first re-check of a key the gateway could not check waits a minute:
# an immediate retry would most likely meet the same outage.
FIRST_RECHECK_SECONDS = 60

# How long a key Instructure answers "not enabled" (403) for is re-checked
# daily before staff decide (selectors.pending_credentials_due).
PENDING_NOT_ENABLED_DAYS = 30


class Result(enum.StrEnum):
    ACCEPTED = "accepted"  # checked and active
    PENDING = "pending"  # stored; CD2 could not say yes yet (PendingReason); re-checked later
    INVALID = "invalid"  # failed our validation; nothing stored
    REJECTED = "rejected"  # CD2 said 401; nothing stored
    TAKEN = "taken"  # the key is on file for another institution; nothing stored
    ALREADY_HAVE = "already_have"  # the key is on file for this institution; nothing changed
    LINK_UNUSABLE = "link_unusable"  # unknown, expired, revoked or (just) used link


# What a refusal is about, for the page's error box title.
REFUSED_BY_INSTRUCTURE = "instructure"
KEY_ON_FILE = "on_file"


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
        return self.credential is not None and self.result in (Result.ACCEPTED, Result.PENDING)

    @property
    def cause(self) -> str:
        """What the refusal is about: Instructure refused the key, the key is on file, or "" (a field to fix)."""
        if self.result is Result.REJECTED:
            return REFUSED_BY_INSTRUCTURE
        if self.result in (Result.TAKEN, Result.ALREADY_HAVE):
            return KEY_ON_FILE
        return ""


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
            submitted_by_email=email_for_storage(submitted_by_email),
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


def pending_reason_of(check: CheckResult) -> str:
    """Why a key this check did not accept or reject is stored pending (a PendingReason value)."""
    if check.verdict is Verdict.FORBIDDEN:
        if check.error_type == "AccountUnderMaintenance":
            return PendingReason.MAINTENANCE
        return PendingReason.NOT_ENABLED
    return PendingReason.UNAVAILABLE


def forbidden_reason(error_type: str | None) -> str:
    """Why Instructure answered 403 "not enabled", in words, by its error type."""
    return customer_message("forbidden_reason", error_type=error_type or "")


def pending_next_steps(credential: CD2Credential, *, error_type: str | None = None) -> str:
    """What happens next to a pending key, and what (if anything) the customer must do, in words."""
    reason = PendingReason(credential.pending_reason or PendingReason.UNAVAILABLE)
    return customer_message(
        f"pending_next_step_{reason.value}",
        reason=forbidden_reason(error_type),
        domain=credential.institution.canvas_domain or gettext("your Canvas account"),
        days=PENDING_NOT_ENABLED_DAYS,
    )


def rejected_message() -> str:
    """What the customer reads when CD2 refuses the key (401): on the page, nothing stored."""
    return customer_message("rejected")


def already_have_message(*, existing: CD2Credential, institution: Institution, by_link: bool) -> str:
    """What the door reads when the key handed over is already on file for this institution."""
    return customer_message(
        "already_have",
        institution=institution.name,
        hint=existing.hint,
        status=existing.status,
        status_display=existing.get_status_display(),
        by_link=by_link,
    )


def taken_message(*, institution: Institution) -> str:
    """What the door reads when the key handed over is on file for another institution."""
    return customer_message(
        "taken",
        institution=institution.name,
        domain=institution.canvas_domain or gettext("your Canvas"),
        key_name=settings.CD2_KEY_NAME,
    )


@sensitive_variables("secret", "key", "client_id")
def _validate(
    *, client_id: str, secret: str, expires_on, today: dt.date, short_expiry_confirmed: bool
) -> CleanKey | SubmitOutcome:
    try:
        return validate_key_input(
            client_id=client_id,
            secret=secret,
            expires_on=expires_on,
            today=today,
            short_expiry_confirmed=short_expiry_confirmed,
        )
    except ValidationError as exc:
        return SubmitOutcome(Result.INVALID, errors=_error_messages(exc))


def _on_file(key: CleanKey) -> CD2Credential | None:
    """The stored key with this Client ID (any status, any institution), without its secrets; None if none."""
    return (
        CD2Credential.objects.without_secrets()
        .select_related("institution")
        .filter(client_id_index=key.index)
        .order_by("pk")
        .first()
    )


def _already_have(*, door: Door, existing: CD2Credential, check: CheckResult | None = None) -> SubmitOutcome:
    """This institution's own key handed over again: "we already have it", nothing changes."""
    message = already_have_message(existing=existing, institution=door.institution, by_link=door.by_link)
    return SubmitOutcome(Result.ALREADY_HAVE, credential=existing, errors={"__all__": [message]}, check=check)


@sensitive_variables("key", "stored")
def key_proved(*, key: CleanKey, on_file: CD2Credential, check: CheckResult) -> bool:
    """Whether whoever handed this key over showed they hold it, not only its Client ID.

    CD2 accepted it (a 403 says the key is real too), or CD2 could not be
    asked and the Secret is the one on file (compared in constant time).
    """
    if check.verdict in (Verdict.OK, Verdict.FORBIDDEN):
        return True
    if check.verdict is not Verdict.UNAVAILABLE:
        return False
    stored = CD2Credential.objects.only("secret").get(pk=on_file.pk).secret
    return hmac.compare_digest(stored.encode(), key.secret.encode())


def _on_file_elsewhere(*, door: Door, key: CleanKey, on_file: CD2Credential, check: CheckResult) -> SubmitOutcome:
    """A Client ID on file for another institution: "on file" to whoever proved the key, "refused" to anyone else.

    Proved: refused, audited, both account owners told once the refusal's
    transaction commits. Not proved: the answer of a key Instructure refused
    (`_rejected`), the same bytes on the page; audited for staff, no mail.
    """
    institution = door.institution
    detail = {"hint": key.hint, "check": check.summary, "on_file_for": on_file.institution_id}
    if door.link is not None:
        detail["link_id"] = door.link.pk
    if not key_proved(key=key, on_file=on_file, check=check):
        detail["outcome"] = "on_file_not_proved"
        reason = (
            f"Refused: this Client ID is on file for {on_file.institution.name}, and the key was not proved "
            "(CD2 refused it, or could not be asked and the Secret differs); answered as a key Instructure "
            "refused; nothing stored, nobody mailed."
        )
        return _rejected(door=door, check=check, detail=detail, reason=reason)
    detail["outcome"] = Result.TAKEN.value
    with transaction.atomic():
        audit_record(
            kind=AuditEvent.Kind.SUBMISSION,
            institution=institution,
            credential=on_file,
            ip_address=door.ip_address,
            reason=f"Refused: this Client ID is on file for {on_file.institution.name}; nothing stored.",
            detail=detail,
            **door.audit_who(),
        )
        _key_conflict_write(door=door, on_file=on_file)
    logger.warning(
        "Key submission for institution %s refused: the Client ID is on file for institution %s",
        institution.pk,
        on_file.institution_id,
    )
    return SubmitOutcome(Result.TAKEN, errors={"__all__": [taken_message(institution=institution)]}, check=check)


def _rejected(*, door: Door, check: CheckResult, detail: dict, reason: str) -> SubmitOutcome:
    """The answer of a key Instructure refused (401): nothing stored, the link still works; audited."""
    audit_record(
        kind=AuditEvent.Kind.SUBMISSION,
        institution=door.institution,
        ip_address=door.ip_address,
        reason=reason,
        detail=detail,
        **door.audit_who(),
    )
    logger.info("Key submission for institution %s refused: %s", door.institution.pk, check.summary)
    return SubmitOutcome(Result.REJECTED, errors={"__all__": [rejected_message()]}, check=check)


def _key_conflict_write(*, door: Door, on_file: CD2Credential) -> None:
    """Write the notice telling both institutions' account owners of one key handed over for both.

    Once per key and institution: the same key handed over again for the
    same institution (a customer retrying) is audited again but mails no one
    a second time.
    """
    notices.notice_write(
        kind=Notice.Kind.KEY_CONFLICT,
        dedupe_key=f"key-conflict:{on_file.pk}:{door.institution.pk}",
        now=timezone.now(),
        institution_id=door.institution.pk,
        credential_id=on_file.pk,
        payload={
            "by_link": door.by_link,
            "submitted_by": door.submitted_by,
            "submitted_by_email": door.submitted_by_email,
        },
    )
    alerts.key_conflict_record(on_file=on_file, institution=door.institution, now=timezone.now())


def key_conflict_notice_write(*, notice: Notice, now: dt.datetime) -> Send | Skip:
    """The outbox's sender of a key conflict: the note to both account owners (possible mix-up).

    `notice.credential` is the key on file, `notice.institution` the one it
    was handed over for.
    """
    on_file = notice.credential
    submitted = Institution.objects.select_related("account_owner").get(pk=notice.institution_id)
    recipients = key_conflict_recipients(institutions=[on_file.institution, submitted])
    if not recipients:
        reason = "Nobody to tell: neither institution has an account owner and STAFF_DIGEST_RECIPIENTS is empty."
        logger.warning("A key was refused as on file for another institution; nobody to tell")
        return Skip(state=Notice.State.FAILED, reason=reason)
    context = {
        "hint": on_file.hint,
        "submitted": submitted,
        "submitted_url": admin_url(submitted),
        "on_file": on_file.institution,
        "on_file_url": admin_url(on_file.institution),
        "on_file_status": on_file.get_status_display().lower(),
        "by_link": bool(notice.payload.get("by_link")),
        "submitted_by": notice.payload.get("submitted_by", ""),
        "submitted_by_email": notice.payload.get("submitted_by_email", ""),
    }
    return Send(message=build_email("key-conflict", to=recipients, context=context), recipients=recipients)


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


@sensitive_variables("secret", "client_id")
def credential_submit(
    *,
    door: Door,
    client_id: str,
    secret: str,
    expires_on,
    today: dt.date | None = None,
    short_expiry_confirmed: bool = False,
) -> SubmitOutcome:
    """Take a key through a door (_submit) and count the outcome (metrics: cd2_submissions_total)."""
    outcome = _submit(
        door=door,
        client_id=client_id,
        secret=secret,
        expires_on=expires_on,
        today=today,
        short_expiry_confirmed=short_expiry_confirmed,
    )
    metrics.metric_count(metrics.SUBMISSIONS, labels={"outcome": outcome.result.value})
    return outcome


@sensitive_variables("secret", "key", "client_id")
def _submit(
    *,
    door: Door,
    client_id: str,
    secret: str,
    expires_on,
    today: dt.date | None,
    short_expiry_confirmed: bool,
) -> SubmitOutcome:
    """Take a key through a door: validate, look it up, check live, store, use up the link (if any).

    The link is claimed with a conditional UPDATE (used_at IS NULL) in the
    same transaction that stores the key, so of several submissions racing
    on one link exactly one stores a key; the others get LINK_UNUSABLE. Two
    doors racing with one key for two institutions meet at the constraint
    one_row_per_client_id: the loser's transaction (its link claim too) is
    rolled back and it gets the on-file answer (if it proved the key). A
    refusal stores nothing but is audited: staff can see a customer
    struggling (or someone guessing).
    """
    if door.institution is None:
        return SubmitOutcome(Result.LINK_UNUSABLE)
    institution = door.institution
    key = _validate(
        client_id=client_id,
        secret=secret,
        expires_on=expires_on,
        today=today or institution_today(institution, timezone.now()),
        short_expiry_confirmed=short_expiry_confirmed,
    )
    if isinstance(key, SubmitOutcome):
        return key
    on_file = _on_file(key)
    if on_file is not None and on_file.institution_id == institution.pk:
        return _already_have(door=door, existing=on_file)

    # Asked even for a Client ID on file elsewhere: only CD2's answer (or the
    # Secret on file, when CD2 cannot answer) may tell that it is on file.
    check = check_key_with_settings(client_id=key.client_id, secret=key.secret)
    if on_file is not None:
        return _on_file_elsewhere(door=door, key=key, on_file=on_file, check=check)
    detail = {"hint": key.hint, "check": check.summary, "outcome": check.verdict.value}
    if door.link is not None:
        detail["link_id"] = door.link.pk
    if check.verdict is Verdict.REJECTED:
        return _rejected(door=door, check=check, detail=detail, reason="Refused by Canvas Data 2; nothing stored.")

    try:
        return _store(door=door, key=key, check=check, detail=detail)
    except IntegrityError:
        # Another door stored this Client ID after our lookup: everything of
        # ours rolled back (the link is not used up); answer as if we had
        # found it on file in the first place.
        on_file = _on_file(key)
        if on_file is None:
            raise
        if on_file.institution_id == institution.pk:
            return _already_have(door=door, existing=on_file, check=check)
        return _on_file_elsewhere(door=door, key=key, on_file=on_file, check=check)


@sensitive_variables("key")
def _store(*, door: Door, key: CleanKey, check: CheckResult, detail: dict) -> SubmitOutcome:
    institution = door.institution
    if check.verdict is Verdict.OK:
        status, pending_reason = CD2Credential.Status.ACTIVE, ""
    else:
        status, pending_reason = CD2Credential.Status.PENDING_VERIFICATION, pending_reason_of(check)
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
            pending_reason=pending_reason,
            now=now,
        )
        if status == CD2Credential.Status.ACTIVE:
            reason = "Checked and active."
        else:
            reason = f"Stored pending: {PendingReason(pending_reason).label}."
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
            receipt_write(credential=credential, now=now, error_type=check.error_type)
        if status == CD2Credential.Status.PENDING_VERIFICATION and pending_reason != PendingReason.NOT_ENABLED:
            # "Not enabled" waits for Instructure, not for an outage: the
            # hourly sweep checks it again daily (pending_credentials_due).
            _queue_recheck(credential.pk)
    logger.info("Key %s stored for institution %s as %s (%s)", credential.pk, institution.pk, status, check.summary)
    return SubmitOutcome(
        Result.ACCEPTED if status == CD2Credential.Status.ACTIVE else Result.PENDING,
        credential=credential,
        check=check,
    )


# --------------------------------------------------------------------------
# Receipts
# --------------------------------------------------------------------------


def reminder_dates(expires_on: dt.date, *, today: dt.date) -> list[dt.date]:
    """The dates the expiry reminders for a key will go out, soonest first (future ones only)."""
    dates = {expires_on - dt.timedelta(days=days) for days in reminder_days_before()}
    return sorted(day for day in dates if day > today)


def receipt_context(
    credential: CD2Credential, *, error_type: str | None = None, now: dt.datetime | None = None
) -> dict:
    institution = credential.institution
    pending = credential.status == CD2Credential.Status.PENDING_VERIFICATION
    today = institution_today(institution, now or timezone.now())
    return {
        "credential": credential,
        "institution": institution,
        "pending": pending,
        "pending_reason": credential.pending_reason if pending else "",
        "next_steps": pending_next_steps(credential, error_type=error_type) if pending else "",
        "reminder_dates": reminder_dates(credential.expires_on, today=today),
        "owner": mail_owner(institution),
    }


def receipt_write(*, credential: CD2Credential, now: dt.datetime, error_type: str | None = None) -> int | None:
    """Write the receipt's notice in the transaction that stores (or activates) the key.

    One receipt per key and status it announces: "stored, checked and
    active", or "stored, check pending" and later "now active". The outbox
    delivers it; a mail server that is down delays the receipt, never the key.
    Returns the notice's id, None when this receipt was already written.
    """
    return notices.notice_write(
        kind=Notice.Kind.RECEIPT,
        dedupe_key=f"receipt:{credential.pk}:{credential.status}",
        now=now,
        day=institution_today(credential.institution, now),
        institution_id=credential.institution_id,
        credential_id=credential.pk,
        payload={"status": credential.status, "error_type": error_type or ""},
    )


def receipt_notice_write(*, notice: Notice, now: dt.datetime) -> Send | Skip:
    """The outbox's sender of a receipt (no secret, no Client ID beyond its hint): the mail, or why not.

    To the submitter (else the account owner), the owner in copy. A receipt
    speaks of the key's status when it was written: if the key has moved on
    by delivery (a pending key checked since, which writes its own "now
    active" receipt or refusal; an active key replaced or revoked), it is
    superseded rather than saying what is no longer true.
    """
    credential = notice.credential
    institution = credential.institution
    announced = notice.payload.get("status")
    if credential.status != announced:
        return Skip(
            state=Notice.State.SUPERSEDED, reason=f"Not sent: the key is {credential.get_status_display().lower()} now."
        )
    owner = owner_email(institution)
    to = unique_addresses([credential.submitted_by_email]) or unique_addresses([owner])
    if not to:
        return Skip(
            state=Notice.State.CANCELLED, reason="Nobody to send to: no submitter address and no account owner."
        )
    cc = without([owner], excluded=to)
    with translation.override(institution.language):
        context = receipt_context(credential, error_type=notice.payload.get("error_type") or None, now=now)
    context["greeting_name"] = greeting_name(institution=institution, to=to, known=credential.submitted_by)
    message = build_email(
        "receipt", to=to, cc=cc, reply_to=reply_to(institution), context=context, language=institution.language
    )
    return Send(message=message, recipients=[*to, *cc])
