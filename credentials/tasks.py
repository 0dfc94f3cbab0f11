"""Celery tasks: thin doors into the services.

A task takes ids (or an email address), never a model instance or a secret:
arguments sit in the broker in plain text. It re-reads the rows, calls one
service and returns a small value. Each task is registered under its name in
services/jobs.py, which is how services queue them without importing this
module.
"""

from __future__ import annotations

import logging

from celery import shared_task
from django.db import InterfaceError, OperationalError

from credentials.selectors import checks_requested_due, pending_credentials_due
from credentials.services import alerts, digest, health, jobs, links, metrics, outbox, pending, reminders, verification

logger = logging.getLogger(__name__)


class CD2StillUnavailable(Exception):
    """The CD2 gateway could not check a pending key yet; Celery retries with backoff."""


# Backoff 1, 2, 4, 8 ... minutes, capped at 6 hours, each with full jitter
# (so keys stored during one outage do not all return at once): 12 retries
# span up to about 26 hours, half that on average, enough to outlast a
# maintenance window. The broker's visibility timeout (settings) is longer
# than the longest countdown. After the last retry the key stays pending,
# which staff see in the admin and the digest.
@shared_task(
    name=jobs.VERIFY_PENDING_CREDENTIAL,
    autoretry_for=(CD2StillUnavailable,),
    retry_backoff=60,
    retry_backoff_max=6 * 3600,
    retry_jitter=True,
    max_retries=12,
)
def verify_pending_credential(credential_id: int) -> str:
    """Re-check a key stored while CD2 was unavailable (pending.credential_verify_pending)."""
    result = pending.credential_verify_pending(credential_id=credential_id)
    if result == pending.VerifyResult.UNAVAILABLE:
        raise CD2StillUnavailable(f"CD2 still unavailable for key {credential_id}")
    return str(result)


@shared_task
def verify_pending_credentials() -> int:
    """Hourly sweep: queue a re-check for pending keys whose own re-check was lost or gave up,
    and the checks a pipeline asked for (API sync report) whose task was lost."""
    with health.job_run(health.JOB_VERIFY_PENDING) as counts:
        due = pending_credentials_due()
        for credential_id in due:
            verify_pending_credential.delay(credential_id)
        requested = checks_requested_due()
        for credential_id in requested:
            verify_credential.delay(credential_id)
        counts["queued"] = len(due)
        counts["requested"] = len(requested)
    return len(due) + len(requested)


# "Lost the link?" requests are outbox notices now (the page stores one and
# deliver_notice answers it); this name stays registered for messages queued
# before that change: it stores the request under its id (once, however
# often the message is delivered) and answers it here.
@shared_task(name=jobs.REQUEST_SUBMISSION_LINK)
def request_submission_link(email: str, ip_address: str | None = None, request_id: str | None = None) -> None:
    """A "lost the link?" request queued by an older release."""
    notice_id = links.link_request_record(email=email, ip_address=ip_address, request_id=request_id)
    if notice_id is None:
        return
    outbox.notice_deliver(notice_id=notice_id)
    for answer_id in links.link_request_answers(request_notice_id=notice_id):
        outbox.notice_deliver(notice_id=answer_id)


# Bulk links are outbox notices now (deliver_notice); this name stays
# registered for messages queued before that change: it delivers the
# item's notice, which its claim keeps to one send.
@shared_task(name=jobs.SEND_BATCH_LINK)
def send_batch_link(item_id: int) -> bool:
    """One institution of a bulk "send submission links" queued by an older release."""
    notice_id = links.link_batch_item_notice_id(item_id=item_id)
    return notice_id is not None and outbox.notice_deliver(notice_id=notice_id)


# --------------------------------------------------------------------------
# Expiry reminders, key checks and the staff digest
# --------------------------------------------------------------------------


# The daily and weekly beat jobs: a database that is down (or restarting)
# when beat fires fails the run before it decides anything (each decision is
# its own transaction); the run is tried again with backoff, the retry
# waiting in the broker, instead of a day (or a week) later. Ten tries span
# about three hours. The sweeps run often enough not to need it.
BEAT_JOB_RETRY = {
    "autoretry_for": (OperationalError, InterfaceError),
    "retry_backoff": 60,
    "retry_backoff_max": 30 * 60,
    "retry_jitter": True,
    "max_retries": 10,
}


@shared_task(**BEAT_JOB_RETRY)
def send_expiry_reminders() -> int:
    """Hourly (beat): decide the reminders due where it is past REMINDERS_HOUR (and those owners' summaries); queue.

    Then tell staff of keys that lapsed with no new key (once per key).
    """
    queued = reminders.reminders_send_due(scheduled=True).queued
    alerts.staff_alerts_keys_lapsed()
    return queued


# No Celery retry: a failed send goes back to the outbox with its next
# attempt, and the sweep queues it again then (for up to
# NOTICE_GIVE_UP_AFTER), so retries outlast an outage of days and survive
# a worker or broker restart.
@shared_task(name=jobs.DELIVER_NOTICE)
def deliver_notice(notice_id: int) -> bool:
    """Claim, render, send and record one outbox notice."""
    return outbox.notice_deliver(notice_id=notice_id)


@shared_task(name=jobs.DELIVER_NOTICES)
def deliver_notices(notice_ids: list[int]) -> int:
    """Claim, render, send and record a few outbox notices over one SMTP connection; how many were sent."""
    return outbox.notices_deliver(notice_ids=notice_ids).sent


@shared_task
def sweep_notices() -> int:
    """Every few minutes (beat): queue notices whose retry is due or whose sender died mid-send.

    Then tell staff of scheduled jobs that are overdue (once per overdue spell).
    """
    queued = outbox.outbox_sweep()
    alerts.staff_alerts_jobs_overdue()
    return queued


@shared_task
def metrics_flush_task() -> int:
    """Every minute (beat): move the counters waiting in Redis into their rows; how many rows took counts."""
    return metrics.metrics_flush()


@shared_task(**BEAT_JOB_RETRY)
def verify_active_credentials() -> int:
    """Daily (beat): queue a check of every active key, spread to keep within the gateway's rate."""
    with health.job_run(health.JOB_VERIFY_ACTIVE) as counts:
        counts["scheduled"] = verification.credentials_verify_active().scheduled
    return counts["scheduled"]


@shared_task(name=jobs.VERIFY_CREDENTIALS_BATCH)
def verify_credentials_batch(credential_ids: list[int], step: float) -> int:
    """One batch of the daily run: queue its keys' checks `step` seconds apart."""
    return verification.credentials_verify_batch(credential_ids=credential_ids, step=step)


@shared_task(name=jobs.VERIFY_CREDENTIAL, bind=True, max_retries=3)
def verify_credential(self, credential_id: int) -> str:
    """Check one active key against CD2; a 429 is tried again after its Retry-After."""
    result = verification.credential_verify(credential_id=credential_id)
    if result is None:
        return "inactive"
    wait = verification.rate_limit_wait(result)
    if wait is not None and self.request.retries < self.max_retries:
        raise self.retry(countdown=wait)
    return result.verdict.value


@shared_task(**BEAT_JOB_RETRY)
def send_staff_digest() -> bool:
    """Weekly (beat): write the staff digest to the outbox and queue its delivery."""
    return bool(digest.staff_digest_send(queue=True))
