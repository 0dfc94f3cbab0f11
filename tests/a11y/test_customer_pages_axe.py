"""axe-core finds no WCAG 2.2 A or AA violation on any page a customer can reach, in each of its states.

Each state is reached for real (a live server, the fake CD2 gateway) and
checked at 1280 px and at 390 px (a phone), in the light and the dark scheme
(the customer pages follow the browser's prefers-color-scheme). The staff
pages are in test_staff_pages_axe.py.
"""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import OperationalError
from django.urls import reverse
from django.utils import timezone

from credentials import views
from credentials.models import SubmissionLink
from credentials.services.links import submission_link_create
from devtools import fake_gateway
from tests.a11y.conftest import format_violations

pytestmark = pytest.mark.e2e

WIDTHS = (1280, 390)


@pytest.fixture
def page(browser, live_server, cd2_gateway, isolated_cache):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert errors == []


def check_everywhere(axe, page, name: str) -> None:
    """The page as it stands, at each width, in the light scheme and (where the page has one) the dark."""
    schemes = ["light"]
    if page.evaluate("getComputedStyle(document.documentElement).colorScheme").find("dark") >= 0:
        schemes.append("dark")
    failures = []
    for scheme in schemes:
        page.emulate_media(color_scheme=scheme)
        # Colours the scheme change set moving (the buttons' transition) settle before axe reads them.
        page.evaluate("Promise.all(document.getAnimations().map(a => a.finished))")
        for width in WIDTHS:
            page.set_viewport_size({"width": width, "height": 900})
            if violations := axe.run(page, f"{name} ({width} px, {scheme})"):
                failures.append((width, scheme, violations))
    page.emulate_media(color_scheme="light")
    page.set_viewport_size({"width": 1280, "height": 900})
    assert failures == [], "\n".join(f"{name} at {w} px, {s}:\n{format_violations(v)}" for w, s, v in failures)


def link_url(live_server, institution) -> str:
    token = submission_link_create(institution=institution).token
    return live_server.url + reverse("credentials:submit", kwargs={"token": token})


def fill(page, *, client_id: str, secret: str, period: str = "1 year") -> None:
    page.get_by_label("Client ID").fill(client_id)
    page.get_by_label("Secret", exact=True).fill(secret)
    page.get_by_label("Expiry you chose").select_option(label=period)
    page.get_by_label("Your name").fill("Ada Admin")
    page.get_by_label("Your work email").fill("ada@northfield.example.edu")


def send(page) -> None:
    with page.expect_navigation():
        page.get_by_role("button", name="Check and send the key").click()


def test_the_submission_page_in_each_state(axe, page, live_server, institution, make_institution, make_credential):
    url = link_url(live_server, institution)
    page.goto(url)
    check_everywhere(axe, page, "Submission: empty")

    page.get_by_label("Expiry you chose").select_option(label="1 week")
    assert page.locator("#short-expiry").is_visible()
    check_everywhere(axe, page, "Submission: short expiry chosen")

    send(page)  # nothing filled in: every field's error, listed in the summary
    assert page.locator("#problems li").count() >= 3
    check_everywhere(axe, page, "Submission: errors in the form")

    accepted = {"client_id": fake_gateway.DEMO_ACCEPTED_CLIENT_ID, "secret": fake_gateway.DEMO_ACCEPTED_SECRET}
    fill(page, **accepted, period="1 week")
    send(page)  # a short expiry not confirmed
    assert page.locator("#short-expiry").is_visible()
    assert "#id_confirm_short_expiry" in page.locator("#problems").inner_html()
    check_everywhere(axe, page, "Submission: short expiry to confirm")

    fill(page, client_id=fake_gateway.DEMO_REJECTED_CLIENT_ID, secret=fake_gateway.DEMO_REJECTED_SECRET)
    send(page)
    assert "Instructure did not accept this key" in page.locator("#problems h2").inner_text()
    check_everywhere(axe, page, "Submission: Instructure refused the key")

    # A key on file: for this institution, and for another one.
    other = make_institution(name="Prairie State Tech", slug="prairie-state-tech")
    make_credential(other, client_id=fake_gateway.DEMO_ACCEPTED_CLIENT_ID, secret=fake_gateway.DEMO_ACCEPTED_SECRET)
    fill(page, client_id=fake_gateway.DEMO_ACCEPTED_CLIENT_ID, secret=fake_gateway.DEMO_ACCEPTED_SECRET)
    send(page)
    assert "already on file with us" in page.locator("#problems h2").inner_text()
    check_everywhere(axe, page, "Submission: key on file for another institution")

    page.goto(link_url(live_server, other))
    fill(page, client_id=fake_gateway.DEMO_ACCEPTED_CLIENT_ID, secret=fake_gateway.DEMO_ACCEPTED_SECRET)
    send(page)
    assert "We already have this key" in page.locator("#problems").inner_text()
    check_everywhere(axe, page, "Submission: key already on file")


def test_the_receipts_and_the_links_that_no_longer_work(axe, page, live_server, institution):
    url = link_url(live_server, institution)
    page.goto(url)
    fill(page, client_id=fake_gateway.GATEWAY_DOWN_CLIENT_ID, secret="a-secret-while-cd2-is-down")
    send(page)
    assert page.url.endswith("/k/received/") and "we will check it shortly" in page.locator("h1").inner_text()
    check_everywhere(axe, page, "Receipt: CD2 down, key stored pending")

    page.goto(link_url(live_server, institution))
    fill(page, client_id=fake_gateway.FORBIDDEN_NOT_ONBOARDED_CLIENT_ID, secret="a-secret-not-enabled")
    send(page)
    assert "needs enabling" in page.locator("h1").inner_text()
    check_everywhere(axe, page, "Receipt: Canvas Data 2 needs enabling")

    page.goto(link_url(live_server, institution))
    fill(page, client_id=fake_gateway.DEMO_ACCEPTED_CLIENT_ID, secret=fake_gateway.DEMO_ACCEPTED_SECRET)
    send(page)
    assert "the key works" in page.locator("h1").inner_text()
    check_everywhere(axe, page, "Receipt: the key works")

    assert page.goto(url).status == 404  # used
    assert "This link no longer works" in page.locator("h1").inner_text()
    check_everywhere(axe, page, "Link used")

    expired = submission_link_create(institution=institution)
    SubmissionLink.objects.filter(pk=expired.link.pk).update(expires_at=timezone.now() - dt.timedelta(minutes=1))
    assert page.goto(live_server.url + reverse("credentials:submit", kwargs={"token": expired.token})).status == 404
    check_everywhere(axe, page, "Link expired")


def test_lost_link_and_the_pages_that_refuse(axe, page, live_server, institution, monkeypatch):
    page.goto(live_server.url + reverse("credentials:request_link"))
    check_everywhere(axe, page, "Lost link: empty")
    page.get_by_label("Your work email").fill("not an address")
    with page.expect_navigation():
        page.get_by_role("button", name="Send me a link").click()
    assert page.get_by_role("alert").is_visible()
    # Focus on what went wrong (autofocus, applied at the page's next rendering step).
    page.wait_for_function("document.activeElement.id === 'problems'", timeout=5000)
    check_everywhere(axe, page, "Lost link: error")
    page.get_by_label("Your work email").fill("ada@northfield.example.edu")
    with page.expect_navigation():
        page.get_by_role("button", name="Send me a link").click()
    assert page.url.endswith(reverse("credentials:request_link_sent"))
    check_everywhere(axe, page, "Lost link: sent")

    # 413: far more than a Client ID and a Secret.
    page.goto(link_url(live_server, institution))
    page.evaluate("document.getElementById('id_client_id').value = 'x'.repeat(20000)")
    send(page)
    assert "Too much text" in page.locator("h1").inner_text()
    check_everywhere(axe, page, "413 Too much text")

    assert page.goto(live_server.url + "/no-such-page/").status == 404
    check_everywhere(axe, page, "404 Not found")

    assert page.goto(live_server.url + reverse("credentials:request_link") + "?q=%00").status == 400
    check_everywhere(axe, page, "400 Bad request")

    # The per-link limit reached: the next try is refused with the rate-limit page.
    monkeypatch.setattr(views, "SUBMIT_RATE_PER_LINK", "0/h")
    page.goto(link_url(live_server, institution))
    fill(page, client_id=fake_gateway.DEMO_ACCEPTED_CLIENT_ID, secret=fake_gateway.DEMO_ACCEPTED_SECRET)
    send(page)
    assert "Too many tries" in page.locator("h1").inner_text()
    check_everywhere(axe, page, "429 Too many tries")

    # The database gone away (maintenance, failover): the 503 page.
    def database_gone(**kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr(views, "submission_link_get", database_gone)
    assert page.goto(link_url(live_server, institution)).status == 503
    check_everywhere(axe, page, "503 Maintenance")
