"""Signals credentials sends for apps that build on it (credentials imports none of them).

`key_events`: keys' lives changed in ways a machine outside the registry
must hear of. It is sent INSIDE the transaction that decides the changes, so
a listener that writes rows (the API's webhook notices) commits or rolls
back with the decision: a rolled-back activation is never announced.
Listeners must not do I/O; they write rows that the outbox delivers.

One signal carries a list of events (`events`, KeyEvent each): a single
change sends a list of one (`key_event_send`), a reminder run sends a
chunk's events at once (`key_events_send`), so a listener reads what it
needs once per batch, not once per key. One signal, not one per size, so a
listener cannot hear the single events and miss the batched ones.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.dispatch import Signal

KEY_ACTIVATED = "key.activated"
KEY_INVALID = "key.invalid"
KEY_REVOKED = "key.revoked"
KEY_EXPIRING = "key.expiring"
KEY_EVENTS = (KEY_ACTIVATED, KEY_INVALID, KEY_REVOKED, KEY_EXPIRING)

# Event ids are uuid5 under this namespace: the same fact always has the same id.
EVENT_NAMESPACE = uuid.UUID("6f1d2c3e-9a1b-4f7e-8c55-2b0d1e4a7c90")

key_events = Signal()

# The CD2 client's own events, for the metrics (services/metrics.py listens): every request to the
# gateway (`status_code`: None when no answer came, `seconds`) and every key check (`verdict`).
# Sent outside any transaction the client knows of; a listener must not raise.
gateway_request = Signal()
key_checked = Signal()

# The outbox gave up on a notice (`notice`, `reason`, `now`): sent inside the transaction that records
# it, so a listener's rows (the staff alert) commit with it. Listeners write rows, never send.
notice_failed = Signal()


@dataclass(frozen=True)
class KeyEvent:
    """One fact about a key.

    event_id is stable for the fact (derived from the key and what
    happened, so deciding it twice gives the same id); days_left is set for
    key.expiring only.
    """

    event_id: uuid.UUID
    event_type: str
    credential: Any  # a CD2Credential (models are not imported here: signals load first)
    occurred_at: dt.datetime
    days_left: int | None = None


def key_event_build(
    *, event_type: str, credential, occurred_at: dt.datetime, days_left: int | None = None, discriminator: str = ""
) -> KeyEvent:
    """The event for one fact about `credential`.

    `discriminator` tells apart facts of one type about one key (the
    reminder step of a key.expiring).
    """
    if event_type not in KEY_EVENTS:
        raise ValueError(f"{event_type!r} is not a key event")
    event_id = uuid.uuid5(EVENT_NAMESPACE, f"{event_type}:{credential.pk}:{discriminator}")
    return KeyEvent(
        event_id=event_id, event_type=event_type, credential=credential, occurred_at=occurred_at, days_left=days_left
    )


def key_events_send(*, events: Sequence[KeyEvent]) -> None:
    """Send `key_events` for these facts at once (call inside the deciding transaction); nothing for none."""
    if events:
        key_events.send(sender=type(events[0].credential), events=list(events))


def key_event_send(
    *, event_type: str, credential, occurred_at: dt.datetime, days_left: int | None = None, discriminator: str = ""
) -> uuid.UUID:
    """Send `key_events` for one fact about `credential` (call inside the deciding transaction); its event id."""
    event = key_event_build(
        event_type=event_type,
        credential=credential,
        occurred_at=occurred_at,
        days_left=days_left,
        discriminator=discriminator,
    )
    key_events_send(events=[event])
    return event.event_id
