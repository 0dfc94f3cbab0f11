"""In Chromium, as a customer holding an older link (issue 25 item 2): the page names the newer link, masked.

Screenshots go to SHOTS_DIR when it is set.
"""

from __future__ import annotations

import pytest
from django.urls import reverse

from credentials.services.links import submission_link_create
from tests.browser.test_reminders_browser import shot
from tests.security.test_csp_browser import chromium, open_watched


@pytest.mark.django_db(transaction=True)
def test_an_older_links_page_says_a_newer_one_went_to_whom_and_offers_the_lost_link_form(live_server, institution):
    old = submission_link_create(institution=institution, sent_to=["ada@northfield.example.edu"])
    submission_link_create(
        institution=institution, sent_to=["ada@northfield.example.edu", "it@northfield.example.edu"], reason="reminder"
    )

    with chromium() as browser:
        page, _console = open_watched(browser, live_server)
        page.set_viewport_size({"width": 1366, "height": 800})
        page.goto(live_server.url + reverse("credentials:submit", kwargs={"token": old.token}))

        lead = page.locator("p.lead").inner_text()
        assert "A newer link was sent on" in lead
        assert "a•••@northfield.example.edu, i•••@northfield.example.edu" in lead
        assert "ada@" not in page.content()
        shot(page, "older-link-page.png")
        page.fill("input[name=email]", "ada@northfield.example.edu")
        with page.expect_navigation():
            page.click("text=Send me a link")
        assert page.url.endswith(reverse("credentials:request_link_sent"))
        assert page.evaluate("window.__csp") == []
