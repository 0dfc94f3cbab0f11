"""Re-checks of keys stored pending: CD2 could not say yes when the key was handed over.

A key the gateway could not check (down, 5xx, 429, a timeout, 403 "not
enabled") is stored as pending_verification by services/submission.py and
checked again here: by its task with backoff (verify_pending_credential),
and by the hourly sweep (a 403 "not enabled" daily for
PENDING_NOT_ENABLED_DAYS). CD2 accepts it: it becomes the active key and
the submitter gets a receipt. CD2 refuses it: it is invalid, and the people
on file get "your new key does not work" with a fresh link (a submitter not
on file hears the outcome without one). Anything else: it stays pending.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging

from django.db import transaction
from django.utils import timezone, translation
from django.views.decorators.debug import sensitive_variables

from credentials.cd2 import CheckResult, Verdict, check_key_with_settings
from credentials.days import institution_today
from credentials.mail.messages import build_email
from credentials.mail.recipients import greeting_name, link_recipients, mail_owner, reply_to, without
from credentials.mail.wording import customer_message
from credentials.models import AuditEvent, CD2Credential, Notice, PendingReason
from credentials.outgoing import Send, Skip
from credentials.services import alerts, notices
from credentials.services.audit import audit_record
from credentials.services.keys import (
    credential_activate,
    credential_check_record,
    credential_set_status,
    credential_supersede,
    new_key_request_stale,
)
from credentials.services.links import submission_link_create, submission_link_mark_sent
from credentials.services.submission import pending_reason_of, receipt_write

logger = logging.getLogger(__name__)

# Who a "your new key does not work" notice is for (Notice.payload["audience"]).
AUDIENCE_ON_FILE = "on_file"
AUDIENCE_SUBMITTER = "submitter"


def recheck_rejected_message() -> str:
    """Why a key re-checked later is refused (401), for the mail: the customer is no longer on the page."""
    return customer_message("recheck_rejected")


class VerifyResult(enum.StrEnum):
    ACTIVE = "active"
    INVALID = "invalid"
    UNAVAILABLE = "unavailable"  # try again later
    WAITING = "waiting"  # CD2 not enabled (403): still pending, checked again daily by the sweep
    SUPERSEDED = "superseded"  # a newer key became active while this one waited
    SKIPPED = "skipped"  # gone, or no longer pending (already handled)


@sensitive_variables()
def credential_verify_pending(*, credential_id: int, actor=None) -> str:
    """Check a pending_verification key again; returns a VerifyResult value.

    OK: the key becomes active and the submitter gets a receipt. Rejected
    (401): the key becomes invalid, the people on file get a fresh link and
    a submitter not on file a notice without one (notices written in the
    same transaction, delivered by the outbox); the old key's reminders
    resume. 403 "not enabled": still pending (WAITING), checked
    again daily by the sweep. Maintenance or unavailable: only the attempt
    is counted; the Celery task retries with backoff.
    `actor` is the staff member who pressed "Check key now" (None: the
    re-check task).
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
        fields = credential_check_record(credential=locked, check=check, now=now, count_attempt=True)
        if check.verdict is Verdict.FORBIDDEN:
            locked.pending_reason = pending_reason_of(check)
            fields.append("pending_reason")
        locked.save(update_fields=fields)

        if check.verdict is Verdict.OK:
            return _activate_checked(locked, check, now, actor=actor)
        if check.verdict is Verdict.REJECTED:
            return _invalidate_checked(locked, check, now, actor=actor)
        if actor is not None:
            audit_record(
                kind=AuditEvent.Kind.KEY_CHECKED,
                actor=actor,
                credential=locked,
                reason=check.summary,
                detail={"hint": locked.hint, "outcome": check.verdict.value},
            )
        if locked.pending_reason == PendingReason.NOT_ENABLED and check.verdict is Verdict.FORBIDDEN:
            return VerifyResult.WAITING
        # Maintenance is a 403 but passes; outages pass too.
        return VerifyResult.UNAVAILABLE


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
        credential_supersede(
            credential=credential, reason="A newer key became active before this one could be checked.", now=now
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
    receipt_write(credential=credential, now=now)
    return VerifyResult.ACTIVE


def _invalidate_checked(credential: CD2Credential, check: CheckResult, now: dt.datetime, *, actor=None) -> str:
    institution = credential.institution
    credential_set_status(
        credential=credential,
        status=CD2Credential.Status.INVALID,
        reason=f"Refused by CD2 on re-check: {check.summary}",
        now=now,
    )
    audit_record(
        kind=AuditEvent.Kind.KEY_INVALID,
        **_who(actor),
        credential=credential,
        reason="Refused by Canvas Data 2 when checked after an outage.",
        detail={"hint": credential.hint, "check": check.summary},
    )
    # The outbox tells the people on file, with a new link
    # (mail.recipients.link_recipients), and whoever typed an address not on
    # file into the form, without one (key_rejected_notice_write).
    audiences = [AUDIENCE_ON_FILE]
    if without([credential.submitted_by_email], excluded=link_recipients(institution=institution)):
        audiences.append(AUDIENCE_SUBMITTER)
    for audience in audiences:
        notices.notice_write(
            kind=Notice.Kind.KEY_REJECTED,
            dedupe_key=f"key-rejected:{credential.pk}:{audience}",
            now=now,
            day=institution_today(institution, now),
            institution_id=institution.pk,
            credential_id=credential.pk,
            payload={"audience": audience},
        )
    alerts.key_check_failed_record(credential=credential, summary=check.summary, now=now)
    return VerifyResult.INVALID


def key_rejected_notice_write(*, notice: Notice, now: dt.datetime) -> Send | Skip:
    """The outbox's sender of "your new key does not work": the mail, or why not to send it.

    Audience AUDIENCE_ON_FILE: the people on file get a fresh link, made in the
    transaction that marks the notice sent. AUDIENCE_SUBMITTER: a submitter
    not on file hears the outcome without a link (a link goes only to
    people staff put on file). Superseded like "your key stopped working"
    (keys.new_key_request_stale).
    """
    credential = notice.credential
    institution = credential.institution
    stale = new_key_request_stale(credential=credential)
    if stale:
        return Skip(state=Notice.State.SUPERSEDED, reason=stale)
    recipients = link_recipients(institution=institution)
    with translation.override(institution.language):
        message = recheck_rejected_message()
    base = {
        "credential": credential,
        "message": message,
        "rejected": True,
        "institution": institution,
    }
    if notice.payload.get("audience") == AUDIENCE_SUBMITTER:
        to = without([credential.submitted_by_email], excluded=recipients)
        if not to:
            reason = "Not sent: the submitter is on file now and gets the mail with the new link."
            return Skip(state=Notice.State.CANCELLED, reason=reason)
        context = {
            **base,
            "owner": mail_owner(institution),
            "link_sent_to_contacts": bool(recipients),
            "greeting_name": greeting_name(institution=institution, to=to, known=credential.submitted_by),
        }
        message = build_email(
            "submission-rejected",
            to=to,
            reply_to=reply_to(institution),
            context=context,
            language=institution.language,
        )
        return Send(message=message, recipients=to)
    if not recipients:
        reason = "Nobody on file to send a new link to: add a contact who receives reminders or an account owner."
        logger.warning("Key %s refused on re-check; nobody on file for institution %s", credential.pk, institution.pk)
        return Skip(state=Notice.State.FAILED, reason=reason)
    # Made in the outbox's transaction: rolled back with a failed send.
    new_link = submission_link_create(institution=institution, reason="rejected", now=now)
    submission_link_mark_sent(new_link=new_link, recipients=recipients)
    message = build_email(
        "submission-rejected",
        to=recipients,
        reply_to=reply_to(institution),
        context={**new_link.context(), **base, "greeting_name": greeting_name(institution=institution, to=recipients)},
        language=institution.language,
    )
    return Send(message=message, recipients=recipients)
