from __future__ import annotations

import csv
import datetime as dt
import io

import pytest
import time_machine
from django.contrib.auth.models import Group
from django.core import mail
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from credentials import fields
from credentials.admin.institutions import RegionFilter
from credentials.models import AuditEvent, CD2Credential, SubmissionLink
from credentials.selectors import institutions_with_key_status
from credentials.services import jobs
from credentials.services.keys import credential_set_status, institution_key_summary_refresh, key_summaries_fix
from credentials.tasks import deliver_notice
from credentials.validators import CleanKey
from devtools.fake_gateway import FakeGateway
from institutions.models import Contact, Institution
from tests.conftest import PASSED_CHECK, PLANTED_SECRET, reminder_step

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:institutions_institution_changelist")


def change_url(institution) -> str:
    return reverse("admin:institutions_institution_change", args=[institution.pk])


def action_url(institution, name: str) -> str:
    return reverse(f"admin:institutions_institution_{name}", args=[institution.pk])


@pytest.fixture
def no_decrypt(monkeypatch):
    """Fail the test if anything decrypts a stored value."""
    calls = []

    def refuse(token, *, what="an encrypted value"):
        calls.append(what)
        raise AssertionError(f"decrypted {what}")

    monkeypatch.setattr(fields, "decrypt_str", refuse)
    return calls


# --------------------------------------------------------------------------
# The list
# --------------------------------------------------------------------------


def test_the_list_shows_each_institution_with_its_badge_expiry_and_owner(
    staff_client, make_institution, make_credential, make_staff, no_decrypt
):
    owner = make_staff("Customer success", username="olivia", first_name="Olivia")
    fine = make_institution(name="Fine College", account_owner=owner)
    make_credential(fine, days=200)
    soon = make_institution(name="Soon College")
    make_credential(soon, days=5)
    make_institution(name="Keyless College")

    body = staff_client("Viewer").get(CHANGELIST).content.decode()

    assert 'key-badge--ok">Active<' in body
    assert 'key-badge--expiring">Expiring<' in body
    assert 'key-badge--missing">Missing<' in body
    assert "olivia" in body
    # Soonest expiry first, institutions without a key last.
    assert body.index("Soon College") < body.index("Fine College") < body.index("Keyless College")


def test_an_active_key_whose_last_check_was_rejected_shows_as_failing(staff_client, institution, make_credential):
    credential = make_credential(institution)
    CD2Credential.objects.filter(pk=credential.pk).update(
        last_verdict="rejected", last_verification="rejected (401 AuthenticationError)"
    )
    institution_key_summary_refresh(institution_id=institution.pk)  # as every writer of a check result does
    body = staff_client("Viewer").get(CHANGELIST + "?check=failing").content.decode()
    assert 'key-badge--failing">Failing check<' in body
    assert "Northfield University" in body


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("expiry=expired", {"Late"}),
        ("expiry=7", {"Week"}),
        ("expiry=30", {"Week", "Month"}),
        ("expiry=90", {"Week", "Month", "Quarter"}),
        ("expiry=ok", {"Quarter", "Year"}),
        ("expiry=none", {"Nothing"}),
    ],
)
def test_the_expiry_filter_buckets_institutions_by_days_left(
    staff_client, make_institution, make_key, today, query, expected
):
    from credentials.services.keys import credential_create

    for name, days in (("Late", -3), ("Week", 7), ("Month", 30), ("Quarter", 90), ("Year", 365)):
        inst = make_institution(name=name)
        key = make_key(days=days)
        credential_create(institution=inst, key=key, source="admin", status="active", check=PASSED_CHECK)
    make_institution(name="Nothing")

    response = staff_client("Viewer").get(f"{CHANGELIST}?{query}")
    shown = {inst.name for inst in response.context["cl"].result_list}
    assert shown == expected


def test_the_list_filters_by_region_status_and_owner_and_searches_contact_email(
    staff_client, make_institution, make_credential, make_staff
):
    owner = make_staff(None, username="owner1")
    eu = make_institution(name="Euro Uni", account_owner=owner, status=Institution.Status.PAUSED)
    make_credential(eu, client_id="eu-west-1#abc-123")
    us = make_institution(name="Yankee Uni")
    make_credential(us)
    Contact.objects.create(institution=us, name="Zed", email="zed@yankee.example.edu")
    client = staff_client("Viewer")

    def names(query):
        return {i.name for i in client.get(f"{CHANGELIST}?{query}").context["cl"].result_list}

    assert names("region=eu-west-1") == {"Euro Uni"}
    assert names("status__exact=paused") == {"Euro Uni"}
    assert names(f"account_owner__id__exact={owner.pk}") == {"Euro Uni"}
    assert names("q=zed@yankee") == {"Yankee Uni"}


def _many_institutions(count: int, owners) -> None:
    """Bulk rows in every state, so each column and filter has work to do."""
    today = dt.date.today()
    institutions = Institution.objects.bulk_create(
        Institution(
            name=f"Bulk {i:05d}",
            slug=f"bulk-{count}-{i}",
            canvas_domain=f"bulk{i}.instructure.com",
            status=Institution.Status.ACTIVE,
            account_owner=owners[i % len(owners)],
        )
        for i in range(count)
    )
    keys = []
    for i, inst in enumerate(institutions):
        if i % 5 == 4:
            continue  # no key
        status = CD2Credential.Status.INVALID if i % 7 == 0 else CD2Credential.Status.ACTIVE
        keys.append(
            CD2Credential(
                institution=inst,
                client_id=f"us-east-1#bulk-{i:06d}",
                secret=PLANTED_SECRET,
                region="us-east-1" if i % 2 else "eu-west-1",
                hint=f"us-east-1 …{i:04d}",
                expires_on=today + dt.timedelta(days=(i * 37 % 400) - 30),
                status=status,
                source=CD2Credential.Source.IMPORT,
                last_verdict="ok" if i % 3 else "rejected",
                last_verification="ok: 3 tables" if i % 3 else "rejected (401 AuthenticationError)",
            )
        )
    CD2Credential.objects.bulk_create(keys)
    key_summaries_fix(institution_ids=None)  # bulk rows, with the summary the key services would have written
    Contact.objects.bulk_create(
        Contact(institution=inst, name="C", email=f"c{i}@bulk.example.edu") for i, inst in enumerate(institutions)
    )


@pytest.mark.parametrize("query", ["", "?expiry=30", "?check=failing&region=us-east-1", "?q=bulk.example.edu"])
def test_the_list_makes_the_same_queries_for_10_and_1000_institutions(staff_client, make_staff, query, no_decrypt):
    client = staff_client("Customer success")
    owners = [make_staff(None, username=f"owner{i}") for i in range(3)]

    def count_queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            response = client.get(CHANGELIST + query)
        assert response.status_code == 200
        assert response.context["cl"].result_count > 0
        return len(captured)

    _many_institutions(10, owners)
    small = count_queries()
    _many_institutions(990, owners)
    large = count_queries()
    assert small == large
    assert large <= 15, large


# --------------------------------------------------------------------------
# The institution page
# --------------------------------------------------------------------------


def test_the_institution_page_shows_contacts_key_history_links_and_reminders_without_decrypting(
    staff_client, institution, make_credential, no_decrypt
):
    from credentials.services.links import submission_link_create

    old = make_credential(institution, days=20)
    new = make_credential(institution, days=300)
    credential_set_status(credential=new, status=CD2Credential.Status.REVOKED, reason="test")
    reminder_step(old, 30, recipients="ada@northfield.example.edu")
    submission_link_create(institution=institution)

    body = staff_client("Viewer").get(change_url(institution)).content.decode()

    assert "ada@northfield.example.edu" in body
    assert old.hint in body and new.hint in body
    assert "Revoked" in body and "Superseded" in body
    assert "30 days before" in body
    assert "link-state--usable" in body


def test_send_link_mails_the_contacts_and_reports_it(staff_client, institution):
    client = staff_client("Customer success")
    response = client.post(action_url(institution, "send_link"), {"confirm": "yes"}, follow=True)
    assert response.status_code == 200
    assert [m.to for m in mail.outbox] == [["ada@northfield.example.edu"]]
    assert SubmissionLink.objects.filter(institution=institution, created_by=client.user).count() == 1
    assert "Submission link sent to ada@northfield.example.edu" in response.content.decode()


def test_send_link_without_a_contact_says_what_to_do(staff_client, make_institution):
    inst = make_institution()
    response = staff_client("Customer success").post(action_url(inst, "send_link"), {"confirm": "yes"}, follow=True)
    assert "no contact who receives reminders" in response.content.decode()
    assert not SubmissionLink.objects.filter(institution=inst).exists()
    assert mail.outbox == []


def test_send_reminder_now_mails_the_contacts(staff_client, institution, make_credential):
    make_credential(institution, days=10)
    response = staff_client("Customer success").post(
        action_url(institution, "send_reminder"), {"confirm": "yes"}, follow=True
    )
    assert "Reminder about key" in response.content.decode()
    assert len(mail.outbox) == 1
    assert "ada@northfield.example.edu" in mail.outbox[0].to


def test_check_key_now_records_the_gateway_verdict(staff_client, institution, make_credential):
    credential = make_credential(institution, client_id="us-east-1#check-me-1", secret=PLANTED_SECRET)
    with FakeGateway(keys={"us-east-1#check-me-1": PLANTED_SECRET}) as gateway:
        with override_settings(CD2_API_URL=gateway.url):
            response = staff_client("Customer success").post(action_url(institution, "check_key"), follow=True)
    credential.refresh_from_db()
    assert credential.last_verification.startswith("ok")
    body = response.content.decode()
    assert "The key reaches Canvas Data 2" in body
    assert PLANTED_SECRET not in body


def test_check_key_now_marks_a_rejected_key_invalid(staff_client, institution, make_credential):
    credential = make_credential(institution, client_id="us-east-1#unknown-key")
    with FakeGateway() as gateway, override_settings(CD2_API_URL=gateway.url):
        staff_client("Customer success").post(action_url(institution, "check_key"))
    credential.refresh_from_db()
    assert credential.status == CD2Credential.Status.INVALID


def test_revoke_needs_a_confirmation_with_a_reason_and_is_audited(staff_client, institution, make_credential):
    credential = make_credential(institution)
    client = staff_client("Customer success")
    url = action_url(institution, "revoke_key")

    page = client.get(url)
    assert page.status_code == 200
    assert "Yes, revoke this key" in page.content.decode()
    assert client.post(url, {"reason": ""}).status_code == 200  # the form again, with its error
    credential.refresh_from_db()
    assert credential.status == CD2Credential.Status.ACTIVE

    client.post(url, {"reason": "Customer deleted the key at Instructure"})
    credential.refresh_from_db()
    assert credential.status == CD2Credential.Status.REVOKED
    event = AuditEvent.objects.get(kind=AuditEvent.Kind.KEY_REVOKED)
    assert (event.actor, event.credential, event.reason) == (
        client.user,
        credential,
        "Customer deleted the key at Instructure",
    )


@pytest.mark.parametrize("name", ["send_link", "send_reminder", "check_key", "revoke_key"])
def test_a_viewer_cannot_use_the_buttons(staff_client, institution, make_credential, name):
    credential = make_credential(institution)
    response = staff_client("Viewer").post(
        action_url(institution, name), {"reason": "trying my luck", "confirm": "yes"}
    )
    assert response.status_code == 403
    credential.refresh_from_db()
    assert credential.status == CD2Credential.Status.ACTIVE
    assert mail.outbox == []
    assert not SubmissionLink.objects.exists()


def test_the_bulk_action_sends_links_and_names_those_without_a_contact(
    staff_client, institution, make_institution, monkeypatch, django_capture_on_commit_callbacks
):
    queued = []
    monkeypatch.setattr(jobs, "job_enqueue", lambda name, *, args=(), countdown=None: queued.append(args[0]))
    lonely = make_institution(name="Lonely College")
    client = staff_client("Customer success")
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            CHANGELIST,
            {
                "action": "send_submission_links",
                "index": "0",
                "_selected_action": [institution.pk, lonely.pk],
                "confirm": "yes",
            },
        )
    assert len(queued) == 2 and mail.outbox == []
    with time_machine.travel(timezone.now() + dt.timedelta(seconds=1)):  # the second is due 1/rate later
        for notice_id in queued:
            deliver_notice(notice_id)

    body = client.get(response["Location"]).content.decode()
    assert "Submission links: 2 of 2 done" in body
    assert "Lonely College</a>: Skipped (nobody to mail): Lonely College has no contact" in body
    assert [m.to for m in mail.outbox] == [["ada@northfield.example.edu"]]


def test_buttons_that_need_a_key_are_hidden_when_there_is_none(staff_client, institution):
    body = staff_client("Customer success").get(change_url(institution)).content.decode()
    assert "Send submission link" in body and "Add key by hand" in body
    assert "Check key now" not in body and "Revoke key" not in body and "Send reminder now" not in body


# --------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------


def _export(client):
    return client.post(
        CHANGELIST,
        {"action": "export_csv", "select_across": "1", "index": "0", "_selected_action": ["0"]},
    )


def test_export_writes_a_csv_without_secrets_and_one_audit_event(staff_client, institution, make_credential):
    credential = make_credential(institution, secret=PLANTED_SECRET, client_id="us-east-1#full-client-id-0042")
    client = staff_client("Customer success")

    response = _export(client)

    assert response["Content-Type"].startswith("text/csv")
    body = response.content.decode()
    rows = list(csv.DictReader(io.StringIO(body)))
    assert [(r["slug"], r["key_state"], r["expires_on"]) for r in rows] == [
        ("northfield", "ok", credential.expires_on.isoformat())
    ]
    assert rows[0]["key_hint"] == credential.hint
    assert PLANTED_SECRET not in body and "full-client-id-0042" not in body
    event = AuditEvent.objects.get()
    assert (event.kind, event.actor, event.detail["rows"]) == (AuditEvent.Kind.EXPORT, client.user, 1)


def test_export_defuses_spreadsheet_formulas(staff_client, make_institution):
    make_institution(name='=HYPERLINK("http://evil")')
    rows = list(csv.reader(io.StringIO(_export(staff_client("Customer success")).content.decode())))
    assert rows[1][0].startswith("'=")


def test_a_viewer_has_no_export(staff_client, institution):
    client = staff_client("Viewer")
    assert "export_csv" not in client.get(CHANGELIST).content.decode()
    response = _export(client)
    assert not response.get("Content-Type", "").startswith("text/csv")
    assert not AuditEvent.objects.filter(kind=AuditEvent.Kind.EXPORT).exists()


def test_the_roles_migration_made_the_groups_with_their_permissions():
    def perms(name):
        return set(Group.objects.get(name=name).permissions.values_list("codename", flat=True))

    viewer, success, engineer = perms("Viewer"), perms("Customer success"), perms("Data engineer")
    assert all(p.startswith("view_") for p in viewer)
    assert "reveal_secret" not in success and "handoff_credential" not in success
    assert {
        "export_institutions",
        "send_submission_link",
        "send_reminder",
        "check_key",
        "revoke_key",
        "change_institution",
    } <= success
    # Nothing borrowed: no role holds a permission whose name means something else.
    assert not {"add_submissionlink", "add_reminderlog", "change_cd2credential"} & (success | engineer)
    assert engineer - success == {"reveal_secret", "handoff_credential"}


def test_demo_like_keys_entered_outside_validation_still_list(staff_client, make_institution, today):
    # load_demo_data stores an already expired key without validation.
    from credentials.services.keys import credential_create

    inst = make_institution(name="Old Key College")
    credential_create(
        institution=inst,
        key=CleanKey(client_id="us-east-1#old", secret="s-old", expires_on=today - dt.timedelta(days=9)),
        source="import",
        status="active",
    )
    body = staff_client("Viewer").get(CHANGELIST).content.decode()
    assert 'key-badge--expired">Expired<' in body
    assert "9 overdue" in body


# --------------------------------------------------------------------------
# The list's cheaper queries: owner choices, counts
# --------------------------------------------------------------------------


def test_the_owner_filter_offers_only_users_who_own_an_institution(staff_client, make_institution, make_staff):
    owner = make_staff(None, username="owns-one")
    make_staff(None, username="owns-none")
    make_institution(name="Owned College", account_owner=owner)
    make_institution(name="Unowned College")

    response = staff_client("Viewer").get(CHANGELIST)

    (owner_filter,) = [spec for spec in response.context["cl"].filter_specs if spec.title == "account owner"]
    assert [label for _, label in owner_filter.lookup_choices] == ["owns-one"]


def test_the_owner_choices_are_read_from_the_user_table_not_the_annotated_list(
    staff_client, make_institution, make_staff
):
    make_institution(name="Owned College", account_owner=make_staff(None, username="owns-one"))
    client = staff_client("Viewer")

    with CaptureQueriesContext(connection) as captured:
        client.get(CHANGELIST)

    owner_queries = [
        q["sql"] for q in captured if q["sql"].startswith('SELECT "auth_user"."id"') and "EXISTS" in q["sql"]
    ]
    assert owner_queries, "no owner-choices query"
    assert all("DISTINCT" not in sql and "credentials_cd2credential" not in sql for sql in owner_queries)


def _counts(captured) -> list[str]:
    return [q["sql"] for q in captured if "COUNT(" in q["sql"] and "institutions_institution" in q["sql"]]


def test_without_a_key_filter_the_list_counts_plain_institutions_once(
    staff_client, make_institution, make_credential, make_staff
):
    owner = make_staff(None, username="owner1")
    for i in range(3):
        make_credential(make_institution(name=f"Keyed {i}", account_owner=owner))
    make_institution(name="Keyless", account_owner=owner, status=Institution.Status.PAUSED)
    client = staff_client("Viewer")

    for query, expected in (
        ("", 4),
        ("?status__exact=paused", 1),
        (f"?account_owner__id__exact={owner.pk}", 4),
        ("?q=Keyed", 3),
    ):
        with CaptureQueriesContext(connection) as captured:
            response = client.get(CHANGELIST + query)
        assert response.context["cl"].result_count == expected, query
        (count,) = _counts(captured)  # no second "(N total)" count
        assert "credentials_cd2credential" not in count, query


@pytest.mark.parametrize(
    ("query", "expected"), [("?expiry=none", 1), ("?expiry=90", 2), ("?region=eu-west-1", 1), ("?expiry=30", 1)]
)
def test_with_a_key_filter_the_count_still_matches_the_rows(
    staff_client, make_institution, make_credential, query, expected
):
    make_credential(make_institution(name="Soon"), days=10)
    make_credential(make_institution(name="Later"), days=60)
    make_credential(make_institution(name="Euro"), days=300, client_id="eu-west-1#abc-123")
    make_institution(name="Keyless")

    response = staff_client("Viewer").get(CHANGELIST + query)

    cl = response.context["cl"]
    assert cl.result_count == len(cl.result_list) == expected


@pytest.mark.parametrize("column", range(9))
def test_every_column_of_the_institution_list_sorts_both_ways_and_counts_the_same(
    column, admin_client, institution, make_credential, make_institution
):
    make_credential(institution)
    make_institution()
    for order in (str(column), f"-{column}"):
        response = admin_client.get(CHANGELIST, {"o": order})
        assert response.status_code == 200, order
        assert response.context["cl"].result_count == 2, order


def test_a_nul_in_the_region_filter_matches_nothing_and_the_admin_refuses_it(admin_client, institution):
    queryset = institutions_with_key_status(queryset=Institution.objects.all())
    spec = RegionFilter(None, {"region": ["us-east-1\x00"]}, Institution, None)
    assert list(spec.queryset(None, queryset)) == []  # evaluated: PostgreSQL would refuse the NUL here
    assert admin_client.get(CHANGELIST, {"region": "\x00"}).status_code == 400
    assert admin_client.get(CHANGELIST, {"q": "north\x00"}).status_code == 400
