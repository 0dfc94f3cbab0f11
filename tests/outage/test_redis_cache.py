"""The outage table, Redis as the cache (rate-limit counters) stopped: a real redis-server of the test's own.

While down every door serves: the rate limits fail open (edpotential/cache.py)
and nothing else lives in the cache (the sync-report debounce is the
database's). Once it is back the limits count again.
"""

from __future__ import annotations

import pytest
import redis

from credentials.models import CD2Credential
from tests.outage import doors
from tests.outage.conftest import DOORS

pytestmark = pytest.mark.django_db(transaction=True)


def counting(cell) -> bool:
    """The rate limits write their counters to Redis again."""
    return redis.Redis(port=cell.stack.cache.port).dbsize() > 0


def _customer_page(cell):
    doors.customer_page(cell)
    cell.stack.cache.start()
    doors.customer_page(cell)
    assert counting(cell)


def _lost_link(cell):
    doors.SERVED["lost-link page"](cell)
    cell.stack.cache.start()
    doors.lost_link(cell)
    assert counting(cell)


def _api_key_read(cell):
    # The bug this table was written for: DRF's throttle called len() on the cache's None.
    for _ in range(3):
        doors.api_key_read(cell)
    cell.stack.cache.start()
    doors.api_key_read(cell)
    assert counting(cell)


def _api_sync_report(cell):
    # The debounce is the database's: without Redis a burst of failure reports still queues one check.
    first = doors.api_sync_report(cell, outcome="auth_failed")
    second = doors.api_sync_report(cell, outcome="auth_failed")
    assert (first["check_queued"], second["check_queued"]) == (True, False)
    done = cell.deliver()
    assert done.count(("credentials.tasks.verify_credential", "ok")) == 1
    key = CD2Credential.objects.get(pk=cell.world.key.pk)
    assert (key.status, key.check_requested_at) == (CD2Credential.Status.ACTIVE, None)
    cell.stack.cache.start()
    doors.api_sync_report(cell)


def _healthz(cell):
    components = doors.healthz(cell, status="degraded")  # 200: every door serves; monitors alert on it
    assert components["cache"] == "failing"
    assert {state for name, state in components.items() if name != "cache"} == {"ok"}
    cell.stack.cache.start()
    doors.healthz(cell)


CELLS = doors.cells(
    restore=lambda cell: cell.stack.cache.start(),
    affected={
        "customer page": _customer_page,
        "lost-link page": _lost_link,
        "API key read": _api_key_read,
        "API sync report": _api_sync_report,
        "/healthz": _healthz,
    },
)


@pytest.mark.parametrize("door", DOORS)
def test_redis_cache_down(door, cell):
    cell.stack.cache.stop()
    CELLS[door](cell)
