"""The outage table, PostgreSQL unreachable or restarted: the app reaches it through a TcpProxy that cuts it.

While down every page answers 503 with Retry-After (a page saying nothing
was saved; a problem document on the API), never a raw 500, wherever the
error is noticed (a middleware reading the session as much as a view);
/healthz says which component fails. Work already stored waits in the
database: a worker's task that meets the outage fails or retries, and the
sweep or the retry does it once the database is back. Connections are
kept (CONN_MAX_AGE) as in production, and a database restarted between two
requests costs nothing: the kept connection is checked first
(CONN_HEALTH_CHECKS). Needs PostgreSQL (CI runs it).
"""

from __future__ import annotations

import json

import pytest
from django.db import close_old_connections, connection
from django.urls import reverse

from credentials import tasks
from credentials.models import Notice
from edpotential import settings as settings_module
from tests.outage import doors
from tests.outage.conftest import CONTACT, DOORS, SOON_CONTACT, later, sign_in
from tests.outage.servers import TcpProxy

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        connection.vendor != "postgresql",
        reason="cuts the connections to PostgreSQL with a proxy: runs on PostgreSQL (CI; set DATABASE_URL)",
    ),
]


@pytest.fixture(scope="module")
def database_proxy():
    proxy = TcpProxy(
        int(connection.settings_dict["PORT"] or 5432), host=connection.settings_dict["HOST"] or "127.0.0.1"
    )
    proxy.start()
    yield proxy
    proxy.cut()


@pytest.fixture
def database(cell, database_proxy):
    """The app's connection goes through the proxy from here on, kept between requests as in production."""
    keys = ("HOST", "PORT", "CONN_MAX_AGE", "CONN_HEALTH_CHECKS")
    saved = {key: connection.settings_dict[key] for key in keys}
    connection.close()
    connection.settings_dict.update(
        HOST="127.0.0.1", PORT=str(database_proxy.port), CONN_MAX_AGE=settings_module.PRODUCTION_CONN_MAX_AGE
    )
    assert connection.settings_dict["CONN_HEALTH_CHECKS"] is True  # the project's setting
    try:
        yield database_proxy
    finally:
        database_proxy.restore()
        connection.close()
        connection.settings_dict.update(saved)


def back(database) -> None:
    database.restore()
    close_old_connections()  # what the next request or task does first


def unavailable(response, *, api: bool = False) -> None:
    assert response.status_code == 503, response.content[:300]
    assert response["Retry-After"] == "60"
    if api:
        assert response["Content-Type"] == "application/problem+json"
        assert response.json()["code"] == "service_unavailable"
    else:
        page = response.content.decode()
        assert "Nothing you sent in this request was saved" in page and "try again" in page


def _customer_page(cell, database):
    form = cell.fresh_key()
    database.cut()
    unavailable(cell.client.get(cell.world.link_url))
    unavailable(cell.client.post(cell.world.link_url, form))
    back(database)
    response = cell.client.post(cell.world.link_url, form)  # the same form again: the link still works
    assert (response.status_code, response["Location"]) == (302, reverse("credentials:received"))
    doors.customer_page(cell)


def _lost_link(cell, database):
    database.cut()
    unavailable(cell.client.post(reverse("credentials:request_link"), {"email": CONTACT}))  # never "sent"
    back(database)
    assert not Notice.objects.exists()
    doors.link_requested_and_mailed(cell)


def _receipt(cell, database):
    credential = doors.customer_page(cell)  # stored; its receipt is queued
    database.cut()
    assert cell.deliver() == [("credentials.tasks.deliver_notice", "failed: OperationalError")]
    unavailable(cell.client.get(reverse("credentials:received")))
    back(database)
    assert Notice.objects.get(kind=Notice.Kind.RECEIPT).state == Notice.State.PENDING
    cell.sweep()
    (text,) = cell.mails_to(CONTACT)
    assert credential.hint in text


def _admin(cell, database):
    doors.admin(cell)
    database.cut()
    database.restore()  # a restart between two requests: the kept connection is dead
    assert cell.client.get(reverse("admin:index")).status_code == 200
    database.cut()
    unavailable(cell.client.get(reverse("admin:index")))
    back(database)
    sign_in(cell.client, cell.world.staff)
    doors.admin(cell)


def _api_key_read(cell, database):
    database.cut()
    unavailable(cell.client.get(cell.world.key_url, headers=cell.world.bearer()), api=True)
    back(database)
    doors.api_key_read(cell)


def _api_sync_report(cell, database):
    database.cut()
    response = cell.client.post(
        cell.world.sync_url,
        json.dumps({"key_id": cell.world.key.pk, "outcome": "ok"}),
        content_type="application/json",
        headers=cell.world.bearer(),
    )
    unavailable(response, api=True)
    back(database)
    doors.api_sync_report(cell)


def _webhooks(cell, database):
    doors.key_event(cell)
    database.cut()
    assert ("credentials.tasks.sweep_notices", "failed: OperationalError") in cell.sweep()
    back(database)
    cell.sweep()
    assert len(cell.stack.receiver.bodies) == 1


def _beat_jobs(cell, database):
    database.cut()
    tasks.send_expiry_reminders.delay()
    assert cell.deliver() == [("credentials.tasks.send_expiry_reminders", "retry")]  # the retry waits in the broker
    back(database)
    with later(minutes=5):
        cell.deliver()
    assert len(cell.mails_to(SOON_CONTACT)) == 1


def _healthz(cell, database):
    database.cut()
    response = cell.client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["status"] == "failing" and response.json()["components"]["database"] == "failing"
    back(database)
    doors.healthz(cell)


CELLS = {
    "customer page": _customer_page,
    "lost-link page": _lost_link,
    "receipt": _receipt,
    "admin": _admin,
    "API key read": _api_key_read,
    "API sync report": _api_sync_report,
    "webhooks": _webhooks,
    "beat jobs": _beat_jobs,
    "/healthz": _healthz,
}


@pytest.mark.parametrize("door", DOORS)
def test_postgresql_down(door, cell, database):
    CELLS[door](cell, database)
