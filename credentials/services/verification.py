"""Continuous checks of active keys against CD2.

A key can die before its expiry date (an admin deletes or disables it at
identity.instructure.com). Every active key is re-checked daily with the same
client as the submission page; the checks are spread over a window so the
gateway never sees a burst. Only a verdict on the key (401, 403) changes its
status; the gateway's own trouble (network, 5xx, 429) changes nothing and is
tried again on the next run.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

from django.conf import settings
from django.db import transaction
from django.utils import timezone, translation
from django.utils.translation import gettext

from credentials.cd2 import CheckResult, Verdict, check_key_with_settings
from credentials.days import institution_today
from credentials.mail.context import admin_url
from credentials.mail.messages import build_email
from credentials.mail.recipients import greeting_name, reminder_addressees, reply_to
from credentials.models import AuditEvent, CD2Credential, Notice
from credentials.outgoing import Send, Skip
from credentials.selectors import served_active_keys
from credentials.services import alerts, jobs, notices
from credentials.services.audit import audit_record
from credentials.services.keys import (
    credential_check_record,
    credential_check_save,
    credential_set_status,
    new_key_request_stale,
)
from credentials.services.links import submission_link_create, submission_link_mark_sent
from credentials.services.submission import forbidden_reason

logger = logging.getLogger(__name__)

# A 429 without a usable Retry-After waits this long before the next try.
DEFAULT_RATE_LIMIT_WAIT = 60.0
# Never wait longer than this on a Retry-After: the next daily run comes anyway.
MAX_RATE_LIMIT_WAIT = 3600.0
# Gateway requests per key check: the login, then the table list.
REQUESTS_PER_CHECK = 2
# A queued check waits in the worker unacknowledged until its countdown; the
# broker re-delivers it after the visibility timeout, so every countdown stays
# below this share of it (the rest is slack for a busy worker).
SPREAD_SHARE_OF_VISIBILITY = 0.9
# Without a visibility timeout (the filesystem broker in development) the
# spread is still kept well inside the day between two runs.
DEFAULT_VISIBILITY_TIMEOUT = 12 * 3600
# The beat task queues one batch task per this many keys, each queuing its
# keys' checks when its turn comes: the beat task returns in moments, and a
# worker holds one batch's delayed checks at a time, not the whole day's.
CHECK_BATCH_SIZE = 1000


@dataclass
class VerifyRun:
    scheduled: int = 0
    checked: int = 0
    ok: int = 0
    invalid: int = 0
    unavailable: int = 0
    results: list[tuple[str, str, str]] = field(default_factory=list)  # (institution, hint, summary)


def rate_limit_wait(result: CheckResult) -> float | None:
    """Seconds to wait before checking again after a 429, or None when it was not rate limited."""
    if result.verdict is not Verdict.UNAVAILABLE or result.status_code != 429:
        return None
    wait = result.retry_after if result.retry_after is not None else DEFAULT_RATE_LIMIT_WAIT
    return min(max(wait, 1.0), MAX_RATE_LIMIT_WAIT)


def credential_verify(
    *, credential_id: int, now: dt.datetime | None = None, actor=None, actor_label: str = ""
) -> CheckResult | None:
    """Check one active key now and record the result; None if the key is no longer active.

    401/403: the key is marked invalid, an audit event is written and, in
    the same transaction, the outbox gets the notice that brings the
    contacts a fresh link (key_invalid_notice_write). Anything else only records
    the check: the gateway's trouble is not a verdict on the key. `actor` is
    the staff member who asked for the check (None: the daily run, or
    `actor_label` names who ran it).
    """
    now = now or timezone.now()
    credential = (
        CD2Credential.objects.select_related("institution__account_owner")
        .filter(pk=credential_id, status=CD2Credential.Status.ACTIVE)
        .first()
    )
    if credential is None:
        return None
    result = check_key_with_settings(client_id=credential.client_id, secret=credential.secret)
    if result.verdict in (Verdict.OK, Verdict.UNAVAILABLE):
        credential_check_save(credential=credential, check=result, now=now)
        if actor is not None:
            # The daily run's passing checks are in the key's columns; a staff member's is an act.
            audit_record(
                kind=AuditEvent.Kind.KEY_CHECKED,
                actor=actor,
                credential=credential,
                institution=credential.institution,
                reason=result.summary,
                detail={"verdict": result.verdict.value, "status_code": result.status_code, "hint": credential.hint},
            )
    else:
        _mark_invalid(credential=credential, result=result, now=now, actor=actor, actor_label=actor_label)
    logger.info("Checked key %s (%s): %s", credential.pk, credential.institution.slug, result.verdict.value)
    return result


def credential_recheck_invalid(*, credential_id: int, actor, now: dt.datetime | None = None) -> CheckResult | None:
    """Check a key marked invalid again, for a staff member ("Check key now" on a failing key); None if not invalid.

    Records what the check found and audits it as `actor`. The key stays
    invalid whatever the answer (a key never goes back to active: the
    customer hands it in again, or staff add it by hand), so a pass tells
    staff the key works again and what to do; nobody is mailed.
    """
    now = now or timezone.now()
    credential = (
        CD2Credential.objects.select_related("institution")
        .filter(pk=credential_id, status=CD2Credential.Status.INVALID)
        .first()
    )
    if credential is None:
        return None
    result = check_key_with_settings(client_id=credential.client_id, secret=credential.secret)
    credential_check_save(credential=credential, check=result, now=now)
    audit_record(
        kind=AuditEvent.Kind.KEY_CHECKED,
        actor=actor,
        credential=credential,
        institution=credential.institution,
        reason=result.summary,
        detail={"verdict": result.verdict.value, "status_code": result.status_code, "hint": credential.hint},
    )
    return result


def _mark_invalid(
    *, credential: CD2Credential, result: CheckResult, now: dt.datetime, actor=None, actor_label: str = ""
) -> None:
    with transaction.atomic():
        # Re-read under lock: a new key may have superseded this one meanwhile.
        locked = CD2Credential.objects.select_for_update().filter(pk=credential.pk).first()
        if locked is None or locked.status != CD2Credential.Status.ACTIVE:
            return
        locked.save(update_fields=credential_check_record(credential=locked, check=result, now=now))
        credential_set_status(credential=locked, status=CD2Credential.Status.INVALID, reason=result.message, now=now)
        audit_record(
            kind=AuditEvent.Kind.KEY_INVALID,
            actor=actor,
            actor_label="" if actor is not None else actor_label or "system (daily key check)",
            credential=locked,
            institution=credential.institution,
            reason=result.message,
            detail={
                "verdict": result.verdict.value,
                "status_code": result.status_code,
                "error_type": result.error_type,
                "hint": credential.hint,
            },
        )
        # The notice commits with the verdict; the outbox delivers it (and retries it).
        notices.notice_write(
            kind=Notice.Kind.KEY_INVALID,
            dedupe_key=f"key-invalid:{locked.pk}",
            now=now,
            day=institution_today(credential.institution, now),
            institution_id=locked.institution_id,
            credential_id=locked.pk,
            # The reason in English for staff; the mail says it again in the institution's language at sending.
            payload={
                "reason": refusal_for_customers(result),
                "rejected": result.verdict is Verdict.REJECTED,
                "error_type": result.error_type or "",
            },
        )
        alerts.key_check_failed_record(credential=locked, summary=result.summary, now=now)


def key_invalid_notice_write(*, notice: Notice, now: dt.datetime) -> Send | Skip:
    """The outbox's sender of "your key stopped working": the mail with a fresh link, or why not to send it.

    It goes to whom reminders go (mail.recipients.reminder_addressees: the
    contacts, Reply-To the account owner, who hears of it in the daily
    summary's failing checks) with a fresh link, made in the outbox's
    transaction that marks the notice sent, so a failed send leaves no
    unused link. Superseded, not sent, when a newer key arrived, the key
    was revoked or the institution paused before delivery
    (keys.new_key_request_stale).
    """
    credential = notice.credential
    institution = credential.institution
    stale = new_key_request_stale(credential=credential)
    if stale:
        return Skip(state=Notice.State.SUPERSEDED, reason=stale)
    to = reminder_addressees(institution=institution)
    if not to:
        logger.warning("Key %s (%s) is invalid and nobody can be told", credential.pk, institution.slug)
        return Skip(
            state=Notice.State.FAILED,
            reason="Nobody to send to: add a contact who receives reminders or an account owner.",
        )
    new_link = submission_link_create(institution=institution, reason="key invalid", now=now)
    submission_link_mark_sent(new_link=new_link, recipients=to)
    with translation.override(institution.language):
        # A notice written before the mails had languages keeps only its English reason.
        reason = notice.payload.get("reason", "")
        if "error_type" in notice.payload:
            rejected = bool(notice.payload.get("rejected"))
            reason = refusal_words(rejected=rejected, error_type=notice.payload["error_type"])
    context = {
        **new_link.context(),
        "hint": credential.hint,
        "expires_on": credential.expires_on,
        "checked_on": notice.day,
        "reason": reason,
        "rejected": bool(notice.payload.get("rejected")),
        "admin_url": admin_url(institution),
        "greeting_name": greeting_name(institution=institution, to=to),
    }
    message = build_email(
        "key-invalid", to=to, reply_to=reply_to(institution), context=context, language=institution.language
    )
    return Send(message=message, recipients=to)


def refusal_for_customers(result: CheckResult) -> str:
    """Why CD2 refused a key, for the customer's mail: in words, without status codes or the gateway's error id.

    Staff keep the full message (status reason, audit log); the id means nothing to a customer.
    """
    return refusal_words(rejected=result.verdict is not Verdict.FORBIDDEN, error_type=result.error_type)


def refusal_words(*, rejected: bool, error_type: str | None) -> str:
    """refusal_for_customers from what a notice keeps, in the active language."""
    if not rejected:
        return gettext("Instructure recognised the key, but %(reason)s.") % {"reason": forbidden_reason(error_type)}
    return gettext("Instructure no longer accepts its Client ID and Secret.")


def check_spread_seconds(*, keys: int) -> float:
    """Seconds to spread `keys` daily checks over, so the gateway sees at most its allowed rate.

    max(CD2_CHECK_SPREAD_SECONDS, 2 requests x keys / CD2_GATEWAY_REQUESTS_PER_SECOND),
    capped below the broker's visibility timeout. When even the cap is too
    short, a warning says how many keys and what rate the cap would need; the
    checks then run faster than the allowed rate and 429s are retried.
    """
    rate = float(settings.CD2_GATEWAY_REQUESTS_PER_SECOND)
    needed = REQUESTS_PER_CHECK * keys / rate if rate > 0 else 0.0
    options = getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", None) or {}
    cap = SPREAD_SHARE_OF_VISIBILITY * float(options.get("visibility_timeout", DEFAULT_VISIBILITY_TIMEOUT))
    if needed > cap:
        logger.warning(
            "%s active keys need %.0f s of checks at %s gateway requests/s, more than the %.0f s the broker's "
            "visibility timeout allows: checking them in %.0f s needs %.1f requests/s",
            keys,
            needed,
            rate,
            cap,
            cap,
            REQUESTS_PER_CHECK * keys / cap,
        )
    return min(max(float(settings.CD2_CHECK_SPREAD_SECONDS), needed), cap)


def credentials_verify_batch(*, credential_ids: list[int], step: float) -> int:
    """Queue one check per key, `step` seconds apart from now (a batch of the daily run)."""
    for index, credential_id in enumerate(credential_ids):
        # Fractional countdowns: rounding to whole seconds bunches the checks.
        jobs.job_enqueue(jobs.VERIFY_CREDENTIAL, args=(credential_id,), countdown=index * step)
    return len(credential_ids)


def credentials_verify_active(
    *,
    institution_slug: str | None = None,
    run_now: bool = False,
    spread_seconds: int | None = None,
    actor=None,
    actor_label: str = "",
) -> VerifyRun:
    """Check every active key of served institutions.

    run_now=False (the beat task) queues one verify_credential task per key,
    with countdowns spread evenly over check_spread_seconds() (or exactly
    `spread_seconds`); above CHECK_BATCH_SIZE keys it queues one
    verify_credentials_batch task per batch instead, each due when its first
    check is, which then queues its checks the same distance apart.
    run_now=True (the command) checks here, one after the other, and
    collects the results, each check audited as `actor` (a person who ran
    the command with --as) or under `actor_label`.
    """
    run = VerifyRun()
    ids = list(served_active_keys(institution_slug=institution_slug).values_list("pk", flat=True))
    if run_now:
        for credential_id in ids:
            result = credential_verify(credential_id=credential_id, actor=actor, actor_label=actor_label)
            if result is None:
                continue
            run.checked += 1
            if result.verdict is Verdict.OK:
                run.ok += 1
            elif result.verdict is Verdict.UNAVAILABLE:
                run.unavailable += 1
            else:
                run.invalid += 1
            key = CD2Credential.objects.select_related("institution").get(pk=credential_id)
            run.results.append((key.institution.name, key.hint, result.summary))
        return run

    spread = check_spread_seconds(keys=len(ids)) if spread_seconds is None else float(spread_seconds)
    step = spread / len(ids) if ids else 0.0
    if len(ids) <= CHECK_BATCH_SIZE:
        run.scheduled = credentials_verify_batch(credential_ids=ids, step=step)
    else:
        for start in range(0, len(ids), CHECK_BATCH_SIZE):
            batch = ids[start : start + CHECK_BATCH_SIZE]
            jobs.job_enqueue(jobs.VERIFY_CREDENTIALS_BATCH, args=(batch, step), countdown=start * step)
            run.scheduled += len(batch)
    logger.info("Scheduled %s key checks over %.0f s (%.3f s apart)", run.scheduled, spread, step)
    return run
