"""Signals credentials sends for apps that build on it (credentials imports none of them).

`key_event`: a key's life changed in a way a machine outside the registry
must hear of. It is sent INSIDE the transaction that decides the change, so
a listener that writes rows (the API's webhook notices) commits or rolls
back with the decision: a rolled-back activation is never announced.
Listeners must not do I/O; they write rows that the outbox delivers.

Arguments: event_id (a uuid stable for this event: derived from the key and
what happened, so deciding it twice gives the same id), event_type (one of
KEY_EVENTS), credential (the CD2Credential), occurred_at (aware datetime),
days_left (int, key.expiring only, else None).
"""

from __future__ import annotations

import datetime as dt
import uuid

from django.dispatch import Signal

KEY_ACTIVATED = "key.activated"
KEY_INVALID = "key.invalid"
KEY_REVOKED = "key.revoked"
KEY_EXPIRING = "key.expiring"
KEY_EVENTS = (KEY_ACTIVATED, KEY_INVALID, KEY_REVOKED, KEY_EXPIRING)

# Event ids are uuid5 under this namespace: the same fact always has the same id.
EVENT_NAMESPACE = uuid.UUID("6f1d2c3e-9a1b-4f7e-8c55-2b0d1e4a7c90")

key_event = Signal()


def key_event_send(
    *, event_type: str, credential, occurred_at: dt.datetime, days_left: int | None = None, discriminator: str = ""
) -> uuid.UUID:
    """Send `key_event` for one fact about `credential` (call inside the deciding transaction); its event id.

    `discriminator` tells apart facts of one type about one key (the
    reminder step of a key.expiring).
    """
    if event_type not in KEY_EVENTS:
        raise ValueError(f"{event_type!r} is not a key event")
    event_id = uuid.uuid5(EVENT_NAMESPACE, f"{event_type}:{credential.pk}:{discriminator}")
    key_event.send(
        sender=type(credential),
        event_id=event_id,
        event_type=event_type,
        credential=credential,
        occurred_at=occurred_at,
        days_left=days_left,
    )
    return event_id
