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
from django.utils import timezone

from credentials.cd2 import CheckResult, Verdict, check_key_with_settings
from credentials.emails import build_email
from credentials.models import AuditEvent, CD2Credential
from credentials.reminders import SEND_ERRORS, admin_url, institution_today, reminder_recipients
from credentials.services import audit_record, credential_set_status, submission_link_create
from institutions.models import Institution

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


def _served_active_keys(institution_slug: str | None = None):
    keys = CD2Credential.objects.filter(
        status=CD2Credential.Status.ACTIVE, institution__status__in=Institution.SERVED_STATUSES
    )
    if institution_slug:
        keys = keys.filter(institution__slug=institution_slug)
    return keys.order_by("pk")


def rate_limit_wait(result: CheckResult) -> float | None:
    """Seconds to wait before checking again after a 429, or None when it was not rate limited."""
    if result.verdict is not Verdict.UNAVAILABLE or result.status_code != 429:
        return None
    wait = result.retry_after if result.retry_after is not None else DEFAULT_RATE_LIMIT_WAIT
    return min(max(wait, 1.0), MAX_RATE_LIMIT_WAIT)


def credential_verify(*, credential_id: int, now: dt.datetime | None = None) -> CheckResult | None:
    """Check one active key now and record the result; None if the key is no longer active.

    401/403: the key is marked invalid, an audit event is written and the
    account owner and contacts get a fresh link. Anything else that is not
    OK only updates last_verification: it is not a verdict on the key.
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
    stamp = f"{now:%Y-%m-%d %H:%M} UTC"
    if result.verdict is Verdict.OK:
        CD2Credential.objects.filter(pk=credential.pk).update(
            last_verified_at=now, last_verification=result.summary[:200]
        )
    elif result.verdict is Verdict.UNAVAILABLE:
        text = f"{result.summary} at {stamp}: not a verdict on the key; checked again next run"
        CD2Credential.objects.filter(pk=credential.pk).update(last_verification=text[:200])
    else:
        _mark_invalid(credential=credential, result=result, now=now)
    logger.info("Checked key %s (%s): %s", credential.pk, credential.institution.slug, result.verdict.value)
    return result


def _mark_invalid(*, credential: CD2Credential, result: CheckResult, now: dt.datetime) -> None:
    with transaction.atomic():
        # Re-read under lock: a new key may have superseded this one meanwhile.
        locked = CD2Credential.objects.select_for_update().filter(pk=credential.pk).first()
        if locked is None or locked.status != CD2Credential.Status.ACTIVE:
            return
        locked.last_verified_at = now
        locked.last_verification = result.summary[:200]
        locked.save(update_fields=["last_verified_at", "last_verification"])
        credential_set_status(credential=locked, status=CD2Credential.Status.INVALID, reason=result.message, now=now)
        audit_record(
            kind=AuditEvent.Kind.KEY_INVALID,
            actor_label="system (daily key check)",
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
        transaction.on_commit(lambda: _tell_key_invalid(credential=credential, result=result, now=now))


def _tell_key_invalid(*, credential: CD2Credential, result: CheckResult, now: dt.datetime) -> None:
    """Mail contacts (owner in copy) a fresh link. Best effort: the status change stands either way."""
    institution = credential.institution
    to, cc = reminder_recipients(institution=institution)
    if not to:
        logger.warning("Key %s (%s) is invalid and nobody can be told", credential.pk, institution.slug)
        return
    owner = institution.account_owner
    try:
        with transaction.atomic():
            new_link = submission_link_create(institution=institution, reason="key invalid", now=now)
            new_link.link.sent_to = ", ".join([*to, *cc])
            new_link.link.save(update_fields=["sent_to"])
            context = {
                "institution": institution,
                "hint": credential.hint,
                "expires_on": credential.expires_on,
                "checked_on": institution_today(institution, now),
                "reason": result.message,
                "rejected": result.verdict is Verdict.REJECTED,
                "link_url": new_link.url,
                "link_expires_on": timezone.localtime(new_link.link.expires_at).date(),
                "owner": owner if owner is not None and owner.email else None,
                "key_name": settings.CD2_KEY_NAME,
                "recommended_expiry": settings.CD2_RECOMMENDED_EXPIRY,
                "admin_url": admin_url(institution),
            }
            build_email(
                "key-invalid",
                to=to,
                cc=cc,
                reply_to=[owner.email] if owner is not None and owner.email else [],
                context=context,
            ).send(fail_silently=False)
    except SEND_ERRORS as exc:
        logger.error(
            "Key %s (%s) is invalid; the mail to its contacts failed: %s",
            credential.pk,
            institution.slug,
            type(exc).__name__,
        )


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
    from credentials.tasks import verify_credential

    for index, credential_id in enumerate(credential_ids):
        # Fractional countdowns: rounding to whole seconds bunches the checks.
        verify_credential.apply_async(args=[credential_id], countdown=index * step)
    return len(credential_ids)


def credentials_verify_active(
    *, institution_slug: str | None = None, run_now: bool = False, spread_seconds: int | None = None
) -> VerifyRun:
    """Check every active key of served institutions.

    run_now=False (the beat task) queues one verify_credential task per key,
    with countdowns spread evenly over check_spread_seconds() (or exactly
    `spread_seconds`); above CHECK_BATCH_SIZE keys it queues one
    verify_credentials_batch task per batch instead, each due when its first
    check is, which then queues its checks the same distance apart.
    run_now=True (the command) checks here, one after the other, and
    collects the results.
    """
    run = VerifyRun()
    ids = list(_served_active_keys(institution_slug).values_list("pk", flat=True))
    if run_now:
        for credential_id in ids:
            result = credential_verify(credential_id=credential_id)
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

    from credentials.tasks import verify_credentials_batch

    spread = check_spread_seconds(keys=len(ids)) if spread_seconds is None else float(spread_seconds)
    step = spread / len(ids) if ids else 0.0
    if len(ids) <= CHECK_BATCH_SIZE:
        run.scheduled = credentials_verify_batch(credential_ids=ids, step=step)
    else:
        for start in range(0, len(ids), CHECK_BATCH_SIZE):
            batch = ids[start : start + CHECK_BATCH_SIZE]
            verify_credentials_batch.apply_async(args=[batch, step], countdown=start * step)
            run.scheduled += len(batch)
    logger.info("Scheduled %s key checks over %.0f s (%.3f s apart)", run.scheduled, spread, step)
    return run
