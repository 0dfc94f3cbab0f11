"""In Chromium, as customer success: one click from the dashboard to "expiring this month" with the
last and next reminder in view, and the institution's timeline showing a reminder with its recipients."""

from __future__ import annotations

import calendar
import datetime as dt

import pytest
from django.conf import settings as django_settings
from django.test import Client
from django.utils import timezone

from credentials.models import CD2Credential
from tests.conftest import reminder_step
from tests.security.test_csp_browser import chromium, open_watched


@pytest.mark.django_db(transaction=True)
def test_customer_success_reaches_this_months_expiries_and_a_reminders_recipients(
    live_server, customer_success, verified_login, institution, make_credential
):
    today = timezone.localdate()
    month_end = today.replace(day=calendar.monthrange(today.year, today.month)[1])
    key = make_credential(institution, days=(month_end - today).days)
    CD2Credential.objects.filter(pk=key.pk).update(submitted_at=timezone.now() - dt.timedelta(days=300))
    sent_at = timezone.now() - dt.timedelta(days=1)
    reminder_step(
        key,
        60 if (month_end - today).days > 30 else 30,
        at=sent_at,
        recipients="ada@northfield.example.edu, cara@registry.example",
    )
    client = verified_login(Client(), customer_success)
    cookie = client.cookies[django_settings.SESSION_COOKIE_NAME].value

    with chromium() as browser:
        page, _console = open_watched(browser, live_server, cookie)
        page.goto(live_server.url + "/admin/")
        with page.expect_navigation():
            page.click("text=Expiring this month")

        assert "expiry=this-month" in page.url
        row = page.locator("#result_list tbody tr", has_text="Northfield University")
        assert row.count() == 1
        assert "days before" in row.locator("td.field-last_reminder").inner_text()
        next_cell = row.locator("td.field-next_reminder_display").inner_text()
        assert next_cell.strip() not in ("", "—")
        assert page.locator("th", has_text="Last reminder").is_visible()
        assert page.locator("th", has_text="Next reminder").is_visible()

        with page.expect_navigation():
            row.locator("th a").click()
        timeline = page.locator("ol.timeline")
        reminder = timeline.locator("li.timeline__entry--reminder").first
        assert "ada@northfield.example.edu, cara@registry.example" in reminder.inner_text()
        assert "Sent" in reminder.inner_text()

        # At phone width the list needs no sideways scrolling.
        page.set_viewport_size({"width": 390, "height": 800})
        page.goto(live_server.url + "/admin/institutions/institution/?expiry=this-month")
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        assert page.locator("#result_list th", has_text="Key status").is_visible()
        assert page.evaluate("window.__csp") == []  # nothing blocked by the Content-Security-Policy
