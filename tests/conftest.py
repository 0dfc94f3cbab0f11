from __future__ import annotations

import datetime as dt
import itertools

import pytest
from django.core import mail
from django.utils import timezone

from credentials.cd2 import CheckResult, Verdict
from credentials.models import CD2Credential, Notice, ReminderLog
from credentials.services import outbox, reminders
from credentials.services.keys import credential_create
from credentials.validators import CleanKey, add_months
from devtools.fake_gateway import DEMO_ACCEPTED_CLIENT_ID, DEMO_ACCEPTED_SECRET
from institutions.models import Contact, Institution

_counter = itertools.count(1)

# What a check that passed looks like, for keys made active directly.
PASSED_CHECK = CheckResult(
    verdict=Verdict.OK, status_code=200, error_type=None, message="test", retry_after=None, table_count=1
)

# A recognisable secret: tests that look for leaks search for this exact value.
PLANTED_SECRET = "PLANTED-s3cr3t-Zq8vX1nB7kLw2"


# Keys the tests make were accepted this long ago: a key accepted this very
# minute is not reminded for REMINDER_QUIET_AFTER_ACCEPTANCE (credentials/days.py),
# which tests of that rule set up themselves.
KEY_ACCEPTED_AGO = dt.timedelta(days=2)


def accepted_earlier(credential: CD2Credential, by: dt.timedelta = KEY_ACCEPTED_AGO) -> CD2Credential:
    """Move the key's acceptance (status_changed_at of an active key) back by `by`; returns the key."""
    credential.status_changed_at -= by
    CD2Credential.objects.filter(pk=credential.pk).update(status_changed_at=credential.status_changed_at)
    return credential


def delivered() -> list:
    """Deliver what the outbox holds now (as the queued deliver_notice tasks would) and return all mail sent."""
    outbox.outbox_deliver_due()
    return mail.outbox


def reminders_run(**kwargs) -> reminders.ReminderRun:
    """The daily run as the workers complete it: decide and queue, deliver here what was queued, report.

    The queued tasks would deliver the same due notices with the same claim;
    delivering them in this process keeps unit tests free of a broker.
    """
    run = reminders.reminders_send_due(**kwargs)
    if run.dry_run:
        return run
    outbox.outbox_deliver_due(now=run.now, chunk_size=kwargs.get("chunk_size", outbox.CHUNK_SIZE))
    return reminders.reminders_report(run)


def reminder_step(
    credential: CD2Credential,
    threshold: int,
    *,
    state: str = Notice.State.SENT,
    at: dt.datetime | None = None,
    recipients: str = "",
    last_error: str = "",
) -> ReminderLog:
    """A reminder step of `credential` as the outbox left it: the claim row and its notice in `state` since `at`."""
    at = at or timezone.now()
    step = ReminderLog.objects.create(credential=credential, threshold=threshold, claimed_at=at)
    Notice.objects.create(
        kind=Notice.Kind.REMINDER,
        state=state,
        dedupe_key=f"reminder:{step.pk}",
        institution_id=credential.institution_id,
        credential=credential,
        reminder=step,
        day=timezone.localdate(at),
        as_of=at,
        created_at=at,
        retry_until=at + dt.timedelta(days=1),
        recipients=recipients,
        attempts=0 if state in Notice.OPEN_STATES else 1,
        sent_at=at if state == Notice.State.SENT else None,
        closed_at=None if state in Notice.OPEN_STATES else at,
        last_error=last_error,
    )
    return step


@pytest.fixture
def today() -> dt.date:
    return timezone.localdate()


@pytest.fixture
def make_institution(db):
    def make(**kwargs) -> Institution:
        n = next(_counter)
        defaults = {
            "name": f"Institution {n}",
            "slug": f"institution-{n}",
            "canvas_domain": f"inst{n}.instructure.com",
            "status": Institution.Status.ACTIVE,
        }
        defaults.update(kwargs)
        institution = Institution.objects.create(**defaults)
        return institution

    return make


@pytest.fixture
def institution(make_institution) -> Institution:
    institution = make_institution(name="Northfield University", slug="northfield")
    Contact.objects.create(institution=institution, name="Ada Admin", email="ada@northfield.example.edu")
    return institution


@pytest.fixture
def make_key():
    def make(*, days: int = 365, secret: str | None = None, client_id: str | None = None) -> CleanKey:
        n = next(_counter)
        return CleanKey(
            client_id=client_id or f"us-east-1#0a1b2c3d-0000-4000-8000-{n:012d}",
            secret=secret or f"secret-value-{n}-Xy9",
            expires_on=timezone.localdate() + dt.timedelta(days=days),
        )

    return make


@pytest.fixture
def make_credential(make_key):
    def make(institution, *, days: int = 365, status=CD2Credential.Status.ACTIVE, **key_kwargs) -> CD2Credential:
        credential = credential_create(
            institution=institution,
            key=make_key(days=days, **key_kwargs),
            source=CD2Credential.Source.ADMIN,
            status=status,
            check=PASSED_CHECK if status == CD2Credential.Status.ACTIVE else None,
        )
        return accepted_earlier(credential) if status == CD2Credential.Status.ACTIVE else credential

    return make


@pytest.fixture
def verified_login(db):
    """Sign a user in on a test client as the admin requires: password and a confirmed one-time-code device.

    Every admin page refuses a session without a verified second factor
    (edpotential/security.py), so `client.force_login(user)` alone only
    reaches the login page. Use: `verified_login(client, user)`.
    """
    from django_otp import DEVICE_ID_SESSION_KEY
    from django_otp.plugins.otp_totp.models import TOTPDevice

    def login(client, user):
        device = TOTPDevice.objects.filter(user=user, confirmed=True).first() or TOTPDevice.objects.create(
            user=user, name="test authenticator", confirmed=True
        )
        client.force_login(user)
        session = client.session
        session[DEVICE_ID_SESSION_KEY] = device.persistent_id
        session.save()
        return client

    return login


@pytest.fixture
def staff_client(client, make_staff, verified_login):
    """The test client signed in as staff: staff_client("Viewer"), staff_client("superuser"), staff_client(None, ...).

    The user is on `client.user`.
    """

    def login(role: str | None, **kwargs):
        if role == "superuser":
            role, kwargs = None, {"is_superuser": True, **kwargs}
        user = make_staff(role, **kwargs)
        verified_login(client, user)
        client.user = user
        return client

    return login


@pytest.fixture
def admin_client(client, admin_user, verified_login):
    """pytest-django's admin_client, signed in with the second factor the admin requires."""
    return verified_login(client, admin_user)


STAFF_PASSWORD = "staff-pass-Wx7!q2"


# The staff role groups as the migrations left them, each group's permissions by natural key: read
# once per worker as its test database is made, before any transactional test can empty the tables.
MIGRATED_ROLE_GROUPS: dict[str, list[tuple[str, str, str, str]]] = {}


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """pytest-django's test database, and the role groups the migrations made in it (MIGRATED_ROLE_GROUPS)."""
    from django.contrib.auth.models import Group

    with django_db_blocker.unblock():
        MIGRATED_ROLE_GROUPS.update(
            {
                group.name: [
                    (p.content_type.app_label, p.content_type.model, p.codename, p.name)
                    for p in group.permissions.select_related("content_type")
                ]
                for group in Group.objects.prefetch_related("permissions")
            }
        )
    return django_db_setup


def restore_role_groups(groups: dict) -> None:
    """The role groups made again as the migrations made them (a transactional test's flush empties every table)."""
    from django.contrib.auth.models import Group, Permission
    from django.contrib.contenttypes.models import ContentType

    for name, permissions in groups.items():
        group, _ = Group.objects.get_or_create(name=name)
        group.permissions.set(
            [
                Permission.objects.get_or_create(
                    content_type=ContentType.objects.get_or_create(app_label=app_label, model=model)[0],
                    codename=codename,
                    defaults={"name": label},
                )[0]
                for app_label, model, codename, label in permissions
            ]
        )


@pytest.fixture
def make_staff(db, django_user_model):
    """A staff user in one of the role groups made by credentials/migrations/0002_roles.py.

    make_staff("Viewer"), make_staff("Customer success"), make_staff("Data engineer"),
    or make_staff(None, is_superuser=True). The password is STAFF_PASSWORD. A
    transactional test that ran before on this worker emptied every table, the
    groups too: they are made again from what the migrations left.
    """
    from django.contrib.auth.models import Group

    if Group.objects.filter(name__in=MIGRATED_ROLE_GROUPS).count() != len(MIGRATED_ROLE_GROUPS):
        restore_role_groups(MIGRATED_ROLE_GROUPS)

    def make(role: str | None, *, username: str | None = None, is_superuser: bool = False, **kwargs):
        n = next(_counter)
        user = django_user_model.objects.create_user(
            username=username or f"staff{n}",
            email=f"staff{n}@registry.example",
            password=STAFF_PASSWORD,
            is_staff=True,
            is_superuser=is_superuser,
            **kwargs,
        )
        if role:
            user.groups.add(Group.objects.get(name=role))
        return user

    return make


@pytest.fixture
def cd2_gateway(settings):
    """A real fake CD2 gateway on loopback, with settings.CD2_API_URL pointing at it.

    It accepts the demo key and PLANTED_SECRET for PLANTED_CLIENT_ID; see
    devtools/fake_gateway.py for the special Client IDs (gateway-down,
    forbidden-...) and `.set_mode()`.
    """
    from devtools.fake_gateway import FakeGateway

    with FakeGateway(keys={PLANTED_CLIENT_ID: PLANTED_SECRET}) as gateway:
        settings.CD2_API_URL = gateway.url
        settings.CD2_CONNECT_TIMEOUT = 2.0
        settings.CD2_READ_TIMEOUT = 5.0
        yield gateway


def accepted_submission() -> dict:
    """The form of a key the fake gateway accepts at once: it runs a year from today (no short-expiry question)."""
    return {
        "client_id": DEMO_ACCEPTED_CLIENT_ID,
        "secret": DEMO_ACCEPTED_SECRET,
        "expires_on": add_months(timezone.localdate(), 12).isoformat(),
        "submitted_by": "Ada Admin",
        "submitted_by_email": "ada@northfield.example.edu",
    }


# The Client ID that cd2_gateway accepts with PLANTED_SECRET.
PLANTED_CLIENT_ID = "us-east-1#5a1e0000-0000-4000-8000-00000000beef"


class PublishedTasks(list):
    """Tasks published during a test (see the celery_messages fixture)."""

    def __init__(self, app) -> None:
        super().__init__()
        self._app = app
        self._raw: list[bytes] = []

    def raw_bodies(self) -> list[bytes]:
        """The serialized message bodies exactly as the broker holds them."""
        with self._app.connection_for_write() as connection:
            queue = connection.SimpleQueue("celery")
            while len(self._raw) < len(self):
                message = queue.get(timeout=1)
                self._raw.append(message.body if isinstance(message.body, bytes) else str(message.body).encode())
            queue.close()
        return list(self._raw)


@pytest.fixture
def celery_messages():
    """Publish Celery tasks to an in-memory broker (no worker) and list what was published.

    Each item is {"task", "args", "kwargs", "headers"}; `.raw_bodies()` gives
    the serialized bodies.
    """
    from celery.signals import before_task_publish

    from edpotential.celery import app

    published = PublishedTasks(app)

    def record(sender=None, body=None, headers=None, **kwargs):
        args, task_kwargs = (body[0], body[1]) if isinstance(body, list | tuple) else (None, None)
        published.append({"task": sender, "args": args, "kwargs": task_kwargs, "headers": dict(headers or {})})

    saved = app.conf.broker_url, app._pool, app.amqp._producer_pool
    app.conf.broker_url = "memory://"
    app._pool = None
    app.amqp._producer_pool = None
    with app.connection_for_write() as connection:  # the memory broker outlives a test: start empty
        queue = connection.SimpleQueue("celery")
        queue.clear()
        queue.close()
    before_task_publish.connect(record, weak=False)
    try:
        yield published
    finally:
        before_task_publish.disconnect(record)
        app.conf.broker_url, app._pool, app.amqp._producer_pool = saved


@pytest.fixture
def isolated_cache(settings, tmp_path):
    """An empty cache of the configured kind that no other process writes to.

    The development file cache under var/ is shared with `make run` and with
    other test runs; rate-limit counters there would leak between them. A
    Redis cache (CACHE_URL, as in CI) is kept, and only flushed.
    """
    from django.core.cache import cache

    if settings.CACHES["default"]["BACKEND"].endswith("FileBasedCache"):
        settings.CACHES = {
            "default": {
                "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
                "LOCATION": str(tmp_path / "cache"),
            }
        }
    cache.clear()
    yield cache
    cache.clear()


@pytest.fixture
def held_clock():
    """The wall clock held still for the test: a count against a rate limit stays in one window.

    django-ratelimit counts in fixed windows (an hour from an offset of each
    key's own), so 32 requests over a second can straddle a window's turn
    and find the count back at zero: seen on CI once at 07:30:32. With the
    clock held, the count the test makes is the one it checks. Only the wall
    clock stops; time.monotonic, sleeps and timeouts stay real.
    """
    import time_machine

    with time_machine.travel(timezone.now(), tick=False) as traveller:
        yield traveller


@pytest.fixture
def inline_worker():
    """Stands in for the Celery workers: a delivery task published runs at once, in this process.

    For the doors that queue and then wait (send_expiry_reminders --wait);
    the real workers have their own end-to-end tests (tests/e2e).
    """
    from unittest import mock

    from credentials import tasks
    from credentials.services import jobs

    run = {jobs.DELIVER_NOTICE: tasks.deliver_notice, jobs.DELIVER_NOTICES: tasks.deliver_notices}

    def publish(name, *, args=(), countdown=None, robust=False):
        if name in run:
            run[name].apply(args=list(args))

    # At once rather than on commit: a unit test's transaction never commits.
    with mock.patch.object(jobs, "job_enqueue", publish), mock.patch.object(jobs, "job_enqueue_on_commit", publish):
        yield


# ---------------------------------------------------------------------------
# Staff sign-in with the identity provider (staffsso/): a real OpenID provider
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def oidc_provider():
    """The test OpenID provider (node's oidc-provider on loopback), one process per test module.

    Mark the module `pytest.mark.xdist_group("oidc_provider")` so its tests share a worker.
    """
    from tests.staffsso.provider import OidcProvider

    provider = OidcProvider.start()
    try:
        yield provider
    finally:
        provider.stop()


@pytest.fixture
def sso_settings(settings, oidc_provider):
    """SSO on against the test provider, no people known there yet; yields the provider.

    Multi-factor from the provider's amr is required (OIDC_REQUIRE_MFA); a
    test that wants our code step after the provider turns it off.
    """
    from staffsso.discovery import provider_metadata_forget
    from tests.staffsso.provider import CLIENT_ID, CLIENT_SECRET, DOMAIN, GROUP_ROLES

    oidc_provider.reset()
    provider_metadata_forget()
    settings.OIDC_ISSUER = oidc_provider.issuer
    settings.OIDC_CLIENT_ID = CLIENT_ID
    settings.OIDC_CLIENT_SECRET = CLIENT_SECRET
    settings.OIDC_PROVIDER_NAME = "Test IdP"
    settings.OIDC_SCOPES = "openid email profile groups"
    settings.OIDC_ALLOWED_EMAIL_DOMAINS = [DOMAIN]
    settings.OIDC_GROUP_ROLES = ",".join(f"{group}:{role}" for group, role in GROUP_ROLES.items())
    settings.OIDC_REQUIRE_MFA = True
    yield oidc_provider
    provider_metadata_forget()


# The longest tests, measured (make test, idle): started first, so that pytest-xdist's workers
# finish together instead of one of them running a 150-second test at the end alone.
LONGEST_FIRST = (
    "tests/devtools/test_readme.py::test_every_readme_example_runs_as_written_on_a_fresh_demo_on_other_ports",
    "tests/credentials/test_outbox_year.py::",
    "tests/security/test_drills.py::test_a_worker_killed_mid_send",
    "tests/devtools/test_make_run.py::",
    "tests/security/test_admin_crawl.py::",
)


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        return next((n for n, prefix in enumerate(LONGEST_FIRST) if item.nodeid.startswith(prefix)), len(LONGEST_FIRST))

    items.sort(key=rank)  # stable: everything else keeps its order
