"""Webhooks: a service account hears of key events at its URL, signed, through the outbox.

credentials sends `key_events` inside the transaction that decides keys'
changes (credentials/signals.py); `webhook_notices_write` (connected in
ApiConfig.ready) writes, in that same transaction, one outbox Notice of kind
WEBHOOK per event and active account with a URL and a signing secret that
may see the institution (one account query per batch of events). So a
rolled-back decision announces nothing, and a decision taken twice writes
one notice (dedupe key "webhook:<event id>:<account id>",
the event id being stable for the fact). The outbox delivers it with its
claim, retries and backoff (`webhook_notice_write`, registered for the kind
in ApiConfig.ready): a receiver that fails or answers non-2xx is tried again
with the same event id and body until it answers 2xx or the outbox gives up.

The signing scheme and a verifier: docs/WEBHOOKS.md. The body never holds a
Secret or Client ID; the signing secret lives encrypted on the account and
leaves the registry only on the page that sets it, once.

SSRF: a receiver URL must be https on a global unicast address (an
allow-list; IPv4 inside IPv6 forms unwrapped), checked on every address the
name resolves to when it is saved and again before each send (the name could
now resolve elsewhere).
Redirects are never followed. Known limit: DNS rebinding between our check
and requests' own resolution (milliseconds apart) is not prevented.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import requests
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from api.models import ServiceAccount
from credentials.models import AuditEvent, CD2Credential, Notice
from credentials.outgoing import Send, Skip
from credentials.services import notices
from credentials.services.audit import audit_record
from credentials.signals import KEY_EXPIRING, KeyEvent

logger = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"  # noqa: S105 (a label, not a secret)
# 32 random bytes: 256 bits.
SECRET_BYTES = 32
SIGNATURE_HEADER = "X-CD2-Signature"
EVENT_ID_HEADER = "X-CD2-Event-Id"
# Webhook notices shown on a service account's admin page.
DELIVERY_LOG_SIZE = 20


class WebhookRefused(OSError):
    """A delivery that did not happen: the receiver answered non-2xx, or its address is not allowed.

    An OSError, so the outbox (mail.messages.SEND_ERRORS) retries it with backoff.
    """


# --------------------------------------------------------------------------
# Receiver addresses (SSRF)
# --------------------------------------------------------------------------


# Only global unicast addresses receive webhooks: an allow-list, since Python's
# `is_global` alone admits multicast (224.0.0.1) and, in 3.11, IPv6 forms that
# carry a private IPv4 address (64:ff9b::a9fe:a9fe is 169.254.169.254).
IPV4_NOT_GLOBAL = tuple(
    ipaddress.ip_network(net)
    for net in (
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",
        "100.64.0.0/10",  # shared address space (carrier-grade NAT)
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local, the cloud metadata address
        "172.16.0.0/12",
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # documentation
        "192.88.99.0/24",  # 6to4 relay anycast
        "192.168.0.0/16",
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and the broadcast address
    )
)
IPV6_GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")
IPV6_NOT_GLOBAL = tuple(
    ipaddress.ip_network(net)
    for net in (
        "2001::/23",  # IETF protocol assignments (Teredo, unwrapped below, is 2001::/32)
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation
    )
)
# IPv6 forms that carry an IPv4 address: each is unwrapped and the IPv4 address judged.
IPV4_MAPPED = ipaddress.ip_network("::ffff:0:0/96")  # RFC 4291
IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")  # RFC 2765 (SIIT)
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # RFC 4291, deprecated
NAT64_WELL_KNOWN = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052
# RFC 8215: the operator chooses where the IPv4 address sits in it, so it cannot be read back: refused.
NAT64_LOCAL_USE = ipaddress.ip_network("64:ff9b:1::/48")
SIX_TO_FOUR = ipaddress.ip_network("2002::/16")  # RFC 3056
TEREDO = ipaddress.ip_network("2001::/32")  # RFC 4380: server and (obfuscated) client


def _is_loopback_allowed(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return settings.WEBHOOK_ALLOW_LOOPBACK and address.is_loopback


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address] | None:
    """The IPv4 address(es) an IPv6 address carries (mapped, translated, compatible, NAT64, 6to4, Teredo), or None."""
    last_32_bits = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if any(address in net for net in (IPV4_MAPPED, IPV4_TRANSLATED, IPV4_COMPATIBLE, NAT64_WELL_KNOWN)):
        return [last_32_bits]
    if address in SIX_TO_FOUR:
        return [address.sixtofour]
    if address in TEREDO:
        return list(address.teredo)
    return None


def is_public_unicast(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether a webhook may be sent to this address: global unicast, judged on the IPv4 address inside any wrapper."""
    if isinstance(address, ipaddress.IPv4Address):
        return address.is_global and not any(address in net for net in IPV4_NOT_GLOBAL)
    if address in NAT64_LOCAL_USE:
        return False
    inner = embedded_ipv4(address)
    if inner is not None:
        return all(is_public_unicast(ipv4) for ipv4 in inner)
    return address in IPV6_GLOBAL_UNICAST and address.is_global and not any(address in net for net in IPV6_NOT_GLOBAL)


def resolve_host(host: str, port: int) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Every address the name resolves to (getaddrinfo, as the HTTP client will); OSError when none."""
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return {ipaddress.ip_address(info[4][0].split("%")[0]) for info in found}


# What a refused receiver says where Viewer and Customer success can read it (a
# notice's error): why, never the URL, its host or the address it resolved to.
URL_REFUSALS = {
    "scheme": "A webhook URL must be an https:// address.",
    "userinfo": "A webhook URL must not carry a user name or password.",
    "unresolved": "The webhook host does not resolve.",
    "not_public": "The webhook host resolves to an address that is not a public address.",
}


def webhook_url_check(url: str) -> None:
    """Refuse (ValidationError, with a code of URL_REFUSALS) a receiver URL that is not https on a public address.

    Every address the host name resolves to must be global unicast
    (is_public_unicast: an IPv4 address inside an IPv6 form is unwrapped and
    judged). With WEBHOOK_ALLOW_LOOPBACK (development, tests) a loopback
    address is allowed, over http too.
    """
    parts = urlsplit(url or "")
    try:
        hostname, port = parts.hostname, parts.port
    except ValueError:  # a port that is no number, a bracketed host that is no address
        raise ValidationError(URL_REFUSALS["scheme"], code="scheme") from None
    if parts.scheme not in ("https", "http") or not hostname:
        raise ValidationError(URL_REFUSALS["scheme"], code="scheme")
    if parts.username is not None or parts.password is not None:
        raise ValidationError(URL_REFUSALS["userinfo"], code="userinfo")
    try:
        addresses = resolve_host(hostname, port or (443 if parts.scheme == "https" else 80))
    except (OSError, ValueError, UnicodeError):
        raise ValidationError(f"The webhook host {hostname!r} does not resolve.", code="unresolved") from None
    if not addresses:
        raise ValidationError(f"The webhook host {hostname!r} does not resolve.", code="unresolved")
    for address in sorted(addresses, key=str):
        if not (is_public_unicast(address) or _is_loopback_allowed(address)):
            raise ValidationError(
                f"The webhook host resolves to {address}, which is not a public address.", code="not_public"
            )
    if parts.scheme != "https" and not all(_is_loopback_allowed(address) for address in addresses):
        raise ValidationError(URL_REFUSALS["scheme"], code="scheme")


# --------------------------------------------------------------------------
# The signing secret
# --------------------------------------------------------------------------


def webhook_secret_rotate(
    *, account: ServiceAccount, actor=None, actor_label: str = "", ip_address: str | None = None
) -> str:
    """Give the account a new signing secret (the old one stops at once); the plaintext, to show once.

    Audited (webhook_secret), naming the account, never the secret.
    """
    plaintext = SECRET_PREFIX + secrets.token_urlsafe(SECRET_BYTES)
    now = timezone.now()
    with transaction.atomic():
        account.webhook_secret = plaintext
        account.webhook_secret_set_at = now
        account.save(update_fields=["webhook_secret", "webhook_secret_set_at"])
        audit_record(
            kind=AuditEvent.Kind.WEBHOOK_SECRET,
            actor=actor,
            actor_label=actor_label,
            ip_address=ip_address,
            detail={"account": account.name, "account_id": account.pk},
        )
    return plaintext


def webhook_secrets_forget(*, ids: list[int], reason: str, actor_label: str, now: dt.datetime) -> None:
    """Forget signing secrets no configured FERNET_KEYS key reads (mark_keys_lost): the accounts have none.

    Their webhooks wait in the outbox (webhook_notice_write retries them)
    until a superuser rotates the secret and hands it to the receiver's
    owner. Audited (webhook_secret) per account with the operator's reason.
    """
    for account in ServiceAccount.objects.filter(pk__in=ids).defer("webhook_secret").order_by("pk"):
        # An empty secret, written under the new key: the row reads again, and "no secret" is set_at NULL.
        ServiceAccount.objects.filter(pk=account.pk).update(webhook_secret="", webhook_secret_set_at=None)
        audit_record(
            kind=AuditEvent.Kind.WEBHOOK_SECRET,
            actor_label=actor_label,
            reason=reason,
            detail={"account": account.name, "account_id": account.pk, "lost": True},
        )


def webhook_sign(*, secret: str, timestamp: int, body: bytes) -> str:
    """The X-CD2-Signature value: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" under the secret>."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


# --------------------------------------------------------------------------
# Deciding: one notice per event and listening account (in the deciding transaction)
# --------------------------------------------------------------------------


def webhook_accounts(*, institution_ids: Collection[int]) -> dict[int, list[ServiceAccount]]:
    """Per institution, the active accounts with a URL and a secret that may see it (the API's scope rule).

    One query for any number of institutions: an account that sees every
    institution, or one of these through its list. An institution nobody
    listens for is absent. Accounts come in name order, with pk and name only.
    """
    wanted = set(institution_ids)
    if not wanted:
        return {}
    rows = (
        ServiceAccount.objects.filter(is_active=True)
        .exclude(webhook_url="")
        .filter(webhook_secret_set_at__isnull=False)
        .filter(Q(all_institutions=True) | Q(institutions__in=wanted))
        # The filter's join to the account's institutions, reused: which of them it has.
        .values_list("pk", "name", "all_institutions", "institutions")
        .order_by("name", "pk")
        .distinct()
    )
    found: dict[int, dict[int, ServiceAccount]] = {}
    for pk, name, all_institutions, institution_id in rows:
        for seen in wanted if all_institutions else {institution_id} & wanted:
            found.setdefault(seen, {}).setdefault(pk, ServiceAccount(pk=pk, name=name))
    return {institution_id: list(accounts.values()) for institution_id, accounts in found.items()}


def webhook_event_body(
    *, event_id: uuid.UUID, event_type: str, credential: CD2Credential, occurred_at: dt.datetime, days_left: int | None
) -> dict:
    """What a receiver reads: ids, the time, the institution's slug. Never a Secret or Client ID."""
    body = {
        "id": str(event_id),
        "type": event_type,
        "created": occurred_at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
        "institution": credential.institution.slug,
        "key_id": credential.pk,
    }
    if event_type == KEY_EXPIRING:
        body["days_left"] = days_left
    return body


def webhook_notices_write(sender, *, events: Sequence[KeyEvent], **kwargs) -> int:
    """The key_events listener: write the events' webhook notices; how many rows it offered (conflicts included).

    One account query for the whole batch (a reminder run sends a chunk of
    500 keys' events at once), one insert for its notices.
    """
    listening = webhook_accounts(institution_ids={event.credential.institution_id for event in events})
    rows = [
        notices.notice_build(
            kind=Notice.Kind.WEBHOOK,
            dedupe_key=f"webhook:{event.event_id}:{account.pk}",
            day=timezone.localdate(event.occurred_at),
            now=event.occurred_at,
            institution_id=event.credential.institution_id,
            credential_id=event.credential.pk,
            recipients=account.name,
            payload={
                "account_id": account.pk,
                "body": webhook_event_body(
                    event_id=event.event_id,
                    event_type=event.event_type,
                    credential=event.credential,
                    occurred_at=event.occurred_at,
                    days_left=event.days_left,
                ),
            },
        )
        for event in events
        for account in listening.get(event.credential.institution_id, ())
    ]
    if not rows:
        return 0
    # ignore_conflicts: the same fact decided again (a retried task) is one notice,
    # and a conflict must not break the deciding transaction.
    created = Notice.objects.bulk_create(rows, ignore_conflicts=True)
    return len(created)


# --------------------------------------------------------------------------
# Delivering (the outbox's sender for Notice.Kind.WEBHOOK)
# --------------------------------------------------------------------------


def webhook_body_bytes(notice: Notice) -> bytes:
    """The exact bytes POSTed: the same on every attempt (compact, keys sorted)."""
    return json.dumps(notice.payload["body"], separators=(",", ":"), sort_keys=True).encode()


def request_failure(exc: requests.RequestException) -> str:
    """What went wrong with a POST, in words that name no URL, host or address."""
    if isinstance(exc, requests.Timeout):
        return f"The receiver did not answer within {settings.WEBHOOK_TIMEOUT_SECONDS:g} seconds."
    if isinstance(exc, requests.exceptions.SSLError):
        return "The TLS handshake with the receiver failed (its certificate or protocol)."
    if isinstance(exc, requests.ConnectionError):
        return "Could not connect to the receiver (refused, unreachable or the name did not resolve)."
    return f"The request to the receiver failed ({type(exc).__name__})."


@dataclass(frozen=True)
class WebhookPost:
    """One signed POST of a webhook notice: what the outbox sends for Notice.Kind.WEBHOOK."""

    url: str
    secret: str = field(repr=False)
    event_id: str
    body: bytes
    account_name: str

    def send(self, fail_silently: bool = False) -> int:
        """POST it; WebhookRefused (an OSError, retried by the outbox) unless the receiver answers 2xx."""
        # The clock at this send, not the run's `now`: a page of slow receivers
        # can take minutes, and the receiver refuses a timestamp 5 minutes old.
        timestamp = int(timezone.now().timestamp())
        try:
            response = requests.post(
                self.url,
                data=self.body,
                headers={
                    "Content-Type": "application/json",
                    "User-Agent": "cd2-registry-webhooks/1",
                    SIGNATURE_HEADER: webhook_sign(secret=self.secret, timestamp=timestamp, body=self.body),
                    EVENT_ID_HEADER: self.event_id,
                },
                timeout=settings.WEBHOOK_TIMEOUT_SECONDS,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            # requests words its errors with the URL, query string (a receiver's token) included;
            # the notice keeps what went wrong, never where.
            raise WebhookRefused(request_failure(exc)) from None
        response.close()
        if not 200 <= response.status_code < 300:
            what = "a redirect (not followed)" if 300 <= response.status_code < 400 else "an error"
            raise WebhookRefused(f"The receiver answered {response.status_code}, {what}.")
        logger.info("Webhook %s delivered to %s", self.event_id, self.account_name)
        return 1


def webhook_notice_write(*, notice: Notice, now: dt.datetime) -> Send | Skip:
    """The outbox's sender of a webhook notice: the signed POST to its account's URL, or why not to send it.

    Closed unsent (cancelled) when the account is gone, inactive, has no
    URL or secret any more, or may no longer see the institution.
    WebhookRefused (retried by the outbox) for a refused address.
    """
    listening = webhook_accounts(institution_ids=[notice.institution_id]).get(notice.institution_id, [])
    account = next((a for a in listening if a.pk == notice.payload.get("account_id")), None)
    if account is None and _secret_forgotten(notice.payload.get("account_id")):
        # Lost with FERNET_KEYS (webhook_secrets_forget): wait for the new secret rather than drop the event.
        raise WebhookRefused("The account's signing secret was lost: rotate it in the admin (Pipeline API).")
    if account is None:
        reason = (
            "Not sent: the service account is gone, inactive, has no webhook URL or secret any more, "
            "or may no longer see this institution."
        )
        return Skip(state=Notice.State.CANCELLED, reason=reason)
    account = ServiceAccount.objects.get(pk=account.pk)  # with its URL and secret
    try:
        webhook_url_check(account.webhook_url)
    except ValidationError as exc:
        # The outbox keeps this text where every staff role reads it: the reason, never the URL or host.
        raise WebhookRefused(f"Receiver address refused before sending: {URL_REFUSALS[exc.code]}") from None
    post = WebhookPost(
        url=account.webhook_url,
        secret=account.webhook_secret,
        event_id=notice.payload["body"]["id"],
        body=webhook_body_bytes(notice),
        account_name=account.name,
    )
    return Send(message=post, recipients=[account.name])


def _secret_forgotten(account_id) -> bool:
    """The account would receive this webhook but has no signing secret now.

    Its notice was written while it had one, and only webhook_secrets_forget
    (FERNET_KEYS lost) takes a secret away without setting another.
    """
    return (
        ServiceAccount.objects.filter(pk=account_id, is_active=True, webhook_secret_set_at__isnull=True)
        .exclude(webhook_url="")
        .exists()
    )


def webhook_delivery_log(*, account: ServiceAccount, limit: int = DELIVERY_LOG_SIZE) -> list[Notice]:
    """The account's most recent webhook notices, newest first (its admin page)."""
    return list(
        Notice.objects.filter(kind=Notice.Kind.WEBHOOK, payload__account_id=account.pk)
        .only("pk", "state", "attempts", "last_error", "sent_at", "created_at", "payload")
        .order_by("-created_at", "-pk")[:limit]
    )
