"""Errors hold no URL's query string, user name or token: notices, audit events, error mails; staff pages show none.

A webhook receiver's URL carries its own credential in the query string (a
common way to authenticate the sender). Its failures (connection refused, a
timeout, a non-2xx) are recorded in the notice's error, which Viewer and
Customer success read on the notice pages, the dashboard and the staff
digest: none of them may show the URL, its host and port, or the token.
"""

from __future__ import annotations

import logging
import socket
import threading

import pytest
from django.core import mail
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from api.models import ServiceAccount
from api.webhooks import webhook_secret_rotate
from credentials.models import AuditEvent, Notice
from credentials.services import digest, outbox
from credentials.services.audit import audit_record

pytestmark = pytest.mark.django_db

TOKEN = "receiver-credential-plain-lowercase"  # no "looks random" rule would catch it


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SilentReceiver:
    """Accepts connections and never answers: the sender's timeout fires."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(connection)

    def close(self) -> None:
        self.sock.close()
        for connection in self.held:
            connection.close()


@pytest.fixture
def failing_webhook(settings, institution, make_credential):
    """make(port) -> the failed-for-good webhook notice of a receiver at 127.0.0.1:port with ?token=…"""
    settings.WEBHOOK_ALLOW_LOOPBACK = True
    settings.WEBHOOK_TIMEOUT_SECONDS = 0.3

    def make(port: int) -> tuple[Notice, str]:
        url = f"http://127.0.0.1:{port}/cd2/hooks?token={TOKEN}"
        account = ServiceAccount.objects.create(name=f"pipeline-{port}", all_institutions=True, webhook_url=url)
        webhook_secret_rotate(account=account, actor_label="test")
        Notice.objects.filter(kind=Notice.Kind.WEBHOOK).delete()
        make_credential(institution)  # key.activated
        # Past its retry window: the first failure is the last (shown on the dashboard and in the digest).
        Notice.objects.filter(kind=Notice.Kind.WEBHOOK).update(retry_until=timezone.now())
        outbox.outbox_deliver_due()
        return Notice.objects.get(kind=Notice.Kind.WEBHOOK), url

    return make


def assert_no_url(text: str, url: str) -> None:
    port = url.split(":")[2].split("/")[0]
    for part in (TOKEN, "token=", "/cd2/hooks", f"127.0.0.1:{port}", f"port={port}"):
        assert part not in text, part


def test_a_refused_connection_is_recorded_without_the_url(failing_webhook):
    notice, url = failing_webhook(closed_port())
    assert notice.state == Notice.State.FAILED
    assert "Could not connect to the receiver" in notice.last_error
    assert_no_url(notice.last_error, url)


def test_a_timeout_is_recorded_without_the_url(failing_webhook):
    receiver = SilentReceiver()
    try:
        notice, url = failing_webhook(receiver.port)
    finally:
        receiver.close()
    assert notice.state == Notice.State.FAILED
    assert "did not answer within 0.3 seconds" in notice.last_error
    assert_no_url(notice.last_error, url)


@pytest.mark.parametrize("role", ["Viewer", "Customer success"])
def test_viewer_and_customer_success_never_see_the_receivers_url(
    role, failing_webhook, make_staff, verified_login, settings
):
    notice, url = failing_webhook(closed_port())
    client = verified_login(Client(), make_staff(role))
    pages = [
        reverse("admin:index"),  # the dashboard lists notices that gave up, with their error
        reverse("admin:credentials_notice_changelist"),
        reverse("admin:credentials_notice_change", args=[notice.pk]),
        reverse("admin:api_serviceaccount_changelist"),  # superusers only
    ]
    for page in pages:
        response = client.get(page)
        assert response.status_code in (200, 403), page
        assert_no_url(response.content.decode(), url)
    dashboard = client.get(reverse("admin:index")).content.decode()
    assert "Could not connect to the receiver" in dashboard  # the failure is there, without the address

    settings.STAFF_DIGEST_RECIPIENTS = ["cs-team@edpotential.example"]
    digest.staff_digest_send()
    (sent,) = [m for m in mail.outbox if m.to == ["cs-team@edpotential.example"]]
    assert "Could not connect to the receiver" in sent.body
    for part in (sent.subject, sent.body, *(body for body, _ in sent.alternatives)):
        assert_no_url(str(part), url)


def test_the_superuser_alone_sees_the_url_on_the_service_account(failing_webhook, admin_client):
    _, url = failing_webhook(closed_port())
    account = ServiceAccount.objects.get(webhook_url=url)
    page = admin_client.get(reverse("admin:api_serviceaccount_change", args=[account.pk])).content.decode()
    assert TOKEN in page  # the form field: where the superuser sets it


def test_an_audit_event_never_holds_a_urls_query_string_user_or_password():
    event = audit_record(
        kind=AuditEvent.Kind.REVEAL,
        actor_label="test",
        reason=f"Checked https://hooks.example.com/cd2?token={TOKEN} for the customer",
        detail={
            "error": f"Max retries exceeded with url: /cd2?token={TOKEN}",
            "tried": [f"https://deploy:{TOKEN}@hooks.example.com/", f"https://{TOKEN}@hooks.example.com/"],
            "count": 2,
        },
    )
    event.refresh_from_db()
    stored = event.reason + repr(event.detail)
    assert TOKEN not in stored
    assert "https://hooks.example.com/cd2?[masked]" in event.reason and event.detail["count"] == 2


def test_an_error_mail_never_holds_a_urls_query_string_or_user(settings):
    # Through the logging configuration, as a crash in a view or a task would be mailed.
    settings.ADMINS = [("Ops", "ops@example.com")]
    try:
        raise ConnectionError(f"POST https://{TOKEN}@hooks.example.com/cd2?token={TOKEN} failed")
    except ConnectionError:
        logging.getLogger("django.request").exception("Webhook to %s failed", f"https://h.example/x?token={TOKEN}")
    (sent,) = mail.outbox
    assert "hooks.example.com/cd2?[masked]" in sent.body  # the traceback is there, masked
    for part in (sent.subject, sent.body, *(body for body, _ in sent.alternatives)):
        assert TOKEN not in str(part)
