"""The Content-Security-Policy in a real browser: the admin and the public page work with nothing blocked."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager

import pytest
from django.conf import settings as django_settings
from django.test import Client

from credentials.services.links import submission_link_create

CHROMIUM = "/usr/bin/chromium"


@contextmanager
def chromium():
    """Started after the test's database work: Playwright's event loop forbids Django's ORM in this thread."""
    if not shutil.which(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing; .ci/run installs it")
        pytest.skip(f"{CHROMIUM} is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        yield browser
        browser.close()


def open_watched(browser, live_server, cookie: str | None = None):
    context = browser.new_context()
    if cookie:
        context.add_cookies([{"name": django_settings.SESSION_COOKIE_NAME, "value": cookie, "url": live_server.url}])
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    # Every CSP violation fires this DOM event; collect them in the page.
    page.add_init_script(
        "window.__csp = []; document.addEventListener('securitypolicyviolation',"
        " e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));"
    )
    return page, problems


@pytest.mark.django_db(transaction=True)
def test_admin_pages_run_under_the_policy_without_a_single_violation(
    live_server, make_staff, verified_login, institution, make_credential
):
    credential = make_credential(institution)
    client = verified_login(Client(), make_staff(None, is_superuser=True))
    with chromium() as browser:
        check_admin(
            browser, live_server, client.cookies[django_settings.SESSION_COOKIE_NAME].value, institution, credential
        )


def check_admin(browser, live_server, cookie, institution, credential) -> None:
    page, problems = open_watched(browser, live_server, cookie)
    urls = [
        "/admin/",
        "/admin/institutions/institution/",
        f"/admin/institutions/institution/{institution.pk}/change/",
        "/admin/credentials/cd2credential/",
        f"/admin/credentials/cd2credential/{credential.pk}/change/",
        "/admin/credentials/auditevent/",
        "/admin/otp_totp/totpdevice/",
        "/admin/my-authenticator/",
        "/admin/auth/user/",
    ]
    for url in urls:
        response = page.goto(live_server.url + url)
        assert response.status == 200, url
        assert "default-src 'self'" in response.headers["content-security-policy"], url
        assert page.evaluate("window.__csp") == [], (url, page.evaluate("window.__csp"))
    # The admin's scripts really ran: the change form loaded jQuery and the sidebar script.
    page.goto(live_server.url + f"/admin/institutions/institution/{institution.pk}/change/")
    assert page.evaluate("typeof django !== 'undefined' && typeof django.jQuery === 'function'")
    assert [p for p in problems if "Content Security Policy" in p] == []


@pytest.mark.django_db(transaction=True)
def test_the_public_submission_page_runs_under_the_policy(live_server, institution):
    token = submission_link_create(institution=institution).token
    with chromium() as browser:
        page, problems = open_watched(browser, live_server)
        response = page.goto(f"{live_server.url}/k/{token}/")
        assert response.status == 200
        assert page.evaluate("window.__csp") == []
        assert [p for p in problems if "Content Security Policy" in p] == []
