"""Each door of the outage table used as a person or a machine uses it, with what "served" means there.

A cell whose dependency does not concern its door calls the door here while
the dependency is down and again once it is back; the cells that are
affected check their own outcome and call these for the "after".
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass

from django.test import Client
from django.urls import reverse
from django.utils import timezone

from credentials import tasks
from credentials.models import CD2Credential, Notice, ScheduledJob
from credentials.services.links import submission_link_create
from credentials.signals import KEY_EXPIRING, key_event_send
from credentials.validators import add_months
from tests.outage.conftest import CONTACT, DOORS, SOON_CONTACT, WORLD_SECRET, Stack, World, run_queued, sign_in

_fresh = itertools.count(100)


@dataclass
class Cell:
    world: World
    stack: Stack
    client: Client

    # -- what the doors take ---------------------------------------------------

    def fresh_key(self) -> dict:
        """A key never seen before that the fake gateway accepts, and a fresh link to hand it over on."""
        client_id = f"us-east-1#0a7a6e00-0000-4000-8000-{next(_fresh):012d}"
        self.stack.gateway.add_key(client_id, WORLD_SECRET)
        self.world.link = submission_link_create(institution=self.world.institution)
        return {
            "client_id": client_id,
            "secret": WORLD_SECRET,
            "expires_on": add_months(timezone.localdate(), 12).isoformat(),
            "submitted_by": "Ada Admin",
            "submitted_by_email": CONTACT,
        }

    def mails_to(self, address: str) -> list[str]:
        return [text for rcpt, text in self.stack.smtp.inbox.messages if address in rcpt]

    def deliver(self) -> list[tuple[str, str]]:
        """What the workers do with what is queued now (and what that queues in turn)."""
        done: list[tuple[str, str]] = []
        while ran := run_queued():
            done += ran
        return done

    def sweep(self) -> list[tuple[str, str]]:
        """Beat's outbox sweep (every 5 minutes), then the workers."""
        tasks.sweep_notices.delay()
        return self.deliver()


# --------------------------------------------------------------------------
# The doors, served
# --------------------------------------------------------------------------


def customer_page(cell: Cell) -> CD2Credential:
    """A customer opens a fresh link and hands over a key CD2 accepts: stored active, the receipt page follows."""
    form = cell.fresh_key()
    assert cell.client.get(cell.world.link_url).status_code == 200
    response = cell.client.post(cell.world.link_url, form)
    assert response.status_code == 302, response.content.decode()[:500]
    assert response["Location"] == reverse("credentials:received")
    received = cell.client.get(response["Location"])
    assert received.status_code == 200
    return CD2Credential.objects.without_secrets().filter(institution=cell.world.institution).latest("pk")


def lost_link(cell: Cell) -> Notice:
    """'Lost the link?': the page says sent only once the request is stored."""
    before = set(Notice.objects.filter(kind=Notice.Kind.LINK_REQUEST).values_list("pk", flat=True))
    response = cell.client.post(reverse("credentials:request_link"), {"email": CONTACT})
    assert (response.status_code, response["Location"]) == (302, reverse("credentials:request_link_sent"))
    (stored,) = Notice.objects.filter(kind=Notice.Kind.LINK_REQUEST).exclude(pk__in=before)
    return stored


def link_arrives(cell: Cell, *, before: int = 0) -> str:
    """One new mail (after `before`) is at the contact's mailbox, and its link opens the page."""
    mails = cell.mails_to(CONTACT)
    assert len(mails) == before + 1, mails
    text = mails[-1]
    token = text.split("/k/", 1)[1].split("/", 1)[0]
    assert Client().get(reverse("credentials:submit", kwargs={"token": token})).status_code == 200
    return token


def link_requested_and_mailed(cell: Cell) -> None:
    before = len(cell.mails_to(CONTACT))
    lost_link(cell)
    cell.deliver()  # the request is answered, then its link mailed
    link_arrives(cell, before=before)


def receipt(cell: Cell) -> None:
    """A key handed over: its receipt reaches the submitter once the workers deliver."""
    credential = customer_page(cell)
    cell.deliver()
    assert any(credential.hint in text for text in cell.mails_to(CONTACT)), cell.stack.smtp.inbox.messages


def admin(cell: Cell) -> None:
    """A signed-in staff member reads the dashboard and an institution's page."""
    sign_in(cell.client, cell.world.staff)
    assert cell.client.get(reverse("admin:index")).status_code == 200
    page = reverse("admin:institutions_institution_change", args=[cell.world.institution.pk])
    assert cell.client.get(page).status_code == 200


def api_key_read(cell: Cell) -> None:
    """The pipeline reads the key: 200 with the Secret."""
    response = cell.client.get(cell.world.key_url, headers=cell.world.bearer())
    assert response.status_code == 200, response.content.decode()[:500]
    assert response.json()["client_secret"] == WORLD_SECRET


def api_sync_report(cell: Cell, outcome: str = "ok") -> dict:
    """The pipeline reports a sync: 202, stored."""
    response = cell.client.post(
        cell.world.sync_url,
        json.dumps({"key_id": cell.world.key.pk, "outcome": outcome}),
        content_type="application/json",
        headers=cell.world.bearer(),
    )
    assert response.status_code == 202, response.content.decode()[:500]
    return response.json()


def key_event(cell: Cell) -> None:
    """Something happens to the key that the pipeline's webhook listens for (written with its notice)."""
    from django.db import transaction

    with transaction.atomic():
        key_event_send(
            event_type=KEY_EXPIRING,
            credential=cell.world.key,
            occurred_at=timezone.now(),
            days_left=30,
            discriminator=f"outage-{next(_fresh)}",  # a new fact each time: its own event id
        )


def webhooks(cell: Cell) -> None:
    """A key event reaches the receiver once the outbox sweep (every 5 minutes) has queued it and a worker sent it."""
    before = len(cell.stack.receiver.bodies)
    key_event(cell)
    cell.sweep()
    assert len(cell.stack.receiver.bodies) == before + 1


def beat_jobs(cell: Cell) -> None:
    """Beat fires the reminder run and the sweep; the workers run them: the reminder is mailed, the runs recorded."""
    started = timezone.now()
    tasks.send_expiry_reminders.delay()
    tasks.sweep_notices.delay()
    cell.deliver()
    assert cell.mails_to(SOON_CONTACT), "the 7-day reminder was not mailed"
    assert ScheduledJob.objects.filter(name="send-expiry-reminders", finished_at__gte=started).exists()
    assert ScheduledJob.objects.filter(name="sweep-notices", finished_at__gte=started).exists()


def healthz(cell: Cell, *, status: str = "ok") -> dict:
    """The monitor's probe: 200 and every component ok."""
    response = cell.client.get("/healthz")
    assert response.status_code == (503 if status == "failing" else 200), response.content
    body = response.json()
    assert body["status"] == status, body
    return body["components"]


SERVED = {
    "customer page": customer_page,
    "lost-link page": link_requested_and_mailed,
    "receipt": receipt,
    "admin": admin,
    "API key read": api_key_read,
    "API sync report": api_sync_report,
    "webhooks": webhooks,
    "beat jobs": beat_jobs,
    "/healthz": healthz,
}


def cells(*, restore: Callable[[Cell], None], affected: dict[str, Callable[[Cell], None]]) -> dict:
    """One dependency's row of the table: each door's cell.

    An `affected` door checks its own outcome. Every other door is served
    while the dependency is down, then again once `restore` brings it back.
    """

    def served(door: str) -> Callable[[Cell], None]:
        def cell_(cell: Cell) -> None:
            SERVED[door](cell)
            restore(cell)
            SERVED[door](cell)

        return cell_

    return {door: affected.get(door) or served(door) for door in DOORS}
