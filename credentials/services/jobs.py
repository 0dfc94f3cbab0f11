"""Queueing Celery tasks from services, by name, after the transaction commits.

Tasks import the services they call at module level; a service that imported
`credentials.tasks` back would close an import circle. So services publish
tasks by their registered name through the Celery app (`send_task`), the
same message the task's own `.apply_async()` would send. The names live here
and `credentials/tasks.py` registers each task under its constant, so a
typo cannot reach the broker (tests/test_architecture.py checks every name is
a registered task).

Arguments are ids and numbers only: they sit in the broker in plain text.
"""

from __future__ import annotations

from django.db import transaction

from edpotential.celery import app

VERIFY_PENDING_CREDENTIAL = "credentials.tasks.verify_pending_credential"
VERIFY_CREDENTIAL = "credentials.tasks.verify_credential"
VERIFY_CREDENTIALS_BATCH = "credentials.tasks.verify_credentials_batch"
DELIVER_NOTICE = "credentials.tasks.deliver_notice"
DELIVER_NOTICES = "credentials.tasks.deliver_notices"
REQUEST_SUBMISSION_LINK = "credentials.tasks.request_submission_link"
SEND_BATCH_LINK = "credentials.tasks.send_batch_link"

# The outbox's delivery tasks: one notice (a decision's own, a paced link), or a few due ones.
DELIVERY_TASKS = (DELIVER_NOTICE, DELIVER_NOTICES)

TASK_NAMES = (
    VERIFY_PENDING_CREDENTIAL,
    VERIFY_CREDENTIAL,
    VERIFY_CREDENTIALS_BATCH,
    DELIVER_NOTICE,
    DELIVER_NOTICES,
    REQUEST_SUBMISSION_LINK,
    SEND_BATCH_LINK,
)


def job_enqueue(name: str, *, args: tuple | list = (), countdown: float | None = None) -> None:
    """Publish the task now (for callers outside a transaction, or that must not wait for one)."""
    app.send_task(name, args=list(args), countdown=countdown)


def job_enqueue_on_commit(
    name: str, *, args: tuple | list = (), countdown: float | None = None, robust: bool = False
) -> None:
    """Publish the task once the current transaction commits (at once outside one).

    robust=True: a broker outage is logged by Django and does not fail the
    request; use it where a sweep or a later run picks the work up anyway.
    """

    def publish() -> None:  # a named function: Django logs a robust callback's __qualname__
        job_enqueue(name, args=args, countdown=countdown)

    transaction.on_commit(publish, robust=robust)
