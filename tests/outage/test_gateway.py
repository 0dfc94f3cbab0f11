"""The outage table, the CD2 gateway unreachable: the fake gateway behind a TcpProxy that cuts every connection.

While down nothing a customer hands over is refused for it: a key is stored
pending and re-checked with backoff; a check of a stored key records "not a
verdict on the key" and leaves it active (nobody is told it stopped
working). Once the gateway is back the re-checks settle every key.
"""

from __future__ import annotations

import pytest
from django.urls import reverse

from credentials import tasks
from credentials.models import CD2Credential, Notice
from tests.outage import doors
from tests.outage.conftest import CONTACT, DOORS, later

pytestmark = pytest.mark.django_db(transaction=True)


def handed_over_pending(cell) -> CD2Credential:
    form = cell.fresh_key()
    response = cell.client.post(cell.world.link_url, form)
    assert response.status_code == 302, response.content.decode()[:500]
    page = cell.client.get(response["Location"]).content.decode()
    assert "we will check it shortly" in page and "Your key is stored safely" in page
    credential = CD2Credential.objects.without_secrets().filter(institution=cell.world.institution).latest("pk")
    assert credential.status == CD2Credential.Status.PENDING_VERIFICATION
    return credential


def unchanged_and_untold(cell) -> None:
    """The stored key is still active and nobody was told it stopped working."""
    key = CD2Credential.objects.get(pk=cell.world.key.pk)
    assert key.status == CD2Credential.Status.ACTIVE
    assert "not a verdict on the key" in key.last_verification
    assert not Notice.objects.filter(kind=Notice.Kind.KEY_INVALID).exists()


def checked_ok_again(cell, before) -> None:
    key = CD2Credential.objects.get(pk=cell.world.key.pk)
    assert key.status == CD2Credential.Status.ACTIVE and key.last_verdict == "ok"
    assert key.last_verified_at > before


def _customer_page(cell):
    credential = handed_over_pending(cell)
    with later(minutes=2):  # its first re-check, a minute after it was stored: still down, it backs off
        assert ("credentials.tasks.verify_pending_credential", "retry") in cell.deliver()
    cell.stack.gateway_proxy.restore()
    with later(minutes=30):  # the retry, once its backoff has passed
        cell.deliver()
    credential.refresh_from_db()
    assert credential.status == CD2Credential.Status.ACTIVE
    doors.customer_page(cell)


def _receipt(cell):
    handed_over_pending(cell)
    cell.deliver()
    (pending_receipt,) = cell.mails_to(CONTACT)
    assert "checked" in pending_receipt.lower()
    cell.stack.gateway_proxy.restore()
    with later(minutes=5):  # the re-check activates the key and writes the "now active" receipt
        cell.deliver()
    assert len(cell.mails_to(CONTACT)) == 2


def _admin(cell):
    doors.admin(cell)
    before = CD2Credential.objects.get(pk=cell.world.key.pk).last_verified_at
    check = reverse("admin:institutions_institution_check_key", args=[cell.world.institution.pk])
    response = cell.client.post(check, follow=True)
    assert response.status_code == 200
    unchanged_and_untold(cell)
    cell.stack.gateway_proxy.restore()
    response = cell.client.post(check, follow=True)
    assert response.status_code == 200
    checked_ok_again(cell, before)


def _api_sync_report(cell):
    before = CD2Credential.objects.get(pk=cell.world.key.pk).last_verified_at
    assert doors.api_sync_report(cell, outcome="auth_failed")["check_queued"] is True
    cell.deliver()  # the check: no answer from CD2
    unchanged_and_untold(cell)
    assert CD2Credential.objects.get(pk=cell.world.key.pk).check_requested_at is not None  # still owed
    cell.stack.gateway_proxy.restore()
    with later(minutes=61):  # the hourly sweep queues the check that is still owed
        tasks.verify_pending_credentials.delay()
        cell.deliver()
    checked_ok_again(cell, before)
    assert CD2Credential.objects.get(pk=cell.world.key.pk).check_requested_at is None


def _beat_jobs(cell):
    before = CD2Credential.objects.get(pk=cell.world.key.pk).last_verified_at
    tasks.verify_active_credentials.delay()
    with later(hours=3):  # the night's checks are spread over CD2_CHECK_SPREAD_SECONDS
        cell.deliver()
    unchanged_and_untold(cell)
    cell.stack.gateway_proxy.restore()
    with later(hours=24):  # the next night
        tasks.verify_active_credentials.delay()
        with later(hours=3):
            cell.deliver()
    checked_ok_again(cell, before)


CELLS = doors.cells(
    restore=lambda cell: cell.stack.gateway_proxy.restore(),
    affected={
        "customer page": _customer_page,
        "receipt": _receipt,
        "admin": _admin,
        "API sync report": _api_sync_report,
        "beat jobs": _beat_jobs,
    },
)


@pytest.mark.parametrize("door", DOORS)
def test_gateway_down(door, cell):
    cell.stack.gateway_proxy.cut()
    CELLS[door](cell)
