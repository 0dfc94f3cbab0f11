"""The outage table, a pipeline's webhook receiver down: an HTTP receiver of the test's own, its port closed.

Only webhooks talk to it: each event waits in the outbox, retried with
backoff for NOTICE_GIVE_UP_AFTER (72 hours), and reaches the receiver once
when it is back. Every other door serves as usual.
"""

from __future__ import annotations

import pytest

from credentials.models import Notice
from tests.outage import doors
from tests.outage.conftest import DOORS, later

pytestmark = pytest.mark.django_db(transaction=True)


def _webhooks(cell):
    doors.key_event(cell)
    cell.sweep()
    (notice,) = Notice.objects.filter(kind=Notice.Kind.WEBHOOK)
    assert (notice.state, notice.attempts) == (Notice.State.PENDING, 1)
    assert "ConnectionError" in notice.last_error or "refused" in notice.last_error.lower(), notice.last_error
    assert cell.stack.receiver.bodies == []
    cell.stack.receiver.start()
    with later(minutes=10):
        cell.sweep()
        cell.sweep()  # once, however often it is swept
    notice.refresh_from_db()
    assert notice.state == Notice.State.SENT and len(cell.stack.receiver.bodies) == 1


CELLS = doors.cells(restore=lambda cell: cell.stack.receiver.start(), affected={"webhooks": _webhooks})


@pytest.mark.parametrize("door", DOORS)
def test_webhook_receiver_down(door, cell):
    cell.stack.receiver.stop()
    CELLS[door](cell)
