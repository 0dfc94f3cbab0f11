"""The reminder list (issue 25 item 1): each step with institution, step in words, recipients, state and when.

Filterable by the calendar month the key expires in, by state, owner and
institution; exportable as CSV (audited, for the roles that may export);
one click from the dashboard; a page of rows costs the same queries however
many rows it shows. The institution list's "Last reminder" is the last
attempt with its outcome.
"""

from __future__ import annotations

import csv
import datetime as dt
import io

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from credentials.models import AuditEvent, Notice
from institutions.models import Contact
from tests.conftest import reminder_step

pytestmark = pytest.mark.django_db

LIST = reverse("admin:credentials_reminderlog_changelist")
EXPORT = reverse("admin:credentials_reminderlog_export")
# Mid-month, midday UTC: "this month" is December 2026 in every zone the tests read it in.
DEC_3 = dt.datetime(2026, 12, 3, 12, tzinfo=dt.UTC)


def rows(response) -> list[str]:
    return [obj.credential.institution.name for obj in response.context["cl"].result_list]


@pytest.fixture
def december(make_institution, make_credential):
    """Three institutions: one expiring this month (reminded, sent), one next month (failed), one waiting."""
    with time_machine.travel(DEC_3, tick=False):
        made = {}
        for name, days, threshold, state, error in (
            ("Dec College", 20, 30, Notice.State.SENT, ""),
            (
                "Jan College",
                40,
                60,
                Notice.State.FAILED,
                "SMTPRecipientsRefused: {'ada@jan-college.example.edu': (550, b'5.1.1 <ada@jan-college.example.edu>: "
                "Recipient address rejected: User unknown')}",
            ),
            ("Feb College", 70, 90, Notice.State.PENDING, ""),
        ):
            inst = make_institution(name=name)
            Contact.objects.create(institution=inst, name="Ada", email=f"ada@{inst.slug}.example.edu")
            key = make_credential(inst, days=days)
            made[name] = reminder_step(
                key,
                threshold,
                state=state,
                at=timezone.now() - dt.timedelta(days=1),
                recipients=f"ada@{inst.slug}.example.edu",
                last_error=error,
            )
        yield made


def test_the_list_shows_institution_step_recipients_state_and_when(staff_client, december):
    with time_machine.travel(DEC_3, tick=False):
        html = staff_client("Viewer").get(LIST).content.decode()

    assert "Dec College" in html and "30 days before" in html
    assert f"ada@{december['Dec College'].credential.institution.slug}.example.edu" in html
    assert 'reminder-state--sent">Sent' in html
    # In words; the mail server's raw reply is kept for the notice's own page.
    assert 'reminder-state--failed">Failed' in html and "the address was refused" in html and "user unknown" in html
    assert "SMTPRecipientsRefused" not in html
    assert 'reminder-state--waiting">Waiting' in html
    for column in ("When", "Institution", "Step", "Recipients", "State", "Account owner"):
        assert f">{column}</a>" in html or f">{column}</span>" in html


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("expiry=this-month", {"Dec College"}),
        ("expiry=next-month", {"Jan College"}),
        ("expiry=2027-02", {"Feb College"}),
        ("state=failed", {"Jan College"}),
        ("state=waiting", {"Feb College"}),
        ("state=sent&expiry=this-month", {"Dec College"}),
    ],
)
def test_the_filters_pick_month_of_expiry_and_state(staff_client, december, query, expected):
    with time_machine.travel(DEC_3, tick=False):
        response = staff_client("Viewer").get(f"{LIST}?{query}")

    assert set(rows(response)) == expected


def test_the_owner_filter_picks_mine_none_and_a_named_owner(staff_client, december, make_staff):
    client = staff_client("Customer success")
    dec = december["Dec College"].credential.institution
    jan = december["Jan College"].credential.institution
    dec.account_owner = client.user
    dec.save(update_fields=["account_owner"])
    other = make_staff("Customer success", first_name="Olu", last_name="Owner")
    jan.account_owner = other
    jan.save(update_fields=["account_owner"])

    assert set(rows(client.get(f"{LIST}?owner=mine"))) == {"Dec College"}
    assert set(rows(client.get(f"{LIST}?owner={other.pk}"))) == {"Jan College"}
    assert set(rows(client.get(f"{LIST}?owner=none"))) == {"Feb College"}
    assert "Olu Owner" in client.get(LIST).content.decode()


def test_one_institutions_reminders_without_listing_every_institution(staff_client, december):
    jan = december["Jan College"].credential.institution
    response = staff_client("Viewer").get(f"{LIST}?institution={jan.pk}")

    assert set(rows(response)) == {"Jan College"}
    assert [choice for _, choice in response.context["cl"].filter_specs[3].lookup_choices] == ["Jan College"]


@pytest.mark.parametrize("query", ["expiry=not-a-month", "expiry=9999-12", "state=lost", "owner=x", "institution=-1"])
def test_a_filter_value_it_cannot_hold_gets_the_whole_list_not_a_500(staff_client, december, query):
    response = staff_client("Viewer").get(f"{LIST}?{query}")

    assert response.status_code == 302 and response["Location"].endswith("?e=1")


def test_the_export_writes_the_filtered_list_as_csv_and_one_audit_event(staff_client, december):
    client = staff_client("Customer success")
    with time_machine.travel(DEC_3, tick=False):
        assert "Export this list (CSV)" in client.get(LIST).content.decode()
        response = client.post(f"{EXPORT}?state=failed")

    assert response["Content-Type"].startswith("text/csv")
    lines = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    (row,) = lines
    jan = december["Jan College"]
    assert (row["institution"], row["step"], row["state"]) == ("Jan College", "60 days before", "failed")
    assert row["recipients"] == f"ada@{jan.credential.institution.slug}.example.edu"
    assert row["key_expires_on"] == jan.credential.expires_on.isoformat() and "user unknown" in row["detail"]
    event = AuditEvent.objects.get(kind=AuditEvent.Kind.EXPORT)
    assert (event.actor, event.detail["what"], event.detail["rows"]) == (client.user, "reminders", 1)


def test_a_viewer_sees_the_list_but_cannot_export_it(staff_client, december):
    client = staff_client("Viewer")

    assert "Export this list" not in client.get(LIST).content.decode()
    assert client.post(EXPORT).status_code == 403
    assert client.get(EXPORT).status_code == 405
    assert not AuditEvent.objects.filter(kind=AuditEvent.Kind.EXPORT).exists()


def test_a_page_costs_the_same_queries_for_3_rows_as_for_30(staff_client, make_institution, make_credential):
    client = staff_client("Customer success")

    def add(n: int) -> None:
        for _ in range(n):
            inst = make_institution()
            inst.account_owner = client.user
            inst.save(update_fields=["account_owner"])
            reminder_step(make_credential(inst, days=20), 30, recipients="a@b.example")

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get(LIST).status_code == 200
        return len(captured)

    add(3)
    few = queries()
    add(27)
    many = queries()

    assert many == few


def test_the_institution_list_shows_the_last_attempt_and_its_outcome(staff_client, make_institution, make_credential):
    inst = make_institution(name="Harbour City")
    key = make_credential(inst, days=7)
    reminder_step(key, 14, at=timezone.now() - dt.timedelta(days=7))
    reminder_step(key, 7, state=Notice.State.FAILED, at=timezone.now() - dt.timedelta(hours=1))

    html = staff_client("Viewer").get(reverse("admin:institutions_institution_changelist")).content.decode()

    assert f'<a href="{LIST}?institution={inst.pk}">7 days before</a>' in html
    assert 'reminder-state--failed">Failed</span>' in html
    assert "14 days before" not in html


def test_the_dashboard_reaches_this_months_reminders_in_one_click(staff_client):
    html = staff_client("Customer success").get(reverse("admin:index")).content.decode()

    assert f'href="{LIST}?expiry=this-month"' in html


def test_an_institution_that_does_not_exist_lists_nothing(staff_client, december):
    assert rows(staff_client("Viewer").get(f"{LIST}?institution=999999")) == []


def test_the_export_costs_the_same_queries_for_3_rows_as_for_30(staff_client, make_institution, make_credential):
    client = staff_client("Customer success")

    def add(n: int) -> None:
        for _ in range(n):
            inst = make_institution()
            inst.account_owner = client.user
            inst.save(update_fields=["account_owner"])
            reminder_step(make_credential(inst, days=20), 30, recipients="a@b.example")

    def queries() -> tuple[int, int]:
        with CaptureQueriesContext(connection) as captured:
            response = client.post(EXPORT)
            lines = b"".join(response.streaming_content).decode().splitlines()
        return len(captured), len(lines) - 1

    add(3)
    few, rows_few = queries()
    add(27)
    many, rows_many = queries()

    assert (rows_few, rows_many) == (3, 30)
    assert many == few
