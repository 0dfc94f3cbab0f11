"""In Chromium, as customer success (issue 25 items 1 and 3).

From the dashboard, "expiring this month" reaches the reminder list with
each reminder's recipients in one click; the bulk "Send a submission link"
shows who will receive what and mails nobody until "Yes, send", then says
how many were sent. Screenshots go to SHOTS_DIR when it is set.
"""

from __future__ import annotations

import calendar
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.core import mail
from django.test import Client
from django.utils import timezone

from credentials.models import LinkBatch, Notice, SubmissionLink
from institutions.models import Contact
from tests.conftest import reminder_step
from tests.security.test_csp_browser import chromium, open_watched

# Where the screenshots for the note go (the file names say what they show).
SHOTS_DIR = os.environ.get("SHOTS_DIR", "")


def in_another_thread(function):
    """Run an ORM read outside Playwright's event loop (Django refuses the ORM in a thread running one)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(function).result()


def shot(page, name: str) -> None:
    if SHOTS_DIR:
        Path(SHOTS_DIR).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS_DIR) / name), full_page=True)


def this_months_last_day_in(days_from_today: int = 0) -> int:
    today = timezone.localdate()
    return calendar.monthrange(today.year, today.month)[1] - today.day - days_from_today


@pytest.mark.django_db(transaction=True)
def test_from_the_dashboard_to_this_months_reminders_and_their_recipients_in_one_click(
    live_server, customer_success, verified_login, institution, make_institution, make_credential
):
    key = make_credential(institution, days=this_months_last_day_in())
    reminder_step(key, 30, recipients="ada@northfield.example.edu, it@northfield.example.edu")
    later = make_institution(name="Later College")
    reminder_step(make_credential(later, days=this_months_last_day_in() + 40), 60, recipients="x@later.example.edu")
    harbour = make_institution(name="Harbour City Schools")
    reminder_step(
        make_credential(harbour, days=this_months_last_day_in() + 7),
        7,
        state=Notice.State.FAILED,
        recipients="canvas-admin@harbourcity.example.edu",
        last_error="SMTPRecipientsRefused: 550 5.1.1 User unknown",
    )
    client = verified_login(Client(), customer_success)
    cookie = client.cookies[django_settings.SESSION_COOKIE_NAME].value

    with chromium() as browser:
        page, _console = open_watched(browser, live_server, cookie)
        page.set_viewport_size({"width": 1366, "height": 900})
        page.goto(live_server.url + "/admin/")
        with page.expect_navigation():
            page.click("text=Expiring this month: who was reminded")  # the one click

        assert "/admin/credentials/reminderlog/" in page.url and "expiry=this-month" in page.url
        rows = page.locator("#result_list tbody tr")
        assert rows.count() == 1
        row = rows.first
        assert "Northfield University" in row.locator("td.field-institution").inner_text()
        assert row.locator("td.field-recipients_display").inner_text() == (
            "ada@northfield.example.edu, it@northfield.example.edu"
        )
        assert row.locator("td.field-step").inner_text() == "30 days before"
        assert row.locator("td.field-state").inner_text().startswith("Sent")
        assert page.locator("#changelist-filter", has_text="This month").is_visible()
        shot(page, "reminder-list-this-month.png")
        page.goto(live_server.url + "/admin/credentials/reminderlog/")
        assert page.locator("#result_list tbody tr").count() == 3
        shot(page, "reminder-list-all.png")
        assert page.evaluate("window.__csp") == []  # nothing blocked by the Content-Security-Policy


@pytest.mark.django_db(transaction=True)
def test_the_bulk_send_shows_who_gets_what_and_sends_only_on_confirmation(
    live_server, customer_success, verified_login, institution, make_institution, inline_worker
):
    Contact.objects.create(institution=institution, name="Ian IT", email="it@northfield.example.edu")
    make_institution(name="Lonely College")  # no contact: named as nobody to mail
    client = verified_login(Client(), customer_success)
    cookie = client.cookies[django_settings.SESSION_COOKIE_NAME].value

    with chromium() as browser:
        page, _console = open_watched(browser, live_server, cookie)
        page.set_viewport_size({"width": 1366, "height": 900})
        page.goto(live_server.url + "/admin/institutions/institution/")
        page.locator("#result_list tbody tr", has_text="Northfield University").locator("input.action-select").check()
        page.locator("#result_list tbody tr", has_text="Lonely College").locator("input.action-select").check()
        page.select_option("select[name=action]", "send_submission_links")
        with page.expect_navigation():
            page.click("button[name=index]")

        assert page.locator("h1", has_text="Send a submission link to 1 institution?").is_visible()
        listed = page.locator("table.confirm-send__list tbody tr")
        assert listed.count() == 1
        assert listed.first.inner_text().split("\t") == [
            "Northfield University",
            "ada@northfield.example.edu, it@northfield.example.edu",
        ]
        assert "Nobody to mail at 1 institution" in page.locator(".confirm-send__nobody").inner_text()
        shot(page, "confirm-bulk-send.png")
        # The page is the question only: nothing written, nothing mailed.
        assert in_another_thread(lambda: (Notice.objects.count(), LinkBatch.objects.count())) == (0, 0)
        assert mail.outbox == []

        with page.expect_navigation():
            page.click("text=Yes, send 1 link")

        # Northfield's mail went out at once; Lonely College's notice waits its turn (1/LINK_BULK_PER_SECOND).
        assert page.locator("h1", has_text="Submission links:").is_visible()
        progress = dict(
            tuple(row.split("\t")) for row in page.locator("table.link-batch-progress tbody tr").all_inner_texts()
        )
        assert progress["Sent"] == "1"
        shot(page, "bulk-send-after-confirmation.png")
        assert page.evaluate("window.__csp") == []  # nothing blocked by the Content-Security-Policy

    assert [sorted(m.to) for m in mail.outbox] == [["ada@northfield.example.edu", "it@northfield.example.edu"]]
    assert SubmissionLink.objects.filter(institution=institution).count() == 1
