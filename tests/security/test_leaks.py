"""Leak-proofing: a planted Secret appears nowhere but the reveal page and the hand-off output.

Each *path* below drives one way the system touches a key (a page, a
command, a task, an email, an error). While it runs, every surface an
outsider or a log reader could see is collected:

- every HTTP response: body and headers (cookies, Location);
- every email: subject, bodies, attachments, headers;
- every log record at DEBUG, raw, before the masking filter (the first net
  is the code itself; test_logging.py tests the second);
- SQL as sent to the database (debug cursor), so plaintext never travels;
- command output;
- afterwards, every column of every table except the two encrypted ones.

Then the Secret and its `Authorization: Basic` base64 form must appear in
none of them, except on surfaces a path marks as *allowed* (the reveal page,
the hand-off output), where they must appear (so the check cannot pass by
the secret never being planted).

Adding a path: write `def path_<name>(leak: Surfaces, world: World)` and
decorate it with `@leak_path`. Celery messages in real Redis and Django's
error mail have their own tests at the end.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from unittest import mock

import pytest
from django.core import mail
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.utils import timezone

from credentials.models import CD2Credential, SubmissionLink
from credentials.services.links import submission_link_create
from devtools.fake_gateway import FakeGateway
from tests.conftest import PASSED_CHECK, PLANTED_SECRET

CLIENT_ID = "us-east-1#5ec7e7a1-0000-4000-8000-00000000babe"
BASIC = base64.b64encode(f"{CLIENT_ID}:{PLANTED_SECRET}".encode()).decode()
SECRET_B64 = base64.b64encode(PLANTED_SECRET.encode()).decode().rstrip("=")
FORBIDDEN = {"the Secret": PLANTED_SECRET, "the Basic auth header": BASIC, "the base64 of the Secret": SECRET_B64}
ENCRYPTED_COLUMNS = {("credentials_cd2credential", "client_id"), ("credentials_cd2credential", "secret")}

PATHS: dict[str, Callable] = {}


def leak_path(fn: Callable) -> Callable:
    PATHS[fn.__name__.removeprefix("path_")] = fn
    return fn


# ---------------------------------------------------------------------------
# Collecting surfaces
# ---------------------------------------------------------------------------


@dataclass
class Surfaces:
    seen: list[tuple[str, str]] = field(default_factory=list)
    allowed: list[tuple[str, str]] = field(default_factory=list)

    def add(self, where: str, text: str | bytes, *, allowed: bool = False) -> None:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        (self.allowed if allowed else self.seen).append((where, text))

    def response(self, where: str, response, *, allowed: bool = False) -> None:
        headers = "\n".join(f"{k}: {v}" for k, v in response.items())
        cookies = response.cookies.output() if response.cookies else ""
        body = b"" if getattr(response, "streaming", False) else response.content
        self.add(
            f"{where} [{response.status_code}]",
            headers + "\n" + cookies + "\n" + body.decode("utf-8", "replace"),
            allowed=allowed,
        )


class RawLogCapture(logging.Handler):
    """Sees every record before any masking filter: installed first on the root logger."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:
            text = f"{record.msg!r} {record.args!r}"
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        self.lines.append(f"{record.name} {record.levelname} {text}")


@pytest.fixture
def raw_logs():
    root = logging.getLogger()
    capture = RawLogCapture()
    root.handlers.insert(0, capture)
    levels = {name: logging.getLogger(name).level for name in ("", "django", "celery", "credentials", "axes")}
    for name in levels:
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        yield capture
    finally:
        root.removeHandler(capture)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def database_dump() -> list[tuple[str, str]]:
    rows = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            columns = [c.name for c in connection.introspection.get_table_description(cursor, table)]
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")  # noqa: S608 (own table names)
            for row in cursor.fetchall():
                for column, value in zip(columns, row, strict=True):
                    if (table, column) not in ENCRYPTED_COLUMNS and value is not None:
                        rows.append((f"database {table}.{column}", str(value)))
    return rows


def mail_surfaces(messages) -> list[tuple[str, str]]:
    out = []
    for message in messages:
        out.append((f"email '{message.subject}'", message.message().as_string()))
        out.append((f"email '{message.subject}' text", message.subject + message.body))
        for content, _ in getattr(message, "alternatives", []):
            out.append((f"email '{message.subject}' html", str(content)))
        for attachment in message.attachments:
            out.append((f"email '{message.subject}' attachment", str(attachment)))
    return out


def find_leaks(surfaces: list[tuple[str, str]]) -> list[str]:
    return [f"{name} in {where}" for where, text in surfaces for name, value in FORBIDDEN.items() if value in text]


# ---------------------------------------------------------------------------
# The world each path runs in
# ---------------------------------------------------------------------------


@dataclass
class World:
    gateway: FakeGateway
    institution: object
    credential: CD2Credential | None
    make_staff: Callable
    verified_login: Callable
    settings: object

    def new_link(self) -> str:
        return submission_link_create(institution=self.institution).token

    def form(self, **overrides) -> dict:
        return {
            "client_id": CLIENT_ID,
            "secret": PLANTED_SECRET,
            "expires_on": (timezone.localdate() + dt.timedelta(days=300)).isoformat(),
            "submitted_by": "Ada Admin",
            "submitted_by_email": "ada@northfield.example.edu",
            **overrides,
        }

    def staff_client(self, role: str | None, **kwargs) -> Client:
        client = Client(raise_request_exception=False)
        return self.verified_login(client, self.make_staff(role, **kwargs))

    def planted_key(self, *, days: int = 300) -> CD2Credential:
        """The planted key stored as the institution's active key (as if submitted earlier)."""
        from credentials.services.keys import credential_create
        from credentials.validators import CleanKey
        from tests.conftest import accepted_earlier

        return accepted_earlier(
            credential_create(
                institution=self.institution,
                key=CleanKey(
                    client_id=CLIENT_ID,
                    secret=PLANTED_SECRET,
                    expires_on=timezone.localdate() + dt.timedelta(days=days),
                ),
                source=CD2Credential.Source.ADMIN,
                status=CD2Credential.Status.ACTIVE,
                check=PASSED_CHECK,
            )
        )


# ---------------------------------------------------------------------------
# Paths: the public submission page
# ---------------------------------------------------------------------------


@leak_path
def path_submission_accepted(leak: Surfaces, world: World) -> None:
    client = Client(raise_request_exception=False)
    token = world.new_link()
    leak.response("submit page", client.get(f"/k/{token}/"))
    response = client.post(f"/k/{token}/", world.form())
    leak.response("submit accepted", response)
    leak.response("received page", client.get(response["Location"]))
    assert CD2Credential.objects.filter(status="active").count() == 1


@leak_path
def path_submission_invalid(leak: Surfaces, world: World) -> None:
    client = Client(raise_request_exception=False)
    token = world.new_link()
    for bad in (
        {"client_id": "no-hash-here"},
        {"expires_on": "2001-01-01"},
        {"secret": PLANTED_SECRET + " x"},
        {"submitted_by_email": "nope"},
        {"secret": CLIENT_ID},
    ):
        leak.response(f"submit invalid {list(bad)}", client.post(f"/k/{token}/", world.form(**bad)))


@leak_path
def path_submission_secret_pasted_into_the_client_id_field(leak: Surfaces, world: World) -> None:
    # A customer pasting the two values the wrong way round: the refused
    # Client ID field must not be rendered back holding the Secret.
    client = Client(raise_request_exception=False)
    form = world.form(client_id=PLANTED_SECRET, secret=CLIENT_ID)
    leak.response("submit values swapped", client.post(f"/k/{world.new_link()}/", form))


@leak_path
def path_submission_rejected_by_cd2(leak: Surfaces, world: World) -> None:
    world.gateway.remove_key(CLIENT_ID)
    client = Client(raise_request_exception=False)
    leak.response("submit rejected (401)", client.post(f"/k/{world.new_link()}/", world.form()))


@leak_path
def path_submission_forbidden_by_cd2(leak: Surfaces, world: World) -> None:
    client = Client(raise_request_exception=False)
    form = world.form(client_id="us-east-1#forbidden-not-onboarded")
    leak.response("submit forbidden (403)", client.post(f"/k/{world.new_link()}/", form))


@leak_path
def path_submission_while_cd2_is_down(leak: Surfaces, world: World) -> None:
    world.gateway.set_mode("down")
    client = Client(raise_request_exception=False)
    response = client.post(f"/k/{world.new_link()}/", world.form())
    leak.response("submit pending", response)
    if response.status_code == 302:
        leak.response("received page (pending)", client.get(response["Location"]))


@leak_path
def path_submission_replayed_and_unusable_links(leak: Surfaces, world: World) -> None:
    client = Client(raise_request_exception=False)
    token = world.new_link()
    client.post(f"/k/{token}/", world.form())
    leak.response("replayed link", client.post(f"/k/{token}/", world.form()))
    leak.response("unknown link", client.post("/k/not-a-real-token-at-all/", world.form()))
    revoked = submission_link_create(institution=world.institution)
    SubmissionLink.objects.filter(pk=revoked.link.pk).update(revoked_at=timezone.now())
    leak.response("revoked link", client.post(f"/k/{revoked.token}/", world.form()))


@leak_path
def path_submission_rate_limited_and_too_large(leak: Surfaces, world: World) -> None:
    client = Client(raise_request_exception=False)
    token = world.new_link()
    for _ in range(12):
        response = client.post(f"/k/{token}/", world.form(client_id="bad"))
    leak.response("rate limited", response)
    leak.response("too large", client.post(f"/k/{world.new_link()}/", world.form(submitted_by="x" * 20000)))


# ---------------------------------------------------------------------------
# Paths: the admin, per role
# ---------------------------------------------------------------------------

ROLES = ("Viewer", "Customer success", "Data engineer", None)  # None: a superuser


def admin_urls(world: World) -> list[str]:
    from django.contrib import admin
    from django.urls import NoReverseMatch, reverse

    credential = world.credential
    urls = ["/admin/"]
    for model in admin.site._registry:
        opts = model._meta
        urls.append(reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"))
        urls.append(reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist") + "?q=us-east-1")
    for name, obj in (("credentials_cd2credential", credential), ("institutions_institution", world.institution)):
        for view in ("change", "history", "delete"):
            try:
                urls.append(reverse(f"admin:{name}_{view}", args=[obj.pk]))
            except NoReverseMatch:
                pass
    urls.append(reverse("admin:credentials_cd2credential_reveal", args=[credential.pk]))  # the form, not the secret
    return urls


@leak_path
def path_admin_pages_for_every_role(leak: Surfaces, world: World) -> None:
    world.credential = world.planted_key()
    for role in ROLES:
        client = world.staff_client(role, is_superuser=role is None)
        statuses = {}
        for url in admin_urls(world):
            response = client.get(url)
            statuses[url] = response.status_code
            leak.response(f"{role or 'superuser'} GET {url}", response)
        # Not vacuous: every role really reaches the admin and the key's own page.
        assert statuses["/admin/"] == 200, role
        assert statuses[f"/admin/credentials/cd2credential/{world.credential.pk}/change/"] == 200, role


@leak_path
def path_admin_key_actions(leak: Surfaces, world: World) -> None:
    from django.urls import reverse

    world.credential = world.planted_key()
    client = world.staff_client(None, is_superuser=True)
    pk = world.institution.pk
    for action in ("check_key", "send_link", "send_reminder"):
        try:
            url = reverse(f"admin:institutions_institution_{action}", args=[pk])
        except Exception:  # noqa: S112 (an action another issue has not built)
            continue
        leak.response(f"POST {action}", client.post(url, {"reason": "leak test", "confirm": "yes"}, follow=True))
    add_url = reverse("admin:institutions_institution_add_key", args=[pk])
    leak.response("GET add key", client.get(add_url))
    world.gateway.remove_key(CLIENT_ID)  # a refused key is shown back as an error
    form = world.form()
    leak.response("POST add key (refused)", client.post(add_url, form, follow=True))
    world.gateway.add_key(CLIENT_ID, PLANTED_SECRET)
    leak.response("POST add key", client.post(add_url, form, follow=True))


@leak_path
def path_reveal(leak: Surfaces, world: World) -> None:
    from tests.conftest import STAFF_PASSWORD

    world.credential = world.planted_key()
    client = world.staff_client("Data engineer")
    url = f"/admin/credentials/cd2credential/{world.credential.pk}/reveal/"
    leak.response("reveal form", client.get(url))
    leak.response("reveal wrong password", client.post(url, {"reason": "leak test", "password": "nope"}))
    shown = client.post(url, {"reason": "pipeline rebuild", "password": STAFF_PASSWORD})
    leak.response("reveal shown", shown, allowed=True)
    change_url = f"/admin/credentials/cd2credential/{world.credential.pk}/change/"
    leak.response("change page after reveal", client.get(change_url))


@leak_path
def path_handoff(leak: Surfaces, world: World) -> None:
    world.credential = world.planted_key()
    engineer = world.make_staff("Data engineer")
    for output_format in ("env", "json"):
        out, err = io.StringIO(), io.StringIO()
        call_command(
            "cd2_credentials",
            world.institution.slug,
            "--format",
            output_format,
            "--as",
            engineer.get_username(),
            "--reason",
            "leak test",
            stdout=out,
            stderr=err,
        )
        leak.add(f"hand-off stdout ({output_format})", out.getvalue(), allowed=True)
        leak.add(f"hand-off stderr ({output_format})", err.getvalue())


# ---------------------------------------------------------------------------
# Paths: background work
# ---------------------------------------------------------------------------


@leak_path
def path_key_checks(leak: Surfaces, world: World) -> None:
    from credentials.services.verification import credentials_verify_active

    world.credential = world.planted_key()
    run = credentials_verify_active(run_now=True)
    leak.add("verify run (ok)", repr(run))
    world.gateway.remove_key(CLIENT_ID)  # the customer deleted the key: invalid, staff and contacts told
    run = credentials_verify_active(run_now=True)
    leak.add("verify run (rejected)", repr(run))
    out = io.StringIO()
    call_command("verify_credentials", stdout=out, stderr=out)
    leak.add("verify_credentials output", out.getvalue())


@leak_path
def path_reminders(leak: Surfaces, world: World) -> None:
    from tests.conftest import reminders_run

    world.credential = world.planted_key(days=7)
    leak.add("reminder run", repr(reminders_run()))
    assert mail.outbox, "a reminder should have been sent for a key 7 days from expiry"
    out = io.StringIO()
    call_command("send_expiry_reminders", stdout=out, stderr=out)
    leak.add("send_expiry_reminders output", out.getvalue())


@leak_path
def path_staff_digest(leak: Surfaces, world: World) -> None:
    from credentials.models import Notice
    from credentials.services.digest import staff_digest_build, staff_digest_send

    world.settings.STAFF_DIGEST_RECIPIENTS = ["cs@registry.example"]
    world.credential = world.planted_key(days=10)
    staff_digest_send()
    leak.add("digest", repr(staff_digest_build()))
    leak.add("digest notice", repr(list(Notice.objects.values())))
    assert mail.outbox, "the digest should have been mailed"


# ---------------------------------------------------------------------------
# The test
# ---------------------------------------------------------------------------


@pytest.fixture
def world(institution, make_staff, verified_login, settings):
    with FakeGateway(keys={CLIENT_ID: PLANTED_SECRET}) as gateway:
        settings.CD2_API_URL = gateway.url
        settings.CD2_READ_TIMEOUT = 5
        settings.CELERY_TASK_ALWAYS_EAGER = False
        yield World(gateway, institution, None, make_staff, verified_login, settings)


# Leaks found by this suite and not fixed yet, each with the fix it needs.
# strict: the test fails once the leak is fixed, so the entry gets removed.
KNOWN_LEAKS: dict[str, str] = {}


@pytest.mark.django_db
@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=KNOWN_LEAKS[n])) if n in KNOWN_LEAKS else n
        for n in sorted(PATHS)
    ],
)
def test_the_secret_appears_nowhere_but_the_reveal_page_and_the_hand_off(
    name, world, raw_logs, django_capture_on_commit_callbacks, settings
):
    settings.ADMINS = [("Ops", "ops@registry.example")]
    leak = Surfaces()
    connection.force_debug_cursor = True  # SQL and its parameters are logged at DEBUG too
    try:
        # Queued tasks are recorded, not sent: their arguments are a surface too.
        with (
            django_capture_on_commit_callbacks(execute=True),
            mock.patch("celery.app.task.Task.apply_async", autospec=True) as queued,
        ):
            PATHS[name](leak, world)
    finally:
        connection.force_debug_cursor = False
    surfaces = (
        leak.seen
        + [("task arguments", repr(call)) for call in queued.call_args_list]
        + mail_surfaces(mail.outbox)
        + [("log", line) for line in raw_logs.lines]
        + database_dump()
    )
    assert not find_leaks(surfaces), find_leaks(surfaces)
    # The plant is real: the secret reached the places that may show it.
    if leak.allowed:
        assert any(PLANTED_SECRET in text for _, text in leak.allowed)


# ---------------------------------------------------------------------------
# Django's error mail for an unhandled exception during a submission
# ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_error_mail_for_a_crash_mid_submission_holds_no_secret(world, settings, raw_logs):
    settings.ADMINS = [("Ops", "ops@registry.example")]
    settings.DEBUG = False
    client = Client(raise_request_exception=False)
    with mock.patch("credentials.services.submission.credential_create", side_effect=RuntimeError("disk on fire")):
        response = client.post(f"/k/{world.new_link()}/", world.form())
    assert response.status_code == 500
    assert len(mail.outbox) == 1 and "disk on fire" in mail.outbox[0].body  # the mail was really sent
    surfaces = [*mail_surfaces(mail.outbox), ("500 page", response.content.decode())]
    surfaces += [("log", line) for line in raw_logs.lines if "Internal Server Error" not in line]
    assert not find_leaks(surfaces), find_leaks(surfaces)


# ---------------------------------------------------------------------------
# Celery messages, read back from a real Redis
# ---------------------------------------------------------------------------


def redis_or_skip():
    import redis

    client = redis.Redis.from_url("redis://127.0.0.1:6379/5", socket_connect_timeout=1)
    try:
        client.ping()
    except redis.exceptions.ConnectionError:
        pytest.skip("no Redis on 127.0.0.1:6379 (CI has one)")
    return client


@pytest.mark.django_db(transaction=True)
def test_celery_messages_in_redis_hold_no_secret(institution, monkeypatch):
    from edpotential.celery import app

    redis_client = redis_or_skip()
    redis_client.flushdb()
    old = app.conf.broker_url, app.conf.broker_transport_options
    app.conf.broker_url, app.conf.broker_transport_options = "redis://127.0.0.1:6379/5", {}
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:6379/5")  # Celery reads this first
    app._pool, app.amqp._producer_pool = None, None
    try:
        with (
            FakeGateway(keys={CLIENT_ID: PLANTED_SECRET}) as gateway,
            mock.patch("django.conf.settings.CD2_API_URL", gateway.url),
        ):
            gateway.set_mode("down")  # stored as pending: a re-check is queued
            Client(raise_request_exception=False).post(
                f"/k/{submission_link_create(institution=institution).token}/",
                {
                    "client_id": CLIENT_ID,
                    "secret": PLANTED_SECRET,
                    "expires_on": (timezone.localdate() + dt.timedelta(days=7)).isoformat(),
                    "confirm_short_expiry": "on",
                    "submitted_by": "Ada",
                    "submitted_by_email": "ada@northfield.example.edu",
                },
            )
            gateway.set_mode(None)
            credential = CD2Credential.objects.get(institution=institution)
            CD2Credential.objects.filter(pk=credential.pk).update(status="active")
            from credentials.services.reminders import reminders_send_due
            from credentials.services.verification import credentials_verify_active

            reminders_send_due()
            credentials_verify_active(run_now=False)
            Client().post("/link/", {"email": "ada@northfield.example.edu"})
        messages = []
        for key in redis_client.keys("*"):
            if redis_client.type(key) == b"list":
                messages += redis_client.lrange(key, 0, -1)
        assert messages, "tasks should have been queued in Redis"
        texts = []
        for raw in messages:
            texts.append(raw.decode())
            envelope = json.loads(raw)
            texts.append(base64.b64decode(envelope["body"]).decode())
        leaks = find_leaks([("redis message", text) for text in texts])
        assert not leaks, leaks
    finally:
        redis_client.flushdb()
        app.conf.broker_url, app.conf.broker_transport_options = old
        app._pool, app.amqp._producer_pool = None, None


def test_there_is_no_result_backend_to_leak_into(settings):
    from edpotential.celery import app

    assert settings.CELERY_TASK_IGNORE_RESULT is True
    assert not getattr(settings, "CELERY_RESULT_BACKEND", None)
    assert app.conf.result_backend in (None, "disabled")
