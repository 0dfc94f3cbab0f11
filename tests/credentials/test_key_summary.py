"""The institution's stored key summary (Institution.key_*): written by the key services, checked for drift."""

from __future__ import annotations

import datetime as dt
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from credentials.models import CD2Credential
from credentials.selectors import institutions_with_key_status, key_summary_expected
from credentials.services.keys import (
    credential_activate,
    credential_create,
    credential_set_status,
    institution_key_summary_refresh,
    key_summaries_drifted,
)
from credentials.services.pending import VerifyResult, credential_verify_pending
from credentials.services.verification import credential_verify
from credentials.validators import CleanKey
from devtools.fake_gateway import DEMO_ACCEPTED_CLIENT_ID, DEMO_ACCEPTED_SECRET
from institutions.models import Institution, KeyState
from tests.conftest import PASSED_CHECK, PLANTED_CLIENT_ID, PLANTED_SECRET

Condition = KeyState
CHANGELIST = "/admin/institutions/institution/"


def summary(institution: Institution) -> tuple:
    institution.refresh_from_db()
    return (institution.key_condition, institution.key_pk, institution.key_expires_on, institution.key_region)


def planted_key(days: int = 200) -> CleanKey:
    return CleanKey(
        client_id=PLANTED_CLIENT_ID, secret=PLANTED_SECRET, expires_on=timezone.localdate() + dt.timedelta(days=days)
    )


@pytest.mark.django_db
def test_each_key_service_writes_the_summary_in_step_with_the_keys(institution, make_credential, make_key):
    assert summary(institution) == (Condition.MISSING, None, None, "")

    first = make_credential(institution, days=90, status=CD2Credential.Status.PENDING_VERIFICATION)
    assert summary(institution) == (Condition.PENDING, None, None, "")

    credential_activate(credential=first, check=PASSED_CHECK)
    assert summary(institution) == (Condition.OK, first.pk, first.expires_on, "us-east-1")
    assert institution.key_checked_at == first.last_verified_at is not None

    # A new key waits for its check: pending wins, the old key's expiry stays (it is still the active key).
    second = make_credential(institution, days=400, status=CD2Credential.Status.PENDING_VERIFICATION)
    assert summary(institution) == (Condition.PENDING, first.pk, first.expires_on, "us-east-1")

    credential_set_status(credential=second, status=CD2Credential.Status.INVALID, reason="refused")
    assert summary(institution) == (Condition.OK, first.pk, first.expires_on, "us-east-1")

    credential_set_status(credential=first, status=CD2Credential.Status.REVOKED, reason="customer asked")
    # No active key; the newest key that is not history was found invalid.
    assert summary(institution) == (Condition.FAILING, None, None, "")
    assert institution.key_checked_at is None

    third = make_credential(institution, days=30)
    assert summary(institution) == (Condition.OK, third.pk, third.expires_on, "us-east-1")
    assert key_summaries_drifted() == []


@pytest.mark.django_db
def test_the_daily_check_writes_when_the_key_was_checked_and_a_refusal_makes_it_failing(cd2_gateway, institution):
    key = credential_create(
        institution=institution, key=planted_key(), source="admin", status=CD2Credential.Status.ACTIVE
    )
    summary(institution)
    assert institution.key_checked_at is None  # never checked yet

    credential_verify(credential_id=key.pk)
    key.refresh_from_db()
    summary(institution)
    assert institution.key_checked_at == key.last_verified_at is not None
    assert key_summaries_drifted() == []

    cd2_gateway.remove_key(PLANTED_CLIENT_ID)  # deleted at identity.instructure.com
    credential_verify(credential_id=key.pk)
    assert summary(institution) == (Condition.FAILING, None, None, "")
    assert institutions_with_key_status().get(pk=institution.pk).key_state == KeyState.FAILING
    assert key_summaries_drifted() == []


@pytest.mark.django_db
def test_the_recheck_of_a_pending_key_writes_the_summary_whatever_it_finds(cd2_gateway, institution, make_credential):
    pending = credential_create(institution=institution, key=planted_key(), source="link")
    assert summary(institution)[0] == Condition.PENDING

    assert credential_verify_pending(credential_id=pending.pk) == VerifyResult.ACTIVE
    assert summary(institution) == (Condition.OK, pending.pk, pending.expires_on, "us-east-1")

    # A pending key overtaken by a newer active key is superseded; the newer key stays the institution's.
    other = credential_create(
        institution=institution,
        key=CleanKey(
            client_id=DEMO_ACCEPTED_CLIENT_ID,
            secret=DEMO_ACCEPTED_SECRET,
            expires_on=timezone.localdate() + dt.timedelta(days=300),
        ),
        source="link",
    )
    assert summary(institution)[0] == Condition.PENDING
    newer = make_credential(institution)
    assert summary(institution) == (Condition.OK, newer.pk, newer.expires_on, "us-east-1")
    assert credential_verify_pending(credential_id=other.pk) == VerifyResult.SUPERSEDED
    assert summary(institution) == (Condition.OK, newer.pk, newer.expires_on, "us-east-1")
    assert key_summaries_drifted() == []


@pytest.mark.django_db
def test_a_pending_key_refused_on_recheck_leaves_the_institution_failing(cd2_gateway, institution):
    pending = credential_create(institution=institution, key=planted_key(), source="link")
    cd2_gateway.remove_key(PLANTED_CLIENT_ID)

    assert credential_verify_pending(credential_id=pending.pk) == VerifyResult.INVALID
    assert summary(institution) == (Condition.FAILING, None, None, "")
    assert key_summaries_drifted() == []


@pytest.mark.django_db
def test_check_key_summary_finds_a_key_changed_behind_the_services_back_and_fix_rewrites_it(
    institution, make_institution, make_credential, staff_client
):
    key = make_credential(institution, days=10)
    untouched = make_institution()
    make_credential(untouched, days=20)
    call_command("check_key_summary", stdout=StringIO())  # in step: no error

    # Drift on purpose: a raw UPDATE, as a restored backup or a careless script would leave it.
    CD2Credential.objects.filter(pk=key.pk).update(status=CD2Credential.Status.REVOKED)

    with pytest.raises(CommandError, match=rf"1 institution\(s\) out of step with their keys \(ids {institution.pk}\)"):
        call_command("check_key_summary", stdout=StringIO())
    # Until fixed, the list still files it under its old expiry: that is what drift costs.
    client = staff_client("Viewer")
    assert "Northfield University" in client.get(CHANGELIST + "?expiry=30").content.decode()

    out = StringIO()
    call_command("check_key_summary", "--fix", stdout=out)

    assert f"rewrote 1 institution(s) (ids {institution.pk})" in out.getvalue()
    assert summary(institution) == (Condition.MISSING, None, None, "")
    assert "Northfield University" not in client.get(CHANGELIST + "?expiry=30").content.decode()
    assert "Northfield University" in client.get(CHANGELIST + "?expiry=none").content.decode()
    assert key_summaries_drifted() == []
    call_command("check_key_summary", stdout=StringIO())


@pytest.mark.django_db
def test_drift_in_each_column_is_found(institution, make_credential):
    key = make_credential(institution, days=10)
    changes = {
        "key_condition": Condition.FAILING,
        "key_pk": key.pk + 1000,
        "key_expires_on": key.expires_on + dt.timedelta(days=1),
        "key_checked_at": None,  # NULL on one side only
        "key_region": "eu-west-1",
        "key_reminded_unanswered": True,  # never reminded
    }
    for field, value in changes.items():
        before = Institution.objects.filter(pk=institution.pk).values(field).get()[field]
        Institution.objects.filter(pk=institution.pk).update(**{field: value})
        assert key_summaries_drifted() == [institution.pk], field
        Institution.objects.filter(pk=institution.pk).update(**{field: before})
        assert key_summaries_drifted() == [], field


@pytest.mark.django_db
def test_a_list_that_fits_on_one_page_asks_for_its_rows_with_a_limit(staff_client, institution, make_credential):
    make_credential(institution, days=10)
    client = staff_client("Viewer")

    with CaptureQueriesContext(connection) as captured:
        body = client.get(CHANGELIST + "?expiry=30").content.decode()

    assert "Northfield University" in body
    [rows] = [q["sql"] for q in captured if q["sql"].startswith('SELECT "institutions_institution"."id"')]
    assert "LIMIT 50" in rows


@pytest.mark.django_db
def test_the_region_filter_offers_each_region_in_use_once(make_institution, make_credential, staff_client):
    for client_id in ("eu-west-1#a-1", "us-east-1#b-2", "eu-west-1#c-3", "ap-southeast-2#d-4"):
        make_credential(make_institution(), client_id=client_id)
    credential_set_status(
        credential=CD2Credential.objects.get(region="ap-southeast-2"), status=CD2Credential.Status.REVOKED
    )

    body = staff_client("Viewer").get(CHANGELIST).content.decode()

    offered = [region for region in ("ap-southeast-2", "eu-west-1", "us-east-1") if f"?region={region}" in body]
    assert offered == ["eu-west-1", "us-east-1"]
    assert body.count("?region=eu-west-1") == 1


# --------------------------------------------------------------------------
# The data migration that filled the columns
# --------------------------------------------------------------------------

BEFORE = [("credentials", "0011_notice_kinds_and_payload"), ("institutions", "0004_owner_help_text")]
AFTER = [("credentials", "0012_fill_key_summary")]


def _migrate(targets=None):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    targets = targets or executor.loader.graph.leaf_nodes()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


@pytest.mark.django_db(transaction=True)
def test_the_migration_fills_the_summary_of_existing_institutions():
    old = _migrate(BEFORE)
    Institution_ = old.get_model("institutions", "Institution")
    Credential = old.get_model("credentials", "CD2Credential")
    now = timezone.now()

    def key(inst, n, status, verdict="", days=100):
        return Credential.objects.create(
            institution=inst,
            client_id="x",
            secret="y",
            client_id_index=f"index-{n}",
            region="eu-west-1",
            hint=f"h{n}",
            expires_on=dt.date(2030, 1, 1) + dt.timedelta(days=days),
            status=status,
            source="admin",
            submitted_at=now + dt.timedelta(minutes=n),
            last_verdict=verdict,
            last_verified_at=now if verdict else None,
        )

    def inst(slug):
        return Institution_.objects.create(name=slug, slug=slug, canvas_domain=f"{slug}.instructure.com")

    active, waiting, failing, invalid, _none = (inst(s) for s in ("active", "waiting", "failing", "invalid", "none"))
    ok = key(active, 1, "active", "ok")
    key(active, 2, "superseded")
    old_key = key(waiting, 3, "active", "ok", days=5)
    key(waiting, 4, "pending_verification")
    refused = key(failing, 5, "active", "rejected", days=1)
    key(invalid, 6, "invalid", "rejected")

    new = _migrate(AFTER)
    Institution_ = new.get_model("institutions", "Institution")
    rows = {
        i.slug: (i.key_condition, i.key_pk, i.key_expires_on, i.key_region, i.key_checked_at is not None)
        for i in Institution_.objects.all()
    }
    _migrate()  # the newest schema again, for the tests after this one

    assert rows == {
        "active": ("active", ok.pk, ok.expires_on, "eu-west-1", True),
        "waiting": ("pending", old_key.pk, old_key.expires_on, "eu-west-1", True),
        "failing": ("failing", refused.pk, refused.expires_on, "eu-west-1", True),
        "invalid": ("failing", None, None, "", False),
        "none": ("missing", None, None, "", False),
    }
    assert key_summaries_drifted() == []


@pytest.mark.django_db(transaction=True)
def test_the_migration_fills_reminded_without_answer_of_existing_institutions():
    old = _migrate([("credentials", "0017_reminderlog_delivery_on_notice"), ("institutions", "0005_key_summary")])
    Institution_ = old.get_model("institutions", "Institution")
    Credential = old.get_model("credentials", "CD2Credential")
    Reminder = old.get_model("credentials", "ReminderLog")
    now = timezone.now()

    def key(inst, n, status, minutes_ago):
        return Credential.objects.create(
            institution=inst,
            client_id="x",
            secret="y",
            client_id_index=f"index-{n}",
            region="eu-west-1",
            hint=f"h{n}",
            expires_on=dt.date(2030, 1, 1),
            status=status,
            source="admin",
            submitted_at=now - dt.timedelta(minutes=minutes_ago),
        )

    def reminded(credential, state="sent", minutes_ago=60):
        at = now - dt.timedelta(minutes=minutes_ago)
        Reminder.objects.create(credential=credential, threshold=30, state=state, claimed_at=at, sent_at=at)

    silent, answered, unsent, never = (
        Institution_.objects.create(name=s, slug=s, canvas_domain=f"{s}.instructure.com")
        for s in ("silent", "answered", "unsent", "never")
    )
    reminded(key(silent, 1, "active", 600))
    reminded(key(answered, 2, "active", 600))
    key(answered, 3, "pending_verification", 10)  # handed in after the reminder
    reminded(key(unsent, 4, "active", 600), state="failed")
    key(never, 5, "active", 600)

    new = _migrate([("credentials", "0018_fill_key_reminded_unanswered")])
    rows = dict(new.get_model("institutions", "Institution").objects.values_list("slug", "key_reminded_unanswered"))
    _migrate()  # the newest schema again, for the tests after this one

    assert rows == {"silent": True, "answered": False, "unsent": False, "never": False}


@pytest.mark.django_db
def test_the_compiled_refresh_writes_each_institutions_own_summary_as_the_rule_says(make_institution, make_credential):
    """The refresh's subqueries are compiled once per process; each call must still write its own institution."""
    near, far, none = make_institution(), make_institution(), make_institution()
    near_key, far_key = make_credential(near, days=10), make_credential(far, days=300)
    wrong = {"key_condition": Condition.FAILING, "key_pk": None, "key_expires_on": None, "key_region": "x"}
    Institution.objects.update(**wrong, key_reminded_unanswered=True)
    assert sorted(key_summaries_drifted()) == sorted([near.pk, far.pk, none.pk])

    for institution in (near, far):
        institution_key_summary_refresh(institution_id=institution.pk)
        assert summary(institution)[:3] == (
            Condition.OK,
            *((near_key.pk, near_key.expires_on) if institution == near else (far_key.pk, far_key.expires_on)),
        )
    assert key_summaries_drifted() == [none.pk]  # untouched by the others' refreshes
    institution_key_summary_refresh(institution_id=none.pk, fields=("key_reminded_unanswered",))
    none.refresh_from_db()
    assert none.key_reminded_unanswered is False and none.key_condition == Condition.FAILING  # that column only
    institution_key_summary_refresh(institution_id=none.pk)
    assert key_summaries_drifted() == []


@pytest.mark.django_db
@pytest.mark.parametrize("fields", [None, ("key_reminded_unanswered",)])
@pytest.mark.parametrize("changed", [False, True])
def test_the_refresh_runs_the_statement_django_compiles_afresh_from_the_rule(make_institution, fields, changed):
    """The refresh reuses its compiled subqueries (keys._CompiledOnce): its statement must be Django's to the letter."""
    first, second = make_institution(), make_institution()
    moved = {"changed_at": timezone.now()} if changed else {}
    institution_key_summary_refresh(institution_id=first.pk, fields=fields, **moved)  # compiles, if no test did
    with CaptureQueriesContext(connection) as reused:
        institution_key_summary_refresh(institution_id=second.pk, fields=fields, **moved)
    with CaptureQueriesContext(connection) as fresh:
        values = key_summary_expected(fields=fields)
        if changed:
            values["updated_at"] = moved["changed_at"]
        Institution.objects.filter(pk=second.pk).update(**values)

    assert len(reused) == 1
    assert [q["sql"] for q in reused] == [q["sql"] for q in fresh]
    assert f"{second.pk}" in reused[0]["sql"].rsplit("WHERE", 1)[1]


@pytest.mark.django_db(transaction=True)
def test_the_one_vocabulary_migration_renames_a_stored_active_to_ok_and_back():
    old = _migrate([("institutions", "0006_key_reminded_unanswered")])
    Institution_ = old.get_model("institutions", "Institution")
    for slug, condition in (("served", "active"), ("waiting", "pending"), ("none", "missing")):
        Institution_.objects.create(name=slug, slug=slug, canvas_domain=f"{slug}.example", key_condition=condition)

    new = _migrate([("institutions", "0007_key_state_one_vocabulary")])
    after = dict(new.get_model("institutions", "Institution").objects.values_list("slug", "key_condition"))
    back = _migrate([("institutions", "0006_key_reminded_unanswered")])
    before = dict(back.get_model("institutions", "Institution").objects.values_list("slug", "key_condition"))
    _migrate()  # the newest schema again, for the tests after this one

    assert after == {"served": KeyState.OK, "waiting": KeyState.PENDING, "none": KeyState.MISSING}
    assert before == {"served": "active", "waiting": "pending", "none": "missing"}
