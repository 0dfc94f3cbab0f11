"""The outage table, Redis as the Celery broker stopped: a real redis-server of the test's own.

While down the doors serve and everything a person asked for is stored
first (a notice, a key, a report's check request); publishing its task
fails (logged), so nothing is queued. The broker comes back empty (no
persistence, as after a crash): beat's sweeps find the stored work and queue
it again, and the workers deliver it once.
"""

from __future__ import annotations

import datetime as dt

import pytest
from django.urls import reverse
from kombu.exceptions import OperationalError as BrokerDown

from credentials import tasks
from credentials.models import CD2Credential, Notice
from tests.outage import doors
from tests.outage.conftest import CONTACT, DOORS, SOON_CONTACT, later, queued_names

pytestmark = pytest.mark.django_db(transaction=True)


def stored_not_queued(kind: str) -> Notice:
    """The notice is in the database, never tried; the broker holds nothing (it was down)."""
    (notice,) = Notice.objects.filter(kind=kind, state=Notice.State.PENDING)
    assert notice.attempts == 0
    return notice


def back(cell) -> None:
    cell.stack.broker.start()
    assert queued_names() == []  # what was published before the outage is gone with it


def _customer_page(cell):
    credential = doors.customer_page(cell)
    assert credential.status == CD2Credential.Status.ACTIVE
    stored_not_queued(Notice.Kind.RECEIPT)
    back(cell)
    doors.customer_page(cell)


def _lost_link(cell):
    # The bug this table was written for: the page said "sent" and the request was lost with the task.
    request = doors.lost_link(cell)
    assert stored_not_queued(Notice.Kind.LINK_REQUEST) == request
    back(cell)
    cell.sweep()  # the sweep queues the request; its answer queues the link
    doors.link_arrives(cell)


def _receipt(cell):
    credential = doors.customer_page(cell)
    stored_not_queued(Notice.Kind.RECEIPT)
    back(cell)
    cell.sweep()
    (text,) = cell.mails_to(CONTACT)
    assert credential.hint in text


def _admin(cell):
    doors.admin(cell)
    # Staff's "Send submission link" sends in the request, for the answer: no broker needed.
    response = cell.client.post(
        reverse("admin:institutions_institution_send_link", args=[cell.world.institution.pk]),
        {"confirm": "yes"},
        follow=True,
    )
    assert "Submission link sent to" in response.content.decode()
    doors.link_arrives(cell)
    back(cell)
    doors.admin(cell)


def _api_sync_report(cell):
    assert doors.api_sync_report(cell, outcome="auth_failed")["check_queued"] is True
    key = CD2Credential.objects.get(pk=cell.world.key.pk)
    assert key.check_requested_at is not None  # the check asked for is stored with the report
    back(cell)
    with later(minutes=61):  # the hourly sweep of pending and requested checks
        tasks.verify_pending_credentials.delay()
        done = cell.deliver()
    assert ("credentials.tasks.verify_credential", "ok") in done
    key.refresh_from_db()
    assert key.check_requested_at is None and key.last_verified_at > key.submitted_at + dt.timedelta(days=1)


def _webhooks(cell):
    doors.key_event(cell)
    stored_not_queued(Notice.Kind.WEBHOOK)
    with pytest.raises(BrokerDown):
        tasks.sweep_notices.delay()  # beat's tick: its publish fails (beat logs it and fires again in 5 minutes)
    back(cell)
    cell.sweep()
    assert len(cell.stack.receiver.bodies) == 1


def _beat_jobs(cell):
    # Beat cannot publish; a worker already running a reminder run still decides and stores its notices.
    with pytest.raises(BrokerDown):
        tasks.send_expiry_reminders.delay()
    tasks.send_expiry_reminders()  # what the worker holding the task runs
    reminder = stored_not_queued(Notice.Kind.REMINDER)
    back(cell)
    cell.sweep()
    reminder.refresh_from_db()
    assert reminder.state == Notice.State.SENT and len(cell.mails_to(SOON_CONTACT)) == 1


def _healthz(cell):
    components = doors.healthz(cell, status="failing")
    assert components["broker"] == "failing" and components["database"] == "ok"
    back(cell)
    doors.healthz(cell)


CELLS = doors.cells(
    restore=back,
    affected={
        "customer page": _customer_page,
        "lost-link page": _lost_link,
        "receipt": _receipt,
        "admin": _admin,
        "API sync report": _api_sync_report,
        "webhooks": _webhooks,
        "beat jobs": _beat_jobs,
        "/healthz": _healthz,
    },
)


@pytest.mark.parametrize("door", DOORS)
def test_broker_down(door, cell):
    cell.stack.broker.stop()
    CELLS[door](cell)
