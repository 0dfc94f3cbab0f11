"""Webhooks: key events reach a real HTTP receiver on loopback, signed, through the outbox, once per event id.

The receiver is http.server in a thread on 127.0.0.1 (port 0); it answers
the statuses it is told to and records every request. The verifier is the
snippet in docs/WEBHOOKS.md, executed as it is written there. Time is moved
with time-machine, never waited.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from unittest import mock

import pytest
import time_machine
from django.core.exceptions import ValidationError
from django.db import transaction

from api import webhooks as webhooks_module
from api.models import ServiceAccount
from api.webhooks import EVENT_ID_HEADER, SIGNATURE_HEADER, webhook_secret_rotate, webhook_url_check
from credentials import fields
from credentials.models import AuditEvent, CD2Credential, Notice
from credentials.services import outbox
from credentials.services.keys import credential_set_status
from credentials.services.reminders import reminders_decide
from credentials.signals import KEY_EXPIRING, key_event_build, key_event_send, key_events_send
from tests.conftest import PLANTED_CLIENT_ID, PLANTED_SECRET

START = dt.datetime(2027, 9, 1, 9, 0, tzinfo=dt.UTC)
DOC = Path(__file__).resolve().parents[2] / "docs" / "WEBHOOKS.md"


def _documented_verifier():
    """The verifier snippet of docs/WEBHOOKS.md, run as a receiver would paste it."""
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    namespace: dict = {}
    exec(compile(code, str(DOC), "exec"), namespace)  # noqa: S102 (our own documentation)
    return namespace["verify_webhook"], namespace["InvalidSignature"]


verify_webhook, InvalidSignature = _documented_verifier()


class Receiver:
    """A webhook receiver on loopback: answers `statuses` in turn (then 200), records every request."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.location = ""
        self.requests: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # http.server calls it by this name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                receiver.requests.append({"headers": dict(self.headers), "body": body, "status": status})
                self.send_response(status)
                if receiver.location:
                    self.send_header("Location", receiver.location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/cd2"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def accepted_ids(self) -> list[str]:
        return [r["headers"][EVENT_ID_HEADER] for r in self.requests if 200 <= r["status"] < 300]


@pytest.fixture
def receiver(settings):
    settings.WEBHOOK_ALLOW_LOOPBACK = True
    made = []

    def make() -> Receiver:
        server = Receiver()
        server.thread.start()
        made.append(server)
        return server

    yield make
    for server in made:
        server.server.shutdown()
        server.server.server_close()


@pytest.fixture
def clock():
    with time_machine.travel(START, tick=False) as traveller:
        yield traveller


def subscribe(receiver_url: str, *, institutions=(), all_institutions=False, name="pipeline") -> tuple:
    account = ServiceAccount.objects.create(name=name, all_institutions=all_institutions, webhook_url=receiver_url)
    account.institutions.set(institutions)
    return account, webhook_secret_rotate(account=account, actor_label="test")


def webhooks() -> list[Notice]:
    return list(Notice.objects.filter(kind=Notice.Kind.WEBHOOK).order_by("pk"))


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --------------------------------------------------------------------------
# Delivery, signature, retry
# --------------------------------------------------------------------------


def test_an_activation_is_delivered_to_a_real_receiver_with_a_valid_signature(
    receiver, clock, institution, make_credential
):
    hooks = receiver()
    account, secret = subscribe(hooks.url, institutions=[institution])
    key = make_credential(institution)

    delivery = outbox.outbox_deliver_due()

    assert delivery.count(Notice.Kind.WEBHOOK, "sent") == 1
    [request] = hooks.requests
    verify_webhook(secret, request["headers"][SIGNATURE_HEADER], request["body"], now=START.timestamp())
    body = json.loads(request["body"])
    assert body == {
        "id": request["headers"][EVENT_ID_HEADER],
        "type": "key.activated",
        "created": "2027-09-01T09:00:00Z",
        "institution": "northfield",
        "key_id": key.pk,
    }
    assert request["headers"]["Content-Type"] == "application/json"
    [notice] = webhooks()
    assert notice.state == Notice.State.SENT and notice.recipients == account.name
    assert notice.dedupe_key == f"webhook:{body['id']}:{account.pk}"


def test_a_receiver_answering_500_is_retried_and_accepts_the_event_once(receiver, clock, institution, make_credential):
    hooks = receiver()
    hooks.statuses = [500]
    _, secret = subscribe(hooks.url, institutions=[institution])
    make_credential(institution)

    outbox.outbox_deliver_due()
    [notice] = webhooks()
    assert notice.state == Notice.State.PENDING and notice.attempts == 1
    assert "500" in notice.last_error and secret not in notice.last_error
    outbox.outbox_deliver_due()  # not due yet: the backoff holds it
    assert len(hooks.requests) == 1

    clock.shift(dt.timedelta(minutes=2))
    outbox.outbox_deliver_due()
    clock.shift(dt.timedelta(hours=5))
    outbox.outbox_deliver_due()  # sent: never again

    notice.refresh_from_db()
    assert notice.state == Notice.State.SENT and notice.attempts == 2
    first, second = hooks.requests
    assert first["headers"][EVENT_ID_HEADER] == second["headers"][EVENT_ID_HEADER]
    assert first["body"] == second["body"]  # the same event, byte for byte
    assert hooks.accepted_ids() == [json.loads(first["body"])["id"]]
    # The retry carries its own, fresh signature.
    verify_webhook(
        secret, second["headers"][SIGNATURE_HEADER], second["body"], now=(START + dt.timedelta(minutes=2)).timestamp()
    )


def test_the_signature_carries_the_clock_at_the_send_not_the_runs_start(receiver, clock, institution, make_credential):
    hooks = receiver()
    _, secret = subscribe(hooks.url, institutions=[institution])
    make_credential(institution)
    [notice] = webhooks()
    clock.shift(dt.timedelta(minutes=10))  # a long page of slow receivers before this one

    outbox.notice_deliver(notice_id=notice.pk, now=START)

    [request] = hooks.requests
    sent_at = (START + dt.timedelta(minutes=10)).timestamp()
    verify_webhook(secret, request["headers"][SIGNATURE_HEADER], request["body"], now=sent_at)


def test_a_receiver_down_for_hours_loses_nothing(receiver, clock, institution, make_credential):
    hooks = receiver()
    subscribe(hooks.url, institutions=[institution])
    hooks.server.shutdown()  # nobody answers: connection refused
    hooks.server.server_close()
    key = make_credential(institution)
    credential_set_status(credential=key, status=CD2Credential.Status.REVOKED, reason="test")
    for _ in range(12):
        outbox.outbox_deliver_due()
        clock.shift(dt.timedelta(minutes=30))
    assert [n.state for n in webhooks()] == [Notice.State.PENDING, Notice.State.PENDING]
    assert all(n.attempts >= 3 for n in webhooks())

    back = receiver()
    ServiceAccount.objects.update(webhook_url=back.url)
    clock.shift(dt.timedelta(hours=5))
    outbox.outbox_deliver_due()
    assert sorted(json.loads(r["body"])["type"] for r in back.requests) == ["key.activated", "key.revoked"]
    assert len(set(back.accepted_ids())) == 2 == len(back.requests)


def test_a_worker_killed_after_the_receiver_accepted_sends_it_once_more_with_the_same_event_id(
    receiver, clock, institution, make_credential, settings
):
    hooks = receiver()
    subscribe(hooks.url, institutions=[institution])
    make_credential(institution)
    [notice] = webhooks()

    # The receiver answered 2xx, then the worker died before recording it.
    with mock.patch.object(webhooks_module.notices, "notice_mark_sent", side_effect=SystemExit("kill -9")):
        with pytest.raises(SystemExit):
            outbox.notice_deliver(notice_id=notice.pk)
    notice.refresh_from_db()
    assert notice.state == Notice.State.SENDING and len(hooks.requests) == 1

    clock.shift(settings.NOTICE_LEASE - dt.timedelta(seconds=1))
    outbox.outbox_deliver_due()  # the lease holds: the sender might still be at work
    assert len(hooks.requests) == 1
    clock.shift(dt.timedelta(seconds=2))
    outbox.outbox_deliver_due()
    clock.shift(dt.timedelta(hours=1))
    outbox.outbox_deliver_due()

    notice.refresh_from_db()
    assert notice.state == Notice.State.SENT and notice.attempts == 2
    first, second = hooks.requests  # one duplicate, the one in flight, and no more
    assert first["body"] == second["body"]
    # The same event id both times: a receiver that keeps the ids it handled
    # (docs/WEBHOOKS.md) acts on the event once.
    assert first["headers"][EVENT_ID_HEADER] == second["headers"][EVENT_ID_HEADER]


def test_a_replayed_body_with_an_old_timestamp_or_a_tampered_body_is_rejected(
    receiver, clock, institution, make_credential
):
    hooks = receiver()
    _, secret = subscribe(hooks.url, institutions=[institution])
    make_credential(institution)
    outbox.outbox_deliver_due()
    [request] = hooks.requests
    header, body = request["headers"][SIGNATURE_HEADER], request["body"]

    verify_webhook(secret, header, body, now=START.timestamp() + 299)  # within 5 minutes
    with pytest.raises(InvalidSignature, match="tolerance"):
        verify_webhook(secret, header, body, now=START.timestamp() + 301)
    with pytest.raises(InvalidSignature, match="does not match"):
        verify_webhook(secret, header, body.replace(b"key.activated", b"key.revoked"), now=START.timestamp())
    with pytest.raises(InvalidSignature, match="does not match"):
        verify_webhook("whsec_not-the-secret", header, body, now=START.timestamp())
    with pytest.raises(InvalidSignature, match="malformed"):
        verify_webhook(secret, "v1=abc", body, now=START.timestamp())


def test_the_body_never_holds_the_secret_or_client_id(receiver, clock, institution, make_credential):
    hooks = receiver()
    _, signing_secret = subscribe(hooks.url, institutions=[institution])
    key = make_credential(institution, secret=PLANTED_SECRET, client_id=PLANTED_CLIENT_ID)
    credential_set_status(credential=key, status=CD2Credential.Status.INVALID, reason="CD2 refused it")
    outbox.outbox_deliver_due()

    assert len(hooks.requests) == 2
    for request in hooks.requests:
        for leaked in (PLANTED_SECRET, PLANTED_CLIENT_ID, PLANTED_CLIENT_ID.split("#")[1], signing_secret):
            assert leaked.encode() not in request["body"]
            assert leaked not in json.dumps(request["headers"])
    stored = json.dumps([n.payload for n in webhooks()])
    assert PLANTED_SECRET not in stored and signing_secret not in stored
    assert signing_secret not in str(ServiceAccount.objects.get()) + repr(ServiceAccount.objects.get())


# --------------------------------------------------------------------------
# Which events, for whom, and only on commit
# --------------------------------------------------------------------------


def test_an_account_scoped_to_one_institution_hears_nothing_about_another(
    receiver, clock, make_institution, make_credential
):
    a, b = make_institution(slug="alpha"), make_institution(slug="beta")
    hooks_a, hooks_all = receiver(), receiver()
    subscribe(hooks_a.url, institutions=[a], name="scoped-to-a")
    subscribe(hooks_all.url, all_institutions=True, name="sees-all")
    make_credential(b)
    make_credential(a)
    outbox.outbox_deliver_due()

    assert [json.loads(r["body"])["institution"] for r in hooks_a.requests] == ["alpha"]
    assert sorted(json.loads(r["body"])["institution"] for r in hooks_all.requests) == ["alpha", "beta"]


def test_accounts_without_a_secret_or_inactive_get_no_webhooks(receiver, clock, institution, make_credential):
    hooks = receiver()
    ServiceAccount.objects.create(name="no-secret", all_institutions=True, webhook_url=hooks.url)
    inactive, _ = subscribe(hooks.url, all_institutions=True, name="inactive")
    inactive.is_active = False
    inactive.save()
    make_credential(institution)
    assert webhooks() == []


def test_a_batch_of_events_writes_for_each_institution_the_notices_one_event_at_a_time_writes(
    clock, make_institution, make_credential, django_assert_num_queries
):
    a, b, c, d = (make_institution(slug=slug) for slug in ("alpha", "beta", "gamma", "delta"))
    keys = [make_credential(institution, days=14) for institution in (a, b, c, d)]
    url = "https://hooks.example/cd2"  # nothing is delivered in this test
    subscribe(url, all_institutions=True, name="sees-all")
    subscribe(url, institutions=[a], name="scoped-a")
    subscribe(url, institutions=[b, c], name="scoped-b-c")
    subscribe(url, institutions=[b], all_institutions=True, name="all-and-listed-b")  # one notice per event still
    inactive, _ = subscribe(url, all_institutions=True, name="inactive")
    ServiceAccount.objects.filter(pk=inactive.pk).update(is_active=False)
    no_secret = ServiceAccount.objects.create(name="no-secret", all_institutions=True, webhook_url=url)
    no_secret.institutions.set([a])
    subscribe("", institutions=[a, b, c, d], name="no-url")

    def events():
        return [
            key_event_build(
                event_type=KEY_EXPIRING, credential=key, occurred_at=now(), days_left=14, discriminator="14"
            )
            for key in keys
        ]

    def written() -> list[tuple]:
        return sorted(
            (
                n.dedupe_key,
                n.institution_id,
                n.credential_id,
                n.recipients,
                n.payload,
                n.day,
                n.state,
                n.as_of,
                n.next_attempt_at,
                n.retry_until,
            )
            for n in webhooks()
        )

    with django_assert_num_queries(2):  # the listening accounts, once for the batch; their notices
        key_events_send(events=events())
    batched = written()
    Notice.objects.filter(kind=Notice.Kind.WEBHOOK).delete()
    for event in events():
        key_event_send(
            event_type=event.event_type,
            credential=event.credential,
            occurred_at=event.occurred_at,
            days_left=event.days_left,
            discriminator="14",
        )

    assert written() == batched
    heard = {(n.institution.slug, n.recipients) for n in webhooks()}
    assert heard == {
        ("alpha", "sees-all"),
        ("alpha", "scoped-a"),
        ("alpha", "all-and-listed-b"),
        ("beta", "sees-all"),
        ("beta", "scoped-b-c"),
        ("beta", "all-and-listed-b"),
        ("gamma", "sees-all"),
        ("gamma", "scoped-b-c"),
        ("gamma", "all-and-listed-b"),
        ("delta", "sees-all"),
        ("delta", "all-and-listed-b"),
    }
    assert len(webhooks()) == len(heard)
    for notice in webhooks():
        account = ServiceAccount.objects.get(name=notice.recipients)
        body = notice.payload["body"]
        assert notice.dedupe_key == f"webhook:{body['id']}:{account.pk}"
        assert notice.payload["account_id"] == account.pk
        assert (body["type"], body["days_left"], body["key_id"]) == ("key.expiring", 14, notice.credential_id)


def test_a_batch_nobody_listens_for_costs_one_query_and_writes_nothing(
    clock, make_institution, make_credential, django_assert_num_queries
):
    keys = [make_credential(make_institution(), days=14) for _ in range(3)]
    events = [key_event_build(event_type=KEY_EXPIRING, credential=key, occurred_at=now(), days_left=14) for key in keys]
    with django_assert_num_queries(1):
        key_events_send(events=events)
    assert webhooks() == []


def test_an_account_that_lost_sight_of_the_institution_before_delivery_gets_nothing(
    receiver, clock, institution, make_credential
):
    hooks = receiver()
    account, _ = subscribe(hooks.url, institutions=[institution])
    make_credential(institution)
    account.institutions.clear()

    outbox.outbox_deliver_due()

    [notice] = webhooks()
    assert notice.state == Notice.State.CANCELLED and "no longer see" in notice.last_error
    assert hooks.requests == []


def test_a_rolled_back_activation_produces_no_webhook(receiver, clock, institution, make_credential):
    hooks = receiver()
    subscribe(hooks.url, institutions=[institution])
    with pytest.raises(RuntimeError), transaction.atomic():
        make_credential(institution)
        assert len(webhooks()) == 1  # written inside the deciding transaction ...
        raise RuntimeError("the deciding transaction fails after the activation")
    assert webhooks() == []  # ... so it rolled back with it
    outbox.outbox_deliver_due()
    assert hooks.requests == []


def test_revoked_invalid_and_expiring_events_each_once_with_days_left(
    receiver, clock, institution, make_credential, today
):
    hooks = receiver()
    subscribe(hooks.url, institutions=[institution])
    expiring = make_credential(institution, days=30)
    reminders_decide(today=today, now=now())
    reminders_decide(today=today, now=now())  # the step is decided once, so is its event
    credential_set_status(credential=expiring, status=CD2Credential.Status.INVALID, reason="refused")
    credential_set_status(credential=expiring, status=CD2Credential.Status.INVALID, reason="refused again")
    other = make_credential(institution)
    credential_set_status(credential=other, status=CD2Credential.Status.REVOKED, reason="staff")
    outbox.outbox_deliver_due()

    bodies = [json.loads(r["body"]) for r in hooks.requests]
    assert sorted((b["type"], b["key_id"]) for b in bodies) == sorted(
        [
            ("key.activated", expiring.pk),
            ("key.expiring", expiring.pk),
            ("key.invalid", expiring.pk),
            ("key.activated", other.pk),
            ("key.revoked", other.pk),
        ]
    )
    [expiry] = [b for b in bodies if b["type"] == "key.expiring"]
    assert expiry["days_left"] == 30
    assert all("days_left" not in b for b in bodies if b["type"] != "key.expiring")
    assert len({b["id"] for b in bodies}) == 5


# --------------------------------------------------------------------------
# SSRF: https on a public address, checked at save and before each send
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://93.184.215.14/hook",  # public, but not https
        "https://10.1.2.3/hook",
        "https://192.168.0.10/hook",
        "https://169.254.169.254/latest/meta-data",  # cloud metadata
        "https://100.64.0.1/hook",  # shared address space
        "https://[fd00::1]/hook",
        "https://user:pw@93.184.215.14/hook",
        "ftp://93.184.215.14/hook",
        "https://no-such-host.invalid/hook",
    ],
)
def test_receiver_urls_that_are_not_https_on_a_public_address_are_refused(url, settings):
    settings.WEBHOOK_ALLOW_LOOPBACK = True
    with pytest.raises(ValidationError):
        webhook_url_check(url)


def test_loopback_is_refused_unless_allowed_and_a_public_https_address_passes(settings):
    settings.WEBHOOK_ALLOW_LOOPBACK = False
    for url in ("http://127.0.0.1:8080/hook", "https://127.0.0.1/hook", "https://[::1]/hook"):
        with pytest.raises(ValidationError):
            webhook_url_check(url)
    webhook_url_check("https://93.184.215.14/hook")  # no exception
    settings.WEBHOOK_ALLOW_LOOPBACK = True
    webhook_url_check("http://127.0.0.1:8080/hook")


def test_an_address_that_became_private_is_refused_before_sending(receiver, clock, institution, make_credential):
    hooks = receiver()
    account, _ = subscribe(hooks.url, institutions=[institution])
    make_credential(institution)
    ServiceAccount.objects.filter(pk=account.pk).update(webhook_url="https://10.0.0.7/hook")

    outbox.outbox_deliver_due()

    [notice] = webhooks()
    assert notice.state == Notice.State.PENDING and "not a public address" in notice.last_error
    assert hooks.requests == []


def test_a_redirect_is_not_followed_and_is_retried(receiver, clock, institution, make_credential):
    hooks, elsewhere = receiver(), receiver()
    hooks.statuses = [302]
    hooks.location = elsewhere.url
    subscribe(hooks.url, institutions=[institution])
    make_credential(institution)

    outbox.outbox_deliver_due()

    [notice] = webhooks()
    assert notice.state == Notice.State.PENDING and "302" in notice.last_error
    assert len(hooks.requests) == 1 and elsewhere.requests == []


def test_the_admin_refuses_a_private_receiver_url(admin_client, settings):
    settings.WEBHOOK_ALLOW_LOOPBACK = False
    response = admin_client.post(
        "/admin/api/serviceaccount/add/",
        {
            "name": "pipeline",
            "rate_per_minute": 120,
            "all_institutions": "on",
            "webhook_url": "https://192.168.1.20/hook",
            "tokens-TOTAL_FORMS": 0,
            "tokens-INITIAL_FORMS": 0,
        },
    )
    assert response.status_code == 200
    assert "not a public address" in response.content.decode()
    assert not ServiceAccount.objects.exists()


# --------------------------------------------------------------------------
# The admin: the secret shown once, audited; the delivery log
# --------------------------------------------------------------------------


def test_rotating_the_secret_shows_it_once_audited_and_the_page_lists_deliveries(
    clock, admin_client, admin_user, receiver, institution, make_credential
):
    hooks = receiver()
    account = ServiceAccount.objects.create(name="pipeline", all_institutions=True, webhook_url=hooks.url)

    asked = admin_client.post(
        "/admin/api/serviceaccount/", {"action": "rotate_webhook_secret", "_selected_action": [account.pk]}
    )
    assert asked.status_code == 200 and "stops signing at once" in asked.content.decode()
    account.refresh_from_db()
    assert account.webhook_secret == "" and not AuditEvent.objects.exists()  # nothing rotated before "yes"

    response = admin_client.post(
        "/admin/api/serviceaccount/",
        {"action": "rotate_webhook_secret", "_selected_action": [account.pk], "confirm": "yes"},
    )

    assert response.status_code == 200
    secret = re.search(r'class="webhook-secret">(whsec_[A-Za-z0-9_-]{43})<', response.content.decode()).group(1)
    assert "no-store" in response["Cache-Control"]
    account.refresh_from_db()
    assert account.webhook_secret == secret and account.webhook_secret_set_at is not None
    event = AuditEvent.objects.get(kind=AuditEvent.Kind.WEBHOOK_SECRET)
    assert event.actor == admin_user and event.detail == {"account": "pipeline", "account_id": account.pk}
    assert secret not in json.dumps(event.detail) + event.reason

    hooks.statuses = [500]
    make_credential(institution)
    outbox.outbox_deliver_due()
    page = admin_client.get(f"/admin/api/serviceaccount/{account.pk}/change/").content.decode()
    assert secret not in page
    assert "key.activated" in page and "WebhookRefused: The receiver answered 500" in page
    assert admin_client.get("/admin/credentials/notice/?kind__exact=webhook").status_code == 200


def test_authenticating_a_request_never_decrypts_the_signing_secret(make_token, api, institution, make_credential):
    plaintext, token = make_token(["keys:read"], institutions=[institution])
    webhook_secret_rotate(account=token.account, actor_label="test")
    make_credential(institution)

    with mock.patch("credentials.fields.decrypt_str", wraps=fields.decrypt_str) as decrypt:
        response = api(plaintext).get("/api/v1/institutions/northfield/key")

    assert response.status_code == 200
    assert decrypt.call_count == 2  # the key's Client ID and Secret, nothing else
