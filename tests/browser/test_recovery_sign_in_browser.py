"""In Chromium: a recovery code sign-in lands on the authenticator set-up (issue 25 item 6)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django_otp.plugins.otp_static.models import StaticDevice

from tests.security.test_csp_browser import chromium, open_watched

PASSWORD = "correct horse battery staple 42"


@pytest.mark.django_db(transaction=True)
def test_a_recovery_code_sign_in_lands_on_the_authenticator_set_up(live_server):
    user = get_user_model().objects.create_user("newcomer", "newcomer@example.com", PASSWORD, is_staff=True)
    device = StaticDevice.objects.create(user=user, name="first sign-in", confirmed=True)
    device.token_set.create(token="f1rstc0de")
    device.token_set.create(token="sec0ndc0de")

    with chromium() as browser:
        page, _console = open_watched(browser, live_server)
        page.set_viewport_size({"width": 1366, "height": 800})
        page.goto(live_server.url + "/admin/login/?next=/admin/")
        page.fill("input[name=username]", "newcomer")
        page.fill("input[name=password]", PASSWORD)
        page.fill("input[name=otp_token]", "f1rstc0de")
        with page.expect_navigation():
            page.click("input[type=submit]")

        assert page.url.startswith(live_server.url + "/admin/my-authenticator/")
        words = page.locator("#recovery-sign-in").inner_text()
        assert "you have no authenticator yet" in words and "you have 1 left" in words
        assert page.locator("input[name=password]").count() == 0
        folder = os.environ.get("SHOTS_DIR")
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(Path(folder) / "recovery-sign-in-set-up.png"), full_page=True)
        with page.expect_navigation():
            page.click("input[value='Show my QR code']")
        assert page.locator("img[alt='QR code for your new authenticator']").is_visible()
