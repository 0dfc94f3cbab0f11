"""The institution list answers customer success's questions: reminders, months, my institutions, no answer."""

from __future__ import annotations

import csv
import datetime as dt
import io

import pytest
import time_machine
from django.contrib import admin
from django.urls import reverse
from django.utils import timezone

from credentials.admin.institutions import month_bounds
from credentials.formatting import format_day
from credentials.models import ReminderLog
from credentials.selectors import next_reminder
from credentials.services.keys import institution_key_summary_refresh
from institutions.admin import InstitutionAdmin
from institutions.models import Institution
from tests.conftest import reminder_step

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:institutions_institution_changelist")


def names(response) -> set[str]:
    return {inst.name for inst in response.context["cl"].result_list}


def sent(key, threshold: int, *, days_ago: int = 0, recipients: str = "ada@example.edu") -> ReminderLog:
    """A reminder logged as sent, the institution's key summary refreshed as the reminder service does."""
    at = timezone.now() - dt.timedelta(days=days_ago)
    reminder = reminder_step(key, threshold, at=at, recipients=recipients)
    institution_key_summary_refresh(institution_id=key.institution_id)
    return reminder


# --------------------------------------------------------------------------
# The schedule
# --------------------------------------------------------------------------

TODAY = dt.date(2026, 12, 3)


@pytest.mark.parametrize(
    ("days_left", "handled", "expected"),
    [
        (100, None, (60, 40)),  # the first step to come
        (45, None, (60, 0)),  # due now, not sent yet (arrived with 100 days left)
        (45, 60, (30, 15)),
        (20, 30, (14, 6)),
        (5, 7, (3, 2)),
        (0, 0, (-7, 7)),  # on the day, sent: the first weekly step after
        (-3, 0, (-7, 4)),
        (-7, -7, (-14, 7)),
    ],
)
def test_the_next_reminder_follows_the_schedule(days_left, handled, expected):
    expires_on = TODAY + dt.timedelta(days=days_left)
    step = next_reminder(
        expires_on=expires_on,
        today=TODAY,
        handled_step=handled,
        first_step_on=TODAY - dt.timedelta(days=100 - days_left),
    )
    assert (step.threshold, (step.on - TODAY).days) == expected


@pytest.mark.parametrize(
    ("days_left", "handled", "expected"),
    [
        (-40, -35, (-42, 2)),  # the last weekly step
        (-42, -42, (-72, 30)),  # then monthly
        (-150, -132, (-162, 12)),
        (-170, -162, None),  # the next monthly step would fall past the horizon (6 months): none
        (-190, -162, None),  # reminders ended
    ],
)
def test_after_the_weekly_steps_the_next_reminder_is_monthly_until_the_horizon(days_left, handled, expected, settings):
    settings.REMINDER_STOP_AFTER_EXPIRY_MONTHS = 6
    step = next_reminder(expires_on=TODAY + dt.timedelta(days=days_left), today=TODAY, handled_step=handled)
    assert (step and (step.threshold, (step.on - TODAY).days)) == expected


def test_a_step_that_came_due_before_the_key_arrived_is_not_the_next_reminder():
    step = next_reminder(expires_on=TODAY + dt.timedelta(days=20), today=TODAY, handled_step=None, first_step_on=TODAY)
    assert (step.threshold, step.on) == (14, TODAY + dt.timedelta(days=6))


def test_no_next_reminder_without_a_key_or_for_a_paused_institution():
    assert next_reminder(expires_on=None, today=TODAY, handled_step=None) is None
    assert next_reminder(expires_on=TODAY, today=TODAY, handled_step=None, served=False) is None


# --------------------------------------------------------------------------
# The columns
# --------------------------------------------------------------------------


def test_the_list_shows_the_last_reminder_in_words_and_the_next_one_with_its_date(
    staff_client, make_institution, make_credential, today
):
    inst = make_institution(name="Lakeside College")
    key = make_credential(inst, days=40)
    key.submitted_at = timezone.now() - dt.timedelta(days=300)
    key.save(update_fields=["submitted_at"])
    sent(key, 60, days_ago=20)
    make_institution(name="Keyless College")

    body = staff_client("Viewer").get(CHANGELIST).content.decode()

    assert '>60 days before</a><br><small><span class="reminder-state reminder-state--sent">Sent</span> ' in body
    assert f"Sent</span> {format_day(timezone.now() - dt.timedelta(days=20))}</small>" in body
    assert f"30 days before<br><small>{format_day(today + dt.timedelta(days=10))}</small>" in body
    assert "Last reminder" in body and "Next reminder" in body


def test_a_failed_check_shows_its_verdict_and_reason(staff_client, make_institution, make_credential):
    key = make_credential(make_institution(name="Maple Ridge"))
    key.last_verdict, key.last_verification = "rejected", "401 from CD2: invalid client"
    key.save(update_fields=["last_verdict", "last_verification"])

    body = staff_client("Viewer").get(CHANGELIST).content.decode()

    assert '<span title="401 from CD2: invalid client">Rejected</span>' in body


def test_the_csv_export_has_the_reminder_and_check_columns(staff_client, make_institution, make_credential, today):
    key = make_credential(make_institution(name="Lakeside College", slug="lakeside"), days=40)
    key.submitted_at = timezone.now() - dt.timedelta(days=300)
    key.save(update_fields=["submitted_at"])
    sent(key, 60, days_ago=20)

    response = staff_client("Customer success").post(
        CHANGELIST, {"action": "export_csv", "select_across": "1", "index": "0", "_selected_action": ["0"]}
    )
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))

    (row,) = rows
    assert row["last_reminder"] == "60 days before"
    assert row["last_reminder_state"] == "sent"
    assert row["last_reminder_at"].startswith((timezone.now() - dt.timedelta(days=20)).date().isoformat()[:7])
    assert row["next_reminder"] == "30 days before"
    assert row["next_reminder_on"] == (today + dt.timedelta(days=10)).isoformat()
    assert row["last_check_verdict"] == "OK"


# --------------------------------------------------------------------------
# The filters
# --------------------------------------------------------------------------


@time_machine.travel(dt.datetime(2026, 12, 3, 12, tzinfo=dt.UTC), tick=False)
def test_the_month_filters_pick_calendar_months(staff_client, make_institution, make_credential):
    for name, days in (("Dec end", 28), ("Jan start", 29), ("Jan end", 59), ("Feb", 60), ("Gone", -2)):
        make_credential(make_institution(name=name), days=days)
    client = staff_client("Viewer")

    assert names(client.get(CHANGELIST, {"expiry": "this-month"})) == {"Dec end", "Gone"}
    assert names(client.get(CHANGELIST, {"expiry": "next-month"})) == {"Jan start", "Jan end"}
    response = client.get(CHANGELIST, {"expiry": "2027-02"})
    assert names(response) == {"Feb"}
    assert "Feb 2027" in response.content.decode()  # the chart's month shows as the chosen filter
    assert month_bounds(dt.date(2026, 12, 3), 1) == (dt.date(2027, 1, 1), dt.date(2027, 2, 1))


def test_my_institutions_are_the_ones_i_own(staff_client, make_institution, make_staff):
    client = staff_client("Customer success")
    make_institution(name="Mine", account_owner=client.user)
    make_institution(name="Theirs", account_owner=make_staff("Customer success"))
    make_institution(name="Nobody's")

    assert names(client.get(CHANGELIST, {"mine": "1"})) == {"Mine"}


def test_reminded_but_no_answer_leaves_out_who_answered_and_who_was_never_reminded(
    staff_client, make_institution, make_credential
):
    silent = make_credential(make_institution(name="Silent"), days=20)
    sent(silent, 30, days_ago=10)
    answered = make_institution(name="Answered")
    old = make_credential(answered, days=20)
    old.submitted_at = timezone.now() - dt.timedelta(days=300)
    old.save(update_fields=["submitted_at"])
    sent(old, 30, days_ago=10)
    make_credential(answered, days=400, status="pending_verification")  # handed in after the reminder
    make_credential(make_institution(name="Never reminded"), days=20)

    response = staff_client("Viewer").get(CHANGELIST, {"reminded": "no-answer"})

    assert names(response) == {"Silent"}
    assert response.context["cl"].result_count == 1


def test_every_column_sorts_with_reminders_on_the_page(admin_client, make_institution, make_credential):
    for i in range(3):
        key = make_credential(make_institution(name=f"College {i}"), days=10 + i)
        sent(key, 14, days_ago=i)
    make_institution(name="Keyless", status=Institution.Status.PAUSED)
    # The columns as shown: the institution admin's own and the ones credentials adds (KeysExtension).
    columns = admin_client.get(CHANGELIST).context["cl"].list_display
    assert len(columns) == 11  # the row checkbox and ten columns
    for column in range(len(columns)):
        for order in (str(column), f"-{column}"):
            response = admin_client.get(CHANGELIST, {"o": order})
            assert response.status_code == 200, order
            assert len(response.context["cl"].result_list) == 4, order


def test_the_lists_row_checkbox_is_the_markup_django_renders(make_institution):
    institution = make_institution(name='Tom & Jerry "College"')
    admin_ = InstitutionAdmin(Institution, admin.site)

    ours = admin_.action_checkbox(institution)

    assert ours == admin.ModelAdmin.action_checkbox(admin_, institution)
