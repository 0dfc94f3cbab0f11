"""The dashboard at 1366 px (a laptop): every panel readable, no word broken across lines ("VERD ICT", "Re send")."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.test import Client

from credentials.models import Notice
from tests.conftest import reminder_step
from tests.security.test_csp_browser import chromium, open_watched

REFUSED = "SMTPRecipientsRefused: {'canvas-admin@harbour-city-schools.example.edu': (550, b'5.1.1 User unknown')}"
SHOTS = Path(django_settings.BASE_DIR) / "test-results" / "browser"

# Each single word of the dashboard's headings, buttons and cells, checked in the page itself: a word
# drawn on more than one line box is broken.
BROKEN_WORDS_JS = """
() => {
  const broken = [];
  const walker = document.createTreeWalker(document.querySelector('.staff-dashboard'), NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const text = node.textContent;
    const re = /\\S+/g;
    let match;
    while ((match = re.exec(text))) {
      if (match[0].includes('@')) continue;  // an address may break where it must
      const range = document.createRange();
      range.setStart(node, match.index);
      range.setEnd(node, match.index + match[0].length);
      const tops = new Set([...range.getClientRects()].filter(r => r.width > 0).map(r => Math.round(r.top)));
      if (tops.size > 1) broken.push(match[0]);
    }
  }
  return broken;
}
"""


@pytest.mark.django_db(transaction=True)
def test_no_dashboard_word_breaks_at_1366_px(live_server, make_staff, verified_login, institution, make_credential):
    key = make_credential(institution, days=20)
    key.last_verdict = "rejected"
    key.save(update_fields=["last_verdict"])
    reminder_step(
        key,
        30,
        state=Notice.State.FAILED,
        recipients="canvas-admin@harbour-city-schools.example.edu",
        last_error=REFUSED,
    )
    client = verified_login(Client(), make_staff(None, is_superuser=True, username="dash"))
    cookie = client.cookies[django_settings.SESSION_COOKIE_NAME].value

    with chromium() as browser:
        page, problems = open_watched(browser, live_server, cookie)
        page.set_viewport_size({"width": 1366, "height": 900})
        page.goto(live_server.url + "/admin/")
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "dashboard-1366.png"), full_page=True)
        broken = page.evaluate(BROKEN_WORDS_JS)
        error_cell = page.locator("#dash-failed-notices-title + table td", has_text="refused").inner_text()
        resend = page.locator(".staff-dashboard .button", has_text="Resend").first.bounding_box()
        panels = page.locator(".staff-dashboard").bounding_box()
        violations = page.evaluate("window.__csp")

    assert broken == []
    assert error_cell.strip() == "The address was refused: user unknown"
    assert resend["height"] < 40  # one line
    assert panels["width"] > 1200  # the panels take the width; "Recent actions" goes below
    assert violations == []
    assert [problem for problem in problems if "404" not in problem] == []  # the browser's own /favicon.ico
