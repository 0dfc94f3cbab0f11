"""Each staff member chooses on "My settings" which staff alerts reach them by mail."""

from __future__ import annotations

import datetime as dt
import os

import pytest
import time_machine
from django.conf import settings as django_settings
from django.core import mail
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from credentials.models import StaffAlert, StaffSettings
from credentials.services import alerts, health, outbox
from tests.security.test_csp_browser import chromium, open_watched


def test_a_staff_member_ticks_the_alerts_they_want_by_mail(client, make_staff, verified_login):
    user = make_staff("Viewer")
    verified_login(client, user)
    page = client.get(reverse("admin:my_settings")).content.decode()
    assert "Alerts by mail" in page
    assert StaffAlert.KEY_CHECK_FAILED.label in page

    response = client.post(
        reverse("admin:my_settings"),
        {"time_zone": "", "alert_events": [StaffAlert.JOB_OVERDUE, StaffAlert.KEY_CHECK_FAILED]},
    )
    assert response.status_code == 302
    # Stored in the vocabulary's order, whatever order the form sent.
    assert StaffSettings.objects.get(user=user).alert_events == [StaffAlert.KEY_CHECK_FAILED, StaffAlert.JOB_OVERDUE]
    page = client.get(reverse("admin:my_settings")).content.decode()
    assert f'value="{StaffAlert.JOB_OVERDUE}" id="id_alert_events_3" checked' in page


def test_a_word_outside_the_alerts_is_refused_and_nothing_is_saved(client, make_staff, verified_login):
    user = make_staff("Viewer")
    verified_login(client, user)
    response = client.post(reverse("admin:my_settings"), {"time_zone": "Europe/London", "alert_events": ["everything"]})
    assert response.status_code == 200
    assert "Select a valid choice" in response.content.decode()
    assert not StaffSettings.objects.filter(user=user).exists()


def test_only_who_asked_is_mailed_and_in_one_mail_per_run(settings, make_staff):
    settings.STAFF_ALERT_URLS = []
    settings.SCHEDULED_JOBS_OVERDUE_AFTER = {
        health.JOB_REMINDERS: dt.timedelta(hours=26),
        health.JOB_VERIFY_ACTIVE: dt.timedelta(hours=26),
    }
    asked = make_staff("Viewer")
    StaffSettings.objects.create(user=asked, alert_events=[StaffAlert.JOB_OVERDUE])
    other = make_staff("Viewer")
    StaffSettings.objects.create(user=other, alert_events=[StaffAlert.KEY_LAPSED])
    gone = make_staff("Viewer", is_active=False)
    StaffSettings.objects.create(user=gone, alert_events=[StaffAlert.JOB_OVERDUE])
    ran = timezone.now() - dt.timedelta(hours=30)
    for name in settings.SCHEDULED_JOBS_OVERDUE_AFTER:
        health.job_record(name=name, started_at=ran, finished_at=ran, counts={})

    assert alerts.staff_alerts_jobs_overdue() == 2  # two jobs, one person who asked
    with time_machine.travel(timezone.now() + dt.timedelta(seconds=settings.STAFF_ALERT_GROUP_SECONDS + 1)):
        outbox.outbox_deliver_due()

    assert [m.to for m in mail.outbox] == [[asked.email]]
    sent = mail.outbox[0]
    assert sent.subject == "[CD2 registry] 2 scheduled jobs are overdue"
    assert health.JOB_REMINDERS in sent.body and health.JOB_VERIFY_ACTIVE in sent.body
    assert f"{django_settings.SITE_URL}/admin/" in sent.body
    html = sent.alternatives[0][0]
    assert f'<a href="{django_settings.SITE_URL}/admin/">' in html


@pytest.mark.django_db(transaction=True)
def test_in_chromium_a_staff_member_ticks_an_alert_and_saves(live_server, make_staff, verified_login, tmp_path):
    # No role group: a transactional test may run after another emptied the groups the migration made.
    user = make_staff(None, username="cara", is_superuser=True)
    client = verified_login(Client(), user)
    cookie = client.cookies[django_settings.SESSION_COOKIE_NAME].value
    with chromium() as browser:
        page, _console = open_watched(browser, live_server, cookie)
        page.goto(live_server.url + "/admin/")
        with page.expect_navigation():
            page.click("text=My settings")
        page.check(f"input[value={StaffAlert.KEY_CHECK_FAILED}]")
        page.check(f"input[value={StaffAlert.KEY_LAPSED}]")
        with page.expect_navigation():
            page.click("input[type=submit]")
        assert "Your settings are saved." in page.inner_text("body")
        assert page.is_checked(f"input[value={StaffAlert.KEY_CHECK_FAILED}]")
        assert not page.is_checked(f"input[value={StaffAlert.JOB_OVERDUE}]")
        page.screenshot(
            path=os.environ.get("MY_SETTINGS_SCREENSHOT", str(tmp_path / "my-settings.png")), full_page=True
        )
        assert page.evaluate("window.__csp") == []
    assert StaffSettings.objects.get(user=user).alert_events == [StaffAlert.KEY_LAPSED, StaffAlert.KEY_CHECK_FAILED]
