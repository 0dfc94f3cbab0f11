"""What a sender gives the outbox: a message to send, or a reason not to send; and who sends each kind.

A sender (one per Notice.Kind) turns a claimed notice into one of these and
does nothing else: it never sends, never marks or closes the notice. The
outbox (services/outbox.py) calls it inside the transaction that will record
the outcome, sends the message, and writes the notice's state, so a link a
sender made for its mail commits with the "sent" and rolls back with a
failed send. healthchecks' sendalerts works the same way: a transport
notifies, one loop records.

Each app registers the senders it owns from its AppConfig.ready
(`sender_register`), so the outbox imports none of them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from credentials.models import Notice


class Sendable(Protocol):
    """A built message: an EmailMessage (the outbox gives it its connection), or a webhook's POST."""

    def send(self, fail_silently: bool = False) -> int: ...


@dataclass(frozen=True)
class Send:
    """Send `message` to `recipients` (as recorded on the notice).

    `sent_with(sent_at)` runs in the transaction that marks the notice sent,
    after the receiver accepted the message (the key summary a reminder changes).
    """

    message: Sendable
    recipients: Sequence[str]
    sent_with: Callable[[dt.datetime], None] | None = None


@dataclass(frozen=True)
class Skip:
    """Do not send: close the notice as `state` (superseded, cancelled or failed) with `reason` for staff.

    `closed_with()` runs in the transaction that closes it.
    """

    state: str
    reason: str
    closed_with: Callable[[], None] | None = None


Outcome = Send | Skip


@dataclass(frozen=True)
class Sender:
    """One kind's sender: `write(notice=, now=)` returns Send or Skip; raises a SEND_ERROR to retry later.

    A grouped kind (staff alerts) sends the notices of one audience as one
    message: `group_key(notice)` names the audience as filter arguments
    (one chat channel, one staff member), `group_window()` how far past now
    the outbox gathers notices still waiting to join, and `write(notices=,
    now=)` writes one message for all of them. The outbox claims, sends and
    records them together: all sent, or all retried.
    """

    write: Callable[..., Outcome]
    group_key: Callable[[Notice], dict] | None = None
    group_window: Callable[[], dt.timedelta] | None = None

    @property
    def grouped(self) -> bool:
        return self.group_key is not None


_SENDERS: dict[str, Sender] = {}


def sender_register(
    kind: str,
    write: Callable[..., Outcome],
    *,
    group_key: Callable[[Notice], dict] | None = None,
    group_window: Callable[[], dt.timedelta] | None = None,
) -> None:
    """Register the sender of a Notice.Kind (an app's AppConfig.ready calls this, once per kind it owns)."""
    if kind not in Notice.Kind.values:
        raise ValueError(f"{kind!r} is not a Notice.Kind")
    if (group_key is None) != (group_window is None):
        raise ValueError("A grouped sender needs both group_key and group_window")
    _SENDERS[kind] = Sender(write=write, group_key=group_key, group_window=group_window)


def sender_for(kind: str) -> Sender:
    try:
        return _SENDERS[kind]
    except KeyError:
        raise LookupError(f"No sender registered for notices of kind {kind!r} (see credentials.outgoing).") from None


def registered_kinds() -> set[str]:
    return set(_SENDERS)
