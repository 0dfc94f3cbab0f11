"""End to end: a key activation reaches a real HTTP receiver through a real Celery worker on Redis, signed.

Proves the worker process registers the webhook sender (api.apps.ApiConfig.ready)
and signs with the secret it decrypts itself. Runs only on PostgreSQL with a
redis:// broker (the worker is another process), like test_reminders_e2e.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest
from django.utils import timezone

from api.models import ServiceAccount
from api.webhooks import EVENT_ID_HEADER, SIGNATURE_HEADER, webhook_secret_rotate
from credentials.models import CD2Credential, Notice
from credentials.services.keys import credential_create
from credentials.tasks import sweep_notices
from credentials.validators import CleanKey
from institutions.models import Institution
from tests.api.test_webhooks import Receiver, verify_webhook
from tests.conftest import PASSED_CHECK, PLANTED_SECRET
from tests.e2e.test_reminders_e2e import (  # noqa: F401 (the fixtures, by name)
    _succeeded,
    _wait_for,
    real_services,
    smtp_server,
    worker,
)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def hooks():
    server = Receiver()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


def test_an_activation_reaches_a_receiver_through_a_real_worker_signed_and_once(real_services, worker, hooks):  # noqa: F811
    _, log = worker
    institution = Institution.objects.create(
        name="Northfield University", slug="northfield", canvas_domain="northfield.instructure.com"
    )
    account = ServiceAccount.objects.create(name="airflow", webhook_url=hooks.url)
    account.institutions.set([institution])
    secret = webhook_secret_rotate(account=account, actor_label="e2e")
    key = credential_create(
        institution=institution,
        key=CleanKey(
            client_id="us-east-1#e2e00000-0000-4000-8000-00000000e2e2",
            secret=PLANTED_SECRET,
            expires_on=timezone.localdate() + dt.timedelta(days=200),
        ),
        source=CD2Credential.Source.ADMIN,
        status=CD2Credential.Status.ACTIVE,
        check=PASSED_CHECK,
    )

    sweep_notices.delay()  # the beat's sweep queues the due notice; the worker delivers it
    _wait_for(lambda: len(hooks.requests) >= 1, what="the webhook at the receiver", log=log)
    _wait_for(
        lambda: Notice.objects.filter(kind=Notice.Kind.WEBHOOK, state=Notice.State.SENT).exists(),
        what="the notice marked sent",
        log=log,
    )
    before = _succeeded(log, "credentials.tasks.sweep_notices")
    sweep_notices.delay()  # nothing is left to deliver
    _wait_for(lambda: _succeeded(log, "credentials.tasks.sweep_notices") > before, what="the second sweep", log=log)

    [request] = hooks.requests
    verify_webhook(secret, request["headers"][SIGNATURE_HEADER], request["body"])
    body = json.loads(request["body"])
    assert body["type"] == "key.activated" and body["key_id"] == key.pk and body["institution"] == "northfield"
    assert request["headers"][EVENT_ID_HEADER] == body["id"]
    assert PLANTED_SECRET.encode() not in request["body"]
