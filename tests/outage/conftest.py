"""The outage table's test bench: every dependency on its own loopback port, the doors, an in-process worker.

`stack` (one per test process) starts a redis-server for the cache, another
for the broker, an SMTP server, a webhook receiver and the fake CD2 gateway
behind a TcpProxy. `outage` points the settings and the Celery app at them
for one test, with every one of them up at the start. `world` is the data
the doors need. Each test module is one dependency (a row group of the
table in docs/RUNBOOK.md); each test is one cell: stop the dependency, use
the door, start the dependency, use the door again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
from dataclasses import dataclass

import pytest
import redis
import time_machine
from celery.exceptions import Retry
from django.contrib.auth import get_user_model
from django.core.handlers.wsgi import WSGIRequest
from django.core.signals import request_started
from django.db import close_old_connections
from django.test import Client
from django.test.client import ClientHandler, conditional_content_removal
from django.urls import reverse
from django.utils import timezone

from api.models import Scope, ServiceAccount
from api.services import api_token_issue
from api.webhooks import webhook_secret_rotate
from credentials.models import CD2Credential
from credentials.services import health
from credentials.services.keys import credential_create
from credentials.services.links import NewLink, submission_link_create
from credentials.validators import CleanKey, add_months
from devtools.fake_gateway import DEMO_ACCEPTED_CLIENT_ID, DEMO_ACCEPTED_SECRET, FakeGateway
from edpotential.cache import FailOpenRedisCache
from edpotential.celery import app
from institutions.models import Contact, Institution
from tests.conftest import PASSED_CHECK
from tests.outage.servers import RedisServer, SmtpServer, TcpProxy, WebhookReceiver

# The doors of the outage table, in its order (docs/RUNBOOK.md).
DOORS = (
    "customer page",
    "lost-link page",
    "receipt",
    "admin",
    "API key read",
    "API sync report",
    "webhooks",
    "beat jobs",
    "/healthz",
)

WORLD_CLIENT_ID = "us-east-1#0a7a6e00-0000-4000-8000-000000000001"
WORLD_SECRET = "outage-world-secret-7Hq2"
SOON_CLIENT_ID = "us-east-1#0a7a6e00-0000-4000-8000-000000000002"
CONTACT = "ada@northfield.example.edu"
SOON_CONTACT = "sam@lakeside.example.edu"


@dataclass
class Stack:
    cache: RedisServer
    broker: RedisServer
    smtp: SmtpServer
    receiver: WebhookReceiver
    gateway: FakeGateway
    gateway_proxy: TcpProxy

    def all_up(self) -> None:
        for server in (self.cache, self.broker, self.smtp, self.receiver, self.gateway_proxy):
            server.start()


@pytest.fixture(scope="session")
def stack():
    cache, broker = RedisServer(), RedisServer()
    if not cache.available:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    gateway = FakeGateway(keys={WORLD_CLIENT_ID: WORLD_SECRET, SOON_CLIENT_ID: WORLD_SECRET}).start()
    made = Stack(
        cache=cache,
        broker=broker,
        smtp=SmtpServer(),
        receiver=WebhookReceiver(),
        gateway=gateway,
        gateway_proxy=TcpProxy(int(gateway.url.rsplit(":", 1)[1])),
    )
    try:
        made.all_up()
        yield made
    finally:
        for server in (made.cache, made.broker, made.smtp, made.receiver, made.gateway_proxy, made.gateway):
            with contextlib.suppress(Exception):
                server.stop()


@pytest.fixture
def outage(stack, settings, monkeypatch):
    """The settings and the Celery app wired to the stack, every server up; restored afterwards."""
    stack.all_up()
    for server in (stack.cache, stack.broker):
        redis.Redis(port=server.port).flushall()
    stack.smtp.inbox.messages.clear()
    stack.receiver.bodies.clear()
    settings.CACHES = {
        "default": {
            "BACKEND": "edpotential.cache.FailOpenRedisCache",
            "LOCATION": stack.cache.url(),
            "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
        }
    }
    settings.RATELIMIT_ENABLE = True
    # The breaker would skip Redis for a few seconds after it came back; a cell wants the next call to ask.
    monkeypatch.setattr(FailOpenRedisCache, "RETRY_AFTER_SECONDS", 0.0, raising=False)
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", stack.smtp.port
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""
    settings.EMAIL_TIMEOUT = 5
    settings.CD2_API_URL = f"http://127.0.0.1:{stack.gateway_proxy.port}"
    settings.CD2_CONNECT_TIMEOUT, settings.CD2_READ_TIMEOUT = 1.0, 3.0
    settings.WEBHOOK_ALLOW_LOOPBACK = True
    settings.STAFF_DIGEST_RECIPIENTS = ["staff@registry.example"]
    # The hourly reminder job reaches an institution once its own clock passes REMINDERS_HOUR: with 0,
    # every institution is due whatever hour the run (or a moved clock, make test-dates) starts at.
    settings.REMINDERS_HOUR = 0
    # Celery reads CELERY_BROKER_URL from the environment before its own settings.
    monkeypatch.setenv("CELERY_BROKER_URL", stack.broker.url())
    saved = app.conf.broker_url, app.conf.broker_transport_options
    app.conf.broker_url = stack.broker.url()
    # As production (settings): a connect timeout, Celery's default publish retries.
    app.conf.broker_transport_options = {"visibility_timeout": 12 * 3600, "socket_connect_timeout": 1}
    app._pool, app.amqp._producer_pool = None, None
    try:
        yield stack
    finally:
        stack.all_up()
        app.conf.broker_url, app.conf.broker_transport_options = saved
        app._pool, app.amqp._producer_pool = None, None


# --------------------------------------------------------------------------
# The worker: the broker's messages run here, as a Celery worker runs them
# --------------------------------------------------------------------------


def run_queued(*, limit: int = 200) -> list[tuple[str, str]]:
    """Take every message the broker holds and run its task as a worker would; (task, outcome) each.

    A task with a countdown that is not due yet by the clock (time-machine
    moves it) goes back to the broker, as a worker holds it until then. A
    task that raises is logged and acknowledged, as a worker does; one that
    asks for a retry publishes it to the broker (Celery's own Task.retry,
    with its countdown), which a later call runs once due.
    """
    done: list[tuple[str, str]] = []
    not_yet = []
    with app.connection_for_write() as connection:
        queue = connection.SimpleQueue("celery")
        try:
            while len(done) < limit:
                try:
                    message = queue.get(block=False)
                except queue.Empty:
                    break
                eta = message.headers.get("eta")
                if eta and dt.datetime.fromisoformat(eta) > timezone.now():
                    not_yet.append(message)
                    continue
                done.append(_run(message))
        finally:
            for message in not_yet:
                message.requeue()
            queue.close()
    return done


def _run(message) -> tuple[str, str]:
    name = message.headers["task"]
    args, kwargs, _ = message.decode()
    task = app.tasks[name]
    close_old_connections()  # as Celery's Django fix-up does around every task
    task.push_request(
        id=message.headers["id"],
        retries=message.headers.get("retries", 0),
        args=args,
        kwargs=kwargs,
        is_eager=False,
        called_directly=False,
        delivery_info={"exchange": "", "routing_key": "celery"},
    )
    try:
        task.run(*args, **kwargs)
        outcome = "ok"
    except Retry:
        outcome = "retry"
    except Exception as exc:  # a worker logs a failed task and moves on
        logging.getLogger("tests.outage").warning("task %s failed: %r", name, exc)
        outcome = f"failed: {type(exc).__name__}"
    finally:
        task.pop_request()
        message.ack()
        close_old_connections()
    return name, outcome


def queued_names() -> list[str]:
    """The tasks the broker holds now (left in place)."""
    client = redis.Redis.from_url(app.conf.broker_url)
    return [json.loads(raw)["headers"]["task"] for raw in client.lrange("celery", 0, -1)]


# --------------------------------------------------------------------------
# The clients
# --------------------------------------------------------------------------


class _ProductionHandler(ClientHandler):
    """Django's test handler, but with the database connection managed as under gunicorn.

    The test client disconnects close_old_connections around each request,
    so a kept connection (CONN_MAX_AGE) is never checked or closed there; a
    gunicorn worker runs it at the start and end of every request, which is
    where a restarted database is noticed. Only for transactional tests: it
    closes a connection that holds a test's open transaction.
    """

    def __call__(self, environ):
        if self._middleware_chain is None:
            self.load_middleware()
        request_started.send(sender=self.__class__, environ=environ)
        request = WSGIRequest(environ)
        request._dont_enforce_csrf_checks = not self.enforce_csrf_checks
        response = self.get_response(request)
        conditional_content_removal(request, response)
        response.wsgi_request = request
        response.close()  # fires request_finished, and close_old_connections with it
        return response


def production_client() -> Client:
    client = Client(raise_request_exception=False)
    client.handler = _ProductionHandler(enforce_csrf_checks=False)
    return client


# --------------------------------------------------------------------------
# The world the doors need
# --------------------------------------------------------------------------


@dataclass
class World:
    institution: Institution
    key: CD2Credential
    soon: Institution  # its key expires in 7 days: the reminder run has work
    staff: object
    token: str
    account: ServiceAccount
    link: NewLink

    def submission(self) -> dict:
        """A key the fake gateway accepts, handed over on the link's page."""
        return {
            "client_id": DEMO_ACCEPTED_CLIENT_ID,
            "secret": DEMO_ACCEPTED_SECRET,
            "expires_on": add_months(timezone.localdate(), 12).isoformat(),
            "submitted_by": "Ada Admin",
            "submitted_by_email": CONTACT,
        }

    @property
    def link_url(self) -> str:
        return reverse("credentials:submit", kwargs={"token": self.link.token})

    @property
    def key_url(self) -> str:
        return f"/api/v1/institutions/{self.institution.slug}/key"

    @property
    def sync_url(self) -> str:
        return f"/api/v1/institutions/{self.institution.slug}/syncs"

    def bearer(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"}


def make_world(*, receiver_url: str) -> World:
    """Two served institutions with keys, a staff superuser, an API token and a webhook listener, a fresh link."""
    staff = get_user_model().objects.create_user(
        username="olivia", email="olivia@registry.example", password="outage-pass-Wx7!q2", is_staff=True
    )
    staff.is_superuser = True
    staff.save()
    institution = Institution.objects.create(
        name="Northfield University", slug="northfield", canvas_domain="northfield.instructure.com", account_owner=staff
    )
    Contact.objects.create(institution=institution, name="Ada Admin", email=CONTACT)
    soon = Institution.objects.create(
        name="Lakeside College", slug="lakeside", canvas_domain="lakeside.instructure.com", account_owner=staff
    )
    Contact.objects.create(institution=soon, name="Sam Sysadmin", email=SOON_CONTACT)
    # Before the webhook listener exists: these activations queue no webhooks.
    key = credential_create(
        institution=institution,
        key=CleanKey(
            client_id=WORLD_CLIENT_ID, secret=WORLD_SECRET, expires_on=timezone.localdate() + dt.timedelta(days=365)
        ),
        source=CD2Credential.Source.ADMIN,
        status=CD2Credential.Status.ACTIVE,
        check=PASSED_CHECK,
        now=timezone.now() - dt.timedelta(days=30),
    )
    credential_create(
        institution=soon,
        key=CleanKey(
            client_id=SOON_CLIENT_ID, secret=WORLD_SECRET, expires_on=timezone.localdate() + dt.timedelta(days=7)
        ),
        source=CD2Credential.Source.ADMIN,
        status=CD2Credential.Status.ACTIVE,
        check=PASSED_CHECK,
        now=timezone.now() - dt.timedelta(days=300),
    )
    account = ServiceAccount.objects.create(name="airflow", webhook_url=receiver_url)
    account.institutions.set([institution])
    webhook_secret_rotate(account=account, actor_label="outage test")
    token = api_token_issue(account=account, scopes=[Scope.KEYS_READ, Scope.SYNCS_WRITE]).plaintext
    for name in settings_jobs():
        now = timezone.now()
        health.job_record(name=name, started_at=now, finished_at=now, counts={})
    return World(
        institution=institution,
        key=key,
        soon=soon,
        staff=staff,
        token=token,
        account=account,
        link=submission_link_create(institution=institution),
    )


def settings_jobs():
    from django.conf import settings

    return list(settings.SCHEDULED_JOBS_OVERDUE_AFTER)


@pytest.fixture
def world(outage, db) -> World:
    return make_world(receiver_url=outage.receiver.url)


def sign_in(client: Client, user) -> Client:
    """Password and a confirmed second factor, as the admin requires."""
    from django_otp import DEVICE_ID_SESSION_KEY
    from django_otp.plugins.otp_totp.models import TOTPDevice

    device = TOTPDevice.objects.filter(user=user, confirmed=True).first() or TOTPDevice.objects.create(
        user=user, name="outage authenticator", confirmed=True
    )
    client.force_login(user)
    session = client.session
    session[DEVICE_ID_SESSION_KEY] = device.persistent_id
    session.save()
    return client


@pytest.fixture
def cell(world, outage):
    from tests.outage.doors import Cell

    return Cell(world=world, stack=outage, client=production_client())


def later(*, minutes: float = 0, hours: float = 0):
    """The clock moved on (time-machine, ticking): retries, countdowns and sweeps come due without waiting."""
    return time_machine.travel(timezone.now() + dt.timedelta(minutes=minutes, hours=hours), tick=True)
