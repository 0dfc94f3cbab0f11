"""Chat messages through apprise: the only code that talks to Slack, Teams, Discord, Google Chat ...

STAFF_ALERT_URLS holds apprise URLs (https://github.com/caronc/apprise/wiki):
`slack://...`, `msteams://...`, `discord://...`, `gchat://...`, `json://host/path`
and many more. A URL carries its service's token, so it is a secret of the
deployment: it stays in the settings, never in a notice, a log line or a
page. A notice names its channel by `channel_id` (a hash of the URL) and
staff read `channel_label` (the service's name and the hash's start).

Why apprise: one library and one URL per channel for the twenty-odd chat
and push services an operations team may read, maintained by its own
project; the registry writes one plain-text message and apprise formats it
for each service.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import apprise
from django.conf import settings


class ChatRefused(OSError):
    """The chat service did not take the message (down, refused, timed out): an OSError, so the outbox retries it."""


def channel_id(url: str) -> str:
    """A stable name for a channel that reveals nothing of its URL (the URL holds the service's token)."""
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def chat_channels() -> dict[str, str]:
    """The configured channels: channel_id -> URL (STAFF_ALERT_URLS), in the order given."""
    return {channel_id(url): url for url in settings.STAFF_ALERT_URLS if url}


def channel_label(url: str) -> str:
    """What staff read for a channel: "Slack channel 3f2a9c", never the URL."""
    plugin = apprise.Apprise.instantiate(url)
    service = plugin.service_name if plugin is not None else "unknown service"
    return f"{service} channel {channel_id(url)[:6]}"


@dataclass(frozen=True)
class ChatMessage:
    """One message to one channel: what the outbox sends for a staff alert notice (outgoing.Sendable)."""

    url: str = field(repr=False)
    title: str
    body: str

    def send(self, fail_silently: bool = False) -> int:
        """Post it through apprise; ChatRefused (retried by the outbox) unless the service accepted it."""
        notifier = apprise.Apprise()
        if not notifier.add(self.url):
            raise ChatRefused("The chat URL is not one apprise knows (check STAFF_ALERT_URLS).")
        if not notifier.notify(title=self.title, body=self.body, body_format=apprise.NotifyFormat.TEXT):
            raise ChatRefused(f"The chat service ({channel_label(self.url)}) did not accept the message.")
        return 1
