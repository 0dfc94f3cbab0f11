"""Every query on a hot path can be served by an index: no sequential scan of a table that grows with N.

A few thousand institutions (bulk_create, then ANALYZE), each hot door run
once through its real code path (the test client, or the service a beat
task calls) while connection.execute_wrapper records its statements; each
statement is then EXPLAINed with its own parameters.

Why `enable_seqscan = off` for the EXPLAIN: at a few thousand rows a
sequential scan is often the cheapest plan and PostgreSQL rightly takes it,
which says nothing about 100,000 rows. With sequential scans priced out,
the planner takes any index that can serve the query; a Seq Scan still in
the plan means no index can, and the query reads the whole table at every
size. (That is the question here; bench/ measures the speed at 100,000.)

Needs PostgreSQL (CI runs it; set DATABASE_URL).
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from dataclasses import dataclass

import pytest
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from api.models import Scope, ServiceAccount
from api.services import api_token_issue
from credentials.models import AuditEvent, CD2Credential, Notice, ReminderLog, SubmissionLink
from credentials.services import outbox, reminders
from credentials.services.keys import key_summaries_fix
from credentials.services.links import submission_link_create
from devtools.fake_gateway import DEMO_ACCEPTED_CLIENT_ID, DEMO_ACCEPTED_SECRET
from institutions.models import Contact, Institution

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(connection.vendor != "postgresql", reason="reads PostgreSQL's plans (CI; set DATABASE_URL)"),
]

INSTITUTIONS = 3000
ZONES = ("America/New_York", "America/Chicago", "America/Los_Angeles", "Europe/London", "Pacific/Auckland", "UTC")

# Tables whose rows grow with the number of institutions (or with time, per institution).
GROWING = frozenset(
    model._meta.db_table
    for model in (Institution, Contact, CD2Credential, ReminderLog, Notice, AuditEvent, SubmissionLink)
) | {ServiceAccount.institutions.through._meta.db_table}


# Priced out for the EXPLAIN (see the module's docstring): sequential scans,
# and the hash and merge joins that at this size may walk a whole index of
# the inner table instead of looking up the rows it joins. What is left is a
# nested loop whose inner side uses an index if any can serve the join.
PRICED_OUT = ("enable_seqscan", "enable_hashjoin", "enable_mergejoin")

# Whole reads that are the door's work at any N, each with its reason.
WHOLE_BY_DESIGN = {
    # Django's paginator counts the unfiltered list (the "of N" of the admin
    # list): one COUNT per page, as the stock changelist of bench/'s floor.
    'SELECT COUNT(*) AS "__count" FROM "institutions_institution"',
}


@dataclass(frozen=True)
class Statement:
    door: str
    sql: str
    params: tuple | list | dict | None


class Recorder:
    """connection.execute_wrapper: keeps each statement a door runs, with its parameters."""

    def __init__(self) -> None:
        self.door = ""
        self.statements: list[Statement] = []

    def __call__(self, execute, sql, params, many, context):
        if not many and sql.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE", "WITH")):
            self.statements.append(Statement(self.door, sql, params))
        return execute(sql, params, many, context)


def _whole_reads(node: dict, under_limit: bool = False):
    """The growing tables a plan node (and its children) reads whole: (table, how).

    A Seq Scan reads the table whole; so does an index scan with no index
    condition (with seqscan priced out, the planner walks a whole index
    instead), unless it only walks an index in order under a LIMIT with no
    filter of its own (an ordered page: it stops after the page).
    """
    kind = node["Node Type"]
    table = node.get("Relation Name")
    if table in GROWING:
        if kind == "Seq Scan":
            yield table, "Seq Scan"
        elif kind in ("Index Scan", "Index Only Scan") and "Index Cond" not in node:
            if not (under_limit and "Filter" not in node):
                yield table, f"{kind} using {node['Index Name']} without an index condition"
        elif kind == "Bitmap Heap Scan" and not _bitmap_conditions(node):
            yield table, "Bitmap Heap Scan without an index condition"
    for child in node.get("Plans", ()):
        yield from _whole_reads(child, under_limit or kind == "Limit")


def _bitmap_conditions(node: dict) -> bool:
    """Every Bitmap Index Scan under a Bitmap Heap Scan has an index condition."""
    children = node.get("Plans", ())
    if node["Node Type"] == "Bitmap Index Scan":
        return "Index Cond" in node
    return bool(children) and all(_bitmap_conditions(child) for child in children)


def whole_reads(statement: Statement) -> list[str]:
    """How the statement's plan still reads a growing table whole, with sequential scans priced out."""
    with connection.cursor() as cursor:
        for setting in PRICED_OUT:
            cursor.execute(f"SET {setting} = off")
        try:
            cursor.execute("EXPLAIN (FORMAT JSON) " + statement.sql, statement.params)
            value = cursor.fetchone()[0]
        finally:
            for setting in PRICED_OUT:
                cursor.execute(f"RESET {setting}")
    (plan,) = json.loads(value) if isinstance(value, str) else value
    return [f"{how} on {table}" for table, how in _whole_reads(plan["Plan"])]


def _build(n: int) -> dict:
    """n institutions, a contact each, an active key each (one in ten with a superseded older one), a steady
    state of reminder steps and their notices, a link and an audit row each; then ANALYZE."""
    now = timezone.now()
    today = timezone.localdate(now)
    institutions = Institution.objects.bulk_create(
        Institution(
            name=f"Plan University {i}",
            slug=f"plan-{i}",
            canvas_domain=f"plan{i}.instructure.com",
            status=Institution.Status.ACTIVE if i % 20 else Institution.Status.PAUSED,
            timezone=ZONES[i % len(ZONES)],
        )
        for i in range(n)
    )
    Contact.objects.bulk_create(
        Contact(institution=inst, name=f"Admin {i}", email=f"admin{i}@plan{i}.example.edu", receives_reminders=True)
        for i, inst in enumerate(institutions)
    )
    keys = []
    for i, inst in enumerate(institutions):
        fields = {
            "institution": inst,
            "client_id": f"us-east-1#0a1b2c3d-0000-4000-8000-{i:012d}",
            "secret": "s",
            "region": "us-east-1",
            "hint": f"us-east-1 …{i:04d}",
            "source": CD2Credential.Source.LINK,
            "status_changed_at": now - dt.timedelta(days=400),
            "submitted_at": now - dt.timedelta(days=400),
        }
        keys.append(
            CD2Credential(
                **fields,
                client_id_index=secrets.token_hex(32),
                expires_on=today + dt.timedelta(days=i % 730 - 60),
                status=CD2Credential.Status.ACTIVE,
            )
        )
        if i % 10 == 0:
            keys.append(
                CD2Credential(
                    **fields,
                    client_id_index=secrets.token_hex(32),
                    expires_on=today - dt.timedelta(days=30),
                    status=CD2Credential.Status.SUPERSEDED,
                )
            )
    keys = CD2Credential.objects.bulk_create(keys)
    steps = ReminderLog.objects.bulk_create(
        ReminderLog(credential=key, threshold=60, claimed_at=now - dt.timedelta(days=5))
        for key in keys
        if key.status == CD2Credential.Status.ACTIVE and (key.expires_on - today).days < 60
    )
    Notice.objects.bulk_create(
        Notice(
            kind=Notice.Kind.REMINDER,
            state=Notice.State.SENT,
            dedupe_key=f"reminder:{step.pk}",
            institution_id=step.credential.institution_id,
            credential=step.credential,
            reminder=step,
            day=today,
            as_of=step.claimed_at,
            created_at=step.claimed_at,
            retry_until=step.claimed_at + dt.timedelta(days=1),
            attempts=1,
            sent_at=step.claimed_at,
            closed_at=step.claimed_at,
        )
        for step in steps
    )
    AuditEvent.objects.bulk_create(
        AuditEvent(kind=AuditEvent.Kind.HANDOFF, credential=key, institution_id=key.institution_id) for key in keys
    )
    # The pipeline's accounts, each scoped to its share of the institutions, and the links the
    # institutions were sent (one open each, one used before it): tables of a realistic shape, so
    # the planner's choice says what it would do at scale, not that a two-row table is cheap to read.
    accounts = ServiceAccount.objects.bulk_create(ServiceAccount(name=f"pipeline-{n}") for n in range(n // 10))
    ServiceAccount.institutions.through.objects.bulk_create(
        ServiceAccount.institutions.through(serviceaccount_id=accounts[i // 10].pk, institution_id=inst.pk)
        for i, inst in enumerate(institutions[: len(accounts) * 10])
    )
    SubmissionLink.objects.bulk_create(
        SubmissionLink(
            institution=inst,
            token_hash=secrets.token_hex(32),
            created_at=now - dt.timedelta(days=used),
            expires_at=now + dt.timedelta(days=30 - used),
            used_at=now - dt.timedelta(days=used - 1) if used else None,
        )
        for inst in institutions
        for used in (40, 0)
    )
    key_summaries_fix(institution_ids=[inst.pk for inst in institutions])
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    return {"institutions": institutions, "now": now}


@pytest.fixture
def world(isolated_cache, celery_messages):
    return _build(INSTITUTIONS)


def _doors(world, client, admin_client, cd2_gateway, capture, record: Recorder) -> None:
    """Run each hot door once, recording its statements under its name."""
    # Keys of these two expire in a year or so (their index).
    first, second = world["institutions"][401], world["institutions"][402]
    account = ServiceAccount.objects.create(name="plan-pipeline")
    account.institutions.set([first, second])
    bearer = {
        "Authorization": "Bearer "
        + api_token_issue(account=account, scopes=[Scope.KEYS_READ, Scope.KEYS_LIST, Scope.SYNCS_WRITE]).plaintext
    }
    link = submission_link_create(institution=first)
    form = {
        "client_id": DEMO_ACCEPTED_CLIENT_ID,
        "secret": DEMO_ACCEPTED_SECRET,
        "expires_on": (timezone.localdate() + dt.timedelta(days=365)).isoformat(),
        "submitted_by": "Ada Admin",
        "submitted_by_email": "admin401@plan401.example.edu",
    }

    record.door = "submission"
    with capture(execute=True):
        assert client.post(reverse("credentials:submit", kwargs={"token": link.token}), form).status_code == 302
    record.door = "submission, Client ID on file elsewhere"
    other = submission_link_create(institution=second)
    with capture(execute=True):
        client.post(reverse("credentials:submit", kwargs={"token": other.token}), form)
    record.door = "lost link"
    with capture(execute=True):
        client.post(reverse("credentials:request_link"), {"email": "admin402@plan402.example.edu"})
    record.door = "outbox delivery (lost link, receipt)"
    outbox.outbox_deliver_due()
    record.door = "API key read"
    assert client.get(reverse("api:key", args=[second.slug]), headers=bearer).status_code == 200
    record.door = "API key list"
    assert client.get(reverse("api:keys"), headers=bearer).status_code == 200
    record.door = "API sync report"
    key = CD2Credential.objects.get(institution=second, status=CD2Credential.Status.ACTIVE)
    response = client.post(
        reverse("api:syncs", args=[second.slug]),
        {"key_id": key.pk, "outcome": "ok"},
        content_type="application/json",
        headers=bearer,
    )
    assert response.status_code == 202
    record.door = "reminder scan (hourly)"
    # Pages of 50 keys: a page is then as small a share of the keys here as the
    # 500 of a real run are of 100,000, and the planner plans it as it would there.
    reminders.reminders_decide(now=world["now"], not_before=dt.time(0, 0), dry_run=True, chunk_size=50)
    record.door = "admin list"
    assert admin_client.get(reverse("admin:institutions_institution_changelist")).status_code == 200
    record.door = "/healthz"
    client.get(reverse("healthz"))


def test_every_hot_query_can_be_served_by_an_index(
    world, client, admin_client, cd2_gateway, django_capture_on_commit_callbacks
):
    record = Recorder()
    with connection.execute_wrapper(record):
        _doors(world, client, admin_client, cd2_gateway, django_capture_on_commit_callbacks, record)
    doors = {statement.door for statement in record.statements}
    assert len(doors) == 11, doors  # every door ran queries that were recorded
    found = []
    for statement in record.statements:
        if statement.sql in WHOLE_BY_DESIGN:
            continue
        reads = whole_reads(statement)
        if reads:
            found.append(f"{statement.door}: {'; '.join(reads)}\n    {statement.sql[:400]} … {statement.sql[-300:]}")
    assert not found, "No index can serve these queries:\n" + "\n".join(found)
