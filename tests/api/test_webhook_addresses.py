"""Webhook receivers: only global unicast addresses, IPv4 inside IPv6 unwrapped, at save and before each send.

A resolver swapped in for the test (api.webhooks.resolve_host) answers the
receiver's name with each address form; the save door is the admin's
service-account form, the send door the outbox. Nothing is ever POSTed to a
refused address.
"""

from __future__ import annotations

import ipaddress

import pytest

from api import webhooks
from api.admin import ServiceAccountForm
from api.models import ServiceAccount
from api.webhooks import is_public_unicast, webhook_secret_rotate
from credentials.models import Notice
from credentials.services import outbox

pytestmark = pytest.mark.django_db

HOST = "hooks.example.com"
URL = f"https://{HOST}/cd2?token=receiver-credential-123"

REFUSED = {
    "224.0.0.1": "IPv4 multicast (is_global says yes)",
    "255.255.255.255": "broadcast",
    "0.0.0.0": "this network",  # noqa: S104 (an address refused, not one bound)
    "100.64.0.1": "shared address space",
    "192.0.0.8": "IETF protocol assignments",
    "169.254.169.254": "the cloud metadata address",
    "::ffff:127.0.0.1": "IPv4-mapped loopback",
    "::ffff:169.254.169.254": "IPv4-mapped metadata",
    "::ffff:0:a9fe:a9fe": "IPv4-translated metadata (SIIT)",
    "::127.0.0.1": "IPv4-compatible loopback",
    "::a00:1": "IPv4-compatible 10.0.0.1",
    "64:ff9b::a9fe:a9fe": "NAT64 of the metadata address",
    "64:ff9b::7f00:1": "NAT64 of loopback",
    "64:ff9b:1::5db8:d70e": "local-use NAT64 (its layout cannot be read back)",
    "2002:7f00:1::": "6to4 of loopback",
    "2002:a9fe:a9fe::1": "6to4 of the metadata address",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2": "Teredo whose client is 192.0.2.45 (documentation)",
    "2001:0:a00:1::5db8:d70e": "Teredo whose server is 10.0.0.1",
    "ff02::1": "IPv6 multicast",
    "fec0::1": "site-local",
    "fd00::1": "unique local",
    "fe80::1": "link-local",
    "2001:db8::1": "documentation",
    "3fff::1": "documentation (RFC 9637)",
    "::": "unspecified",
    "::1": "IPv6 loopback",
}
ALLOWED = {
    "93.184.215.14": "public IPv4",
    "2606:2800:220:1:248:1893:25c8:1946": "public IPv6",
    "::ffff:93.184.215.14": "IPv4-mapped public",
    "64:ff9b::5db8:d70e": "NAT64 of a public address",
    "2002:5db8:d70e::1": "6to4 of a public address",
}


@pytest.fixture
def resolver(monkeypatch):
    """resolver.answer = {addresses}: what the receiver's name resolves to from now on."""

    class Resolver:
        answer: set[str] = {"93.184.215.14"}

        def __call__(self, host, port):
            assert host == HOST
            return {ipaddress.ip_address(a) for a in self.answer}

    fake = Resolver()
    monkeypatch.setattr(webhooks, "resolve_host", fake)
    return fake


@pytest.fixture
def posts(monkeypatch):
    """Every POST the webhook sender makes (none should reach a refused address)."""
    made = []

    class Answer:
        status_code = 204

        def close(self):
            pass

    def post(url, **kwargs):
        made.append(url)
        return Answer()

    monkeypatch.setattr(webhooks.requests, "post", post)
    return made


def saved(url: str) -> ServiceAccountForm:
    """The admin's service-account form (the door that saves a receiver URL), filled in."""
    data = {"name": "pipeline", "is_active": "on", "all_institutions": "on", "rate_per_minute": 120, "webhook_url": url}
    return ServiceAccountForm(data=data)


@pytest.mark.parametrize("address", REFUSED, ids=REFUSED.get)
def test_each_non_public_form_is_refused_by_the_allow_list(address):
    assert not is_public_unicast(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ALLOWED, ids=ALLOWED.get)
def test_a_public_address_in_any_form_is_allowed(address):
    assert is_public_unicast(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", REFUSED, ids=REFUSED.get)
def test_each_form_is_refused_when_the_url_is_saved(resolver, settings, address):
    settings.WEBHOOK_ALLOW_LOOPBACK = False
    resolver.answer = {address}
    form = saved(URL)
    assert not form.is_valid()
    assert "not a public address" in form.errors["webhook_url"][0]


def test_one_non_public_address_among_public_ones_is_refused(resolver, settings):
    settings.WEBHOOK_ALLOW_LOOPBACK = False
    resolver.answer = {"93.184.215.14", "2606:2800:220:1:248:1893:25c8:1946", "64:ff9b::a9fe:a9fe"}
    assert not saved(URL).is_valid()
    resolver.answer = {"93.184.215.14", "2606:2800:220:1:248:1893:25c8:1946"}
    assert saved(URL).is_valid()


@pytest.mark.parametrize("address", REFUSED, ids=REFUSED.get)
def test_each_form_is_refused_before_a_send_when_the_name_moved_there(
    resolver, posts, settings, address, institution, make_credential
):
    settings.WEBHOOK_ALLOW_LOOPBACK = False
    form = saved(URL)
    assert form.is_valid(), form.errors  # public when saved
    account = form.save()
    webhook_secret_rotate(account=account, actor_label="test")
    make_credential(institution)  # key.activated: one webhook notice
    resolver.answer = {"93.184.215.14", address}  # the name now resolves there as well

    outbox.outbox_deliver_due()

    (notice,) = Notice.objects.filter(kind=Notice.Kind.WEBHOOK)
    assert notice.state == Notice.State.PENDING
    assert "not a public address" in notice.last_error
    assert HOST not in notice.last_error and "token" not in notice.last_error
    assert posts == []


def test_a_public_receiver_is_posted_to(resolver, posts, settings, institution, make_credential):
    settings.WEBHOOK_ALLOW_LOOPBACK = False
    account = ServiceAccount.objects.create(name="pipeline", all_institutions=True, webhook_url=URL)
    webhook_secret_rotate(account=account, actor_label="test")
    make_credential(institution)
    resolver.answer = set(ALLOWED)

    outbox.outbox_deliver_due()

    (notice,) = Notice.objects.filter(kind=Notice.Kind.WEBHOOK)
    assert notice.state == Notice.State.SENT and posts == [URL]
