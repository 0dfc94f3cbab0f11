"""Staff read times in their own zone (StaffSettings, "My settings"); customers in their institution's."""

from __future__ import annotations

import datetime as dt

import pytest
from django.conf import settings
from django.urls import reverse
from django.utils import timezone

from credentials.mail.messages import render_email
from credentials.models import ScheduledJob, StaffSettings
from credentials.services.staff import staff_time_zone_set
from credentials.services.submission import receipt_context

pytestmark = pytest.mark.django_db

# 05:25 UTC on 3 December: 18:25 in Auckland (NZDT), 00:25 in New York (EST).
INSTANT = dt.datetime(2026, 12, 3, 5, 25, tzinfo=dt.UTC)


def job_ran(at: dt.datetime) -> None:
    """A scheduled job's last run, which the dashboard lists with its time."""
    name = next(iter(settings.SCHEDULED_JOBS_OVERDUE_AFTER))
    ScheduledJob.objects.create(name=name, started_at=at, finished_at=at, first_run_at=at)


def dashboard_for(client, user, verified_login) -> str:
    client.logout()
    verified_login(client, user)
    return client.get(reverse("admin:index")).content.decode()


def test_the_same_instant_reads_in_each_staff_members_own_zone(client, make_staff, verified_login):
    job_ran(INSTANT)
    auckland, new_york, default = make_staff("Viewer"), make_staff("Viewer"), make_staff("Viewer")
    staff_time_zone_set(user=auckland, time_zone="Pacific/Auckland")
    staff_time_zone_set(user=new_york, time_zone="America/New_York")

    assert "3 Dec 2026, 18:25" in dashboard_for(client, auckland, verified_login)
    assert "3 Dec 2026, 00:25" in dashboard_for(client, new_york, verified_login)
    assert "3 Dec 2026, 05:25" in dashboard_for(client, default, verified_login)  # settings.TIME_ZONE, UTC


def test_a_staff_member_sets_their_zone_on_my_settings_and_reads_in_it_at_once(client, make_staff, verified_login):
    job_ran(INSTANT)
    user = make_staff("Viewer")
    verified_login(client, user)
    page = client.get(reverse("admin:my_settings"))
    assert page.status_code == 200
    assert "My settings" in client.get(reverse("admin:index")).content.decode()  # linked beside the user's name

    response = client.post(reverse("admin:my_settings"), {"time_zone": "Pacific/Auckland"})

    assert response.status_code == 302
    assert StaffSettings.objects.get(user=user).time_zone == "Pacific/Auckland"
    assert "3 Dec 2026, 18:25" in client.get(reverse("admin:index")).content.decode()


def test_a_zone_that_does_not_exist_is_refused_and_nothing_changes(client, make_staff, verified_login):
    user = make_staff("Viewer")
    verified_login(client, user)

    response = client.post(reverse("admin:my_settings"), {"time_zone": "Mars/Olympus_Mons"})

    assert response.status_code == 200
    assert response.context["form"].errors
    assert not StaffSettings.objects.filter(user=user).exists()


def test_the_zone_is_only_the_staff_members_own_request(client, make_staff, verified_login):
    user = make_staff("Viewer")
    staff_time_zone_set(user=user, time_zone="Pacific/Auckland")
    verified_login(client, user)
    client.get(reverse("admin:index"))
    assert timezone.get_current_timezone_name() == "UTC"  # deactivated after the response


def test_a_customer_mail_shows_the_institutions_zone_whoever_triggers_it(make_institution, make_credential):
    institution = make_institution(name="Harbour City Schools", timezone="Pacific/Auckland")
    credential = make_credential(institution)
    credential.submitted_at = INSTANT
    # A staff member in New York entering the key must not move the customer's time.
    with timezone.override("America/New_York"):
        subject, text, html = render_email("receipt", receipt_context(credential))

    assert "Received: 3 Dec 2026, 18:25 NZDT" in text
    assert "3 Dec 2026, 18:25 NZDT" in html
    assert "the Canvas Data 2 key for Harbour City Schools" in subject
