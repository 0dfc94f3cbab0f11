"""The submission page in a real headless Chromium (Debian's package), against a live server and the fake gateway.

Screenshots go to test-results/browser/ (gitignored) for a human to look at.
Without /usr/bin/chromium the tests skip, except in CI (env CI set), where
they fail.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.urls import reverse

from credentials.models import CD2Credential
from credentials.services.links import submission_link_create
from devtools import fake_gateway
from tests.conftest import delivered

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(django_settings.BASE_DIR) / "test-results" / "browser"


@pytest.fixture
def browser(monkeypatch):
    if not shutil.which(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing; .ci/run installs it with apt-get (package chromium)")
        pytest.skip(f"{CHROMIUM} is not installed")
    # Playwright's sync API runs an event loop in this thread; the ORM calls
    # made here between browser steps are plain synchronous code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def link_url(live_server, institution, cd2_gateway, isolated_cache):
    new_link = submission_link_create(institution=institution)
    return live_server.url + reverse("credentials:submit", kwargs={"token": new_link.token})


def watch(page, live_server) -> dict[str, list[str]]:
    """Collect console errors and any request that leaves the live server."""
    seen: dict[str, list[str]] = {"errors": [], "outside": []}
    page.on("console", lambda message: message.type == "error" and seen["errors"].append(message.text))
    page.on("pageerror", lambda error: seen["errors"].append(str(error)))
    page.on(
        "response",
        lambda response: response.status >= 400 and seen["errors"].append(f"{response.status} {response.url}"),
    )
    page.on(
        "request",
        lambda request: None if request.url.startswith(live_server.url) else seen["outside"].append(request.url),
    )
    return seen


def fill_form(page, *, client_id: str, secret: str) -> None:
    page.get_by_label("Client ID").fill(client_id)
    page.get_by_label("Secret", exact=True).fill(secret)
    page.get_by_label("Your name").fill("Ada Admin")
    page.get_by_label("Your work email").fill("ada@northfield.example.edu")


def test_a_customer_submits_a_rejected_key_then_the_right_one(browser, live_server, link_url, institution):
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    seen = watch(page, live_server)

    page.goto(link_url)
    assert page.get_by_role("heading", level=1).inner_text() == f"Canvas Data 2 key for {institution.name}"
    steps = page.locator("ol.steps").inner_text()
    for words in ("identity.instructure.com", "Add New Key", "Institutional Use", "six-digit code", "Reveal OAuth"):
        assert words in steps
    page.screenshot(path=SHOTS / "01-form.png", full_page=True)

    # The period picker fills in the date; the toggle shows and hides the Secret.
    page.get_by_label("Expiry you chose").select_option(label="1 year")
    filled = page.get_by_label("Expiry date").input_value()
    assert filled and filled.startswith(str(int(filled[:4])))
    fill_form(page, client_id=fake_gateway.DEMO_REJECTED_CLIENT_ID, secret=fake_gateway.DEMO_REJECTED_SECRET)
    secret = page.get_by_label("Secret", exact=True)
    page.get_by_role("button", name="Show the Secret").click()
    assert secret.get_attribute("type") == "text"
    page.get_by_role("button", name="Hide the Secret").click()
    assert secret.get_attribute("type") == "password"

    page.get_by_role("button", name="Check and send the key").click()
    page.wait_for_load_state()
    alert = page.get_by_role("alert")
    assert "Instructure did not accept this Client ID and Secret" in alert.inner_text()
    assert page.get_by_label("Client ID").input_value() == fake_gateway.DEMO_REJECTED_CLIENT_ID
    assert page.get_by_label("Secret", exact=True).input_value() == ""
    assert "Paste the Secret again" in page.locator("#id_secret_error").inner_text()
    assert page.get_by_label("Expiry date").input_value() == filled
    assert not CD2Credential.objects.exists()
    page.screenshot(path=SHOTS / "02-rejected.png", full_page=True)

    page.get_by_label("Client ID").fill(fake_gateway.DEMO_ACCEPTED_CLIENT_ID)
    page.get_by_label("Secret", exact=True).fill(fake_gateway.DEMO_ACCEPTED_SECRET)
    page.get_by_role("button", name="Check and send the key").click()
    page.wait_for_url("**/k/received/")
    assert "the key works" in page.get_by_role("heading", level=1).inner_text()
    body = page.locator("main").inner_text()
    credential = CD2Credential.objects.get()
    assert credential.status == CD2Credential.Status.ACTIVE
    assert credential.hint in body
    assert fake_gateway.DEMO_ACCEPTED_SECRET not in page.content()
    page.screenshot(path=SHOTS / "03-confirmation.png", full_page=True)

    assert seen == {"errors": [], "outside": []}


def test_the_form_reads_at_phone_width_and_works_without_javascript(browser, live_server, link_url):
    phone = browser.new_page(viewport={"width": 360, "height": 740})
    seen = watch(phone, live_server)
    phone.goto(link_url)
    phone.screenshot(path=SHOTS / "04-form-phone.png", full_page=True)
    assert phone.evaluate("document.documentElement.scrollWidth") <= 360  # nothing wider than the screen
    phone.close()

    context = browser.new_context(viewport={"width": 360, "height": 740}, java_script_enabled=False)
    page = context.new_page()
    page.goto(link_url)
    assert page.get_by_role("button", name="Show the Secret").count() == 0  # the toggle needs JS
    fill_form(page, client_id=fake_gateway.DEMO_ACCEPTED_CLIENT_ID, secret=fake_gateway.DEMO_ACCEPTED_SECRET)
    page.get_by_label("Expiry you chose").select_option(label="1 year")  # no date typed: the server fills it in
    page.get_by_role("button", name="Check and send the key").click()
    page.wait_for_url("**/k/received/")
    page.screenshot(path=SHOTS / "05-confirmation-phone-nojs.png", full_page=True)

    assert "the key works" in page.get_by_role("heading", level=1).inner_text()
    assert CD2Credential.objects.get().status == CD2Credential.Status.ACTIVE
    context.close()
    assert seen == {"errors": [], "outside": []}


def test_one_key_for_two_institutions_is_refused_for_the_second_and_already_on_file_for_the_first(
    browser, live_server, institution, make_institution, cd2_gateway, isolated_cache, django_user_model
):
    from django.core import mail

    institution.account_owner = django_user_model.objects.create_user(username="nora", email="nora@registry.example")
    institution.save()
    prairie = make_institution(
        name="Prairie State Tech",
        slug="prairie-state-tech",
        account_owner=django_user_model.objects.create_user(username="paul", email="paul@registry.example"),
    )

    def open_link(inst):
        new_link = submission_link_create(institution=inst)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        seen = watch(page, live_server)
        page.goto(live_server.url + reverse("credentials:submit", kwargs={"token": new_link.token}))
        return page, seen, new_link.link

    def send(page) -> None:
        page.get_by_label("Expiry you chose").select_option(label="1 year")
        fill_form(page, client_id=fake_gateway.DEMO_ACCEPTED_CLIENT_ID, secret=fake_gateway.DEMO_ACCEPTED_SECRET)
        page.get_by_role("button", name="Check and send the key").click()
        page.wait_for_load_state()

    # A short expiry shows its warning and checkbox only when chosen.
    page, seen, _ = open_link(institution)
    short = page.locator("#short-expiry")
    page.get_by_label("Expiry you chose").select_option(label="1 week")
    assert short.is_visible() and "under 6 months" in short.inner_text()
    page.get_by_label("Expiry you chose").select_option(label="1 year")
    assert not short.is_visible()
    send(page)
    page.wait_for_url("**/k/received/")
    kept = CD2Credential.objects.get()
    assert kept.institution == institution
    assert seen == {"errors": [], "outside": []}
    mail.outbox.clear()

    page, seen, prairie_link = open_link(prairie)
    send(page)
    alert = page.get_by_role("alert")
    assert "This key is already on file with us" in alert.locator("h2").inner_text()
    assert "already on file with us for another institution" in alert.inner_text()
    assert "create a new key" in alert.inner_text()
    page.screenshot(path=SHOTS / "10-key-on-file-for-another.png", full_page=True)
    assert not CD2Credential.objects.filter(institution=prairie).exists()
    prairie_link.refresh_from_db()
    assert prairie_link.used_at is None
    (notice,) = [m for m in delivered() if "mix-up" in m.subject]  # what the queued delivery task sends
    assert sorted(notice.to) == ["nora@registry.example", "paul@registry.example"]
    assert list(CD2Credential.objects.all()) == [kept]
    kept.refresh_from_db()
    assert kept.status == CD2Credential.Status.ACTIVE
    assert seen == {"errors": [], "outside": []}

    page, seen, again_link = open_link(institution)
    send(page)
    assert f"We already have this key for {institution.name}" in page.get_by_role("alert").inner_text()
    again_link.refresh_from_db()
    assert again_link.used_at is None
    assert CD2Credential.objects.count() == 1
    assert seen == {"errors": [], "outside": []}
