"""The outage table, the mail server stopped: an aiosmtpd server of the test's own, its port closed.

While down every door serves; every mail a door decides is a notice that
waits in the outbox and is retried with backoff (NOTICE_GIVE_UP_AFTER, 72
hours); once the server is back the sweep delivers each once.
"""

from __future__ import annotations

import pytest
from django.urls import reverse

from credentials.models import CD2Credential, Notice
from tests.outage import doors
from tests.outage.conftest import CONTACT, DOORS, SOON_CONTACT, later, sign_in

pytestmark = pytest.mark.django_db(transaction=True)


def waiting(kind: str) -> Notice:
    """The one notice of `kind` to send (earlier reminder steps are superseded), refused once, waiting to retry."""
    (notice,) = Notice.objects.filter(kind=kind).exclude(state=Notice.State.SUPERSEDED)
    assert (notice.state, notice.attempts) == (Notice.State.PENDING, 1), (notice.state, notice.last_error)
    assert "refused" in notice.last_error.lower(), notice.last_error
    return notice


def _lost_link(cell):
    doors.lost_link(cell)
    cell.deliver()  # the request is answered; its link's mail is refused
    waiting(Notice.Kind.SUBMISSION_LINK)
    assert cell.mails_to(CONTACT) == []
    cell.stack.smtp.start()
    with later(minutes=10):
        cell.sweep()
        doors.link_arrives(cell)


def _receipt(cell):
    credential = doors.customer_page(cell)
    cell.deliver()
    waiting(Notice.Kind.RECEIPT)
    cell.stack.smtp.start()
    with later(minutes=10):
        cell.sweep()
    (text,) = cell.mails_to(CONTACT)
    assert credential.hint in text
    assert Notice.objects.get(kind=Notice.Kind.RECEIPT).state == Notice.State.SENT


def _admin(cell):
    doors.admin(cell)
    page = reverse("admin:institutions_institution_change", args=[cell.world.institution.pk])
    response = cell.client.post(
        reverse("admin:institutions_institution_send_link", args=[cell.world.institution.pk]),
        {"confirm": "yes"},
        follow=True,
    )
    assert response.status_code == 200 and response.redirect_chain[-1][0] == page
    assert "retried automatically" in response.content.decode()
    waiting(Notice.Kind.SUBMISSION_LINK)
    cell.stack.smtp.start()
    with later(minutes=10):
        cell.sweep()
        doors.link_arrives(cell)
        sign_in(cell.client, cell.world.staff)  # the session idled out meanwhile
        doors.admin(cell)


def _beat_jobs(cell):
    from credentials import tasks

    tasks.send_expiry_reminders.delay()
    cell.deliver()
    waiting(Notice.Kind.REMINDER)
    assert cell.mails_to(SOON_CONTACT) == []
    cell.stack.smtp.start()
    with later(minutes=10):
        cell.sweep()
    assert len(cell.mails_to(SOON_CONTACT)) == 1


def _customer_page(cell):
    doors.customer_page(cell)  # the key is stored; its receipt waits (the receipt cell)
    assert CD2Credential.objects.filter(status=CD2Credential.Status.ACTIVE, institution=cell.world.institution).exists()
    cell.stack.smtp.start()
    doors.customer_page(cell)


CELLS = doors.cells(
    restore=lambda cell: cell.stack.smtp.start(),
    affected={
        "customer page": _customer_page,
        "lost-link page": _lost_link,
        "receipt": _receipt,
        "admin": _admin,
        "beat jobs": _beat_jobs,
    },
)


@pytest.mark.parametrize("door", DOORS)
def test_smtp_down(door, cell):
    cell.stack.smtp.stop()
    CELLS[door](cell)
