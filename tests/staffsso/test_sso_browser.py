"""Staff sign-in with the identity provider, end to end in Chromium against a real OpenID provider on loopback.

The registry runs in the live server; the provider is node's oidc-provider
(tests/oidc_provider); Chromium clicks "Sign in with Test IdP", types the
username on the provider's page and comes back. Nothing is mocked on either
side. Screenshots land in test-results/sso/.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import time_machine
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.utils import timezone
from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice

from credentials.models import AuditEvent
from staffsso.models import BreakGlassAccount
from tests.conftest import PLANTED_SECRET
from tests.security.test_csp_browser import chromium
from tests.staffsso.provider import DOMAIN, ROLE_GROUP

pytestmark = [pytest.mark.xdist_group("oidc_provider"), pytest.mark.django_db(transaction=True)]

SHOTS = Path(django_settings.BASE_DIR) / "test-results" / "sso"
PASSWORD = "correct horse battery staple 42"


@pytest.fixture(autouse=True)
def _roles(role_groups):
    """A transactional test empties the tables, the role groups with them."""


@pytest.fixture
def browser(monkeypatch):
    # Playwright's sync API runs an event loop in this thread; the ORM calls between steps are plain sync code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with chromium() as browser:
        yield browser


def sign_in(browser, live_server, sub: str, *, shot: str = ""):
    """A fresh browser: the admin, "Sign in with Test IdP", the provider's page as `sub`, back here. The page."""
    page = browser.new_context().new_page()
    page.set_default_timeout(10_000)
    page.goto(live_server.url + "/admin/")
    assert "/admin/login/" in page.url
    if shot:
        page.screenshot(path=str(SHOTS / f"{shot}-1-login.png"))
    with page.expect_navigation():
        page.click("#sso-sign-in")
    assert page.url.startswith(django_settings.OIDC_ISSUER), page.url
    page.fill("#login", sub)
    if shot:
        page.screenshot(path=str(SHOTS / f"{shot}-2-provider.png"))
    with page.expect_navigation(url=lambda url: url.startswith(live_server.url)):
        page.click("#sign-in")
    page.wait_for_load_state()
    if shot:
        page.screenshot(path=str(SHOTS / f"{shot}-3-back.png"), full_page=True)
    return page


def in_admin(page) -> bool:
    return page.url.endswith("/admin/") and page.locator("#user-tools").count() == 1


def test_each_group_signs_in_with_its_role_and_sees_what_that_role_may(browser, live_server, sso_settings):
    for role in ("Viewer", "Customer success", "Data engineer", "Superuser"):
        sub = sso_settings.person(f"b-{ROLE_GROUP[role]}", groups=[ROLE_GROUP[role]])
        page = sign_in(browser, live_server, sub, shot=f"role-{ROLE_GROUP[role]}")

        assert in_admin(page), (role, page.url)
        assert f"{sub}@{DOMAIN}" in page.locator("#user-tools").inner_text().lower()
        # The Security section (users, devices, break-glass) is for superusers only.
        assert (page.locator("text=Break-glass accounts").count() == 1) == (role == "Superuser"), role
        page.context.close()

    users = {u.username: u for u in get_user_model().objects.filter(username__endswith=f"@{DOMAIN}")}
    assert users[f"b-cd2-data@{DOMAIN}"].has_perm("credentials.reveal_secret")
    assert not users[f"b-cd2-cs@{DOMAIN}"].has_perm("credentials.reveal_secret")
    assert not users[f"b-cd2-viewers@{DOMAIN}"].has_perm("institutions.change_institution")
    assert users[f"b-cd2-admins@{DOMAIN}"].is_superuser
    assert AuditEvent.objects.filter(kind=AuditEvent.Kind.SSO_LOGIN).count() == 4


def test_no_group_and_no_mfa_are_refused_with_a_page_that_says_what_to_do(browser, live_server, sso_settings):
    sso_settings.person("b-nogroup", groups=["all-staff"])
    page = sign_in(browser, live_server, "b-nogroup", shot="refused-no-group")
    assert page.locator("h1", has_text="Ask for access").is_visible()
    assert "Ask your manager or the IT team for access" in page.locator("#refusal").inner_text()
    page.goto(live_server.url + "/admin/")
    assert "/admin/login/" in page.url  # not signed in

    sso_settings.person("b-onefactor", groups=["cd2-data"], amr=["pwd"])
    page = sign_in(browser, live_server, "b-onefactor", shot="refused-no-mfa")
    assert "multi-factor" in page.locator("#refusal").inner_text()
    reasons = list(AuditEvent.objects.filter(kind=AuditEvent.Kind.SSO_REFUSED).values_list("reason", flat=True))
    assert sorted(reasons) == ["no_group", "no_mfa"]


@pytest.mark.parametrize("fault", ["tampered", "wrong_nonce", "wrong_audience", "expired"])
def test_a_bad_id_token_is_refused(fault, browser, live_server, sso_settings):
    sso_settings.person("b-target", groups=["cd2-admins"])
    sso_settings.fault_next_id_token(fault)
    page = sign_in(browser, live_server, "b-target")
    assert page.locator("#refusal").is_visible()
    page.goto(live_server.url + "/admin/")
    assert "/admin/login/" in page.url
    event = AuditEvent.objects.get(kind=AuditEvent.Kind.SSO_REFUSED)
    assert event.reason == "bad_token"
    assert not get_user_model().objects.filter(username__endswith=f"@{DOMAIN}").exists()


def test_a_person_disabled_at_the_provider_loses_access_within_the_re_validation_interval(
    browser, live_server, sso_settings
):
    sso_settings.person("b-leaver", groups=["cd2-cs"])
    page = sign_in(browser, live_server, "b-leaver")
    assert in_admin(page)
    sso_settings.update("b-leaver", disabled=True)
    start = timezone.now()

    with time_machine.travel(start + dt.timedelta(minutes=4), tick=False):
        page.goto(live_server.url + "/admin/")
        assert in_admin(page)  # not asked yet
    with time_machine.travel(start + dt.timedelta(minutes=5, seconds=30), tick=False):
        page.goto(live_server.url + "/admin/institutions/institution/")
        assert "/admin/login/" in page.url
        page.screenshot(path=str(SHOTS / "leaver-signed-out.png"))

    event = AuditEvent.objects.get(kind=AuditEvent.Kind.SSO_SIGNED_OUT)
    assert event.detail["subject"] == "b-leaver"


def test_password_sign_in_is_refused_except_for_a_break_glass_account(browser, live_server, sso_settings):
    user = get_user_model().objects.create_superuser("ops", "ops@registry.example", PASSWORD)
    device = TOTPDevice.objects.create(user=user, name="phone", confirmed=True)

    def password_sign_in():
        page = browser.new_context().new_page()
        page.goto(live_server.url + "/admin/login/?next=/admin/")
        page.fill("#id_username", "ops")
        page.fill("#id_password", PASSWORD)
        page.fill("#id_otp_token", f"{TOTP(device.bin_key, device.step, device.t0, device.digits).token():06d}")
        with page.expect_navigation():
            page.click("input[type=submit]")
        return page

    refused = password_sign_in()
    refused.screenshot(path=str(SHOTS / "password-refused.png"))
    assert "Sign-in failed" in refused.locator(".errornote").inner_text()
    assert "/admin/login/" in refused.url

    BreakGlassAccount.objects.create(user=user, reason="provider outage")
    TOTPDevice.objects.filter(pk=device.pk).update(last_t=-1)  # the same code again, a new sign-in
    allowed = password_sign_in()
    assert in_admin(allowed)
    assert AuditEvent.objects.filter(kind=AuditEvent.Kind.BREAK_GLASS, actor=user).count() == 1


def test_revealing_a_secret_asks_for_a_fresh_sign_in_at_the_provider(
    browser, live_server, sso_settings, institution, make_credential
):
    credential = make_credential(institution, secret=PLANTED_SECRET)
    sso_settings.person("b-engineer", groups=["cd2-data"])
    page = sign_in(browser, live_server, "b-engineer")
    assert in_admin(page)
    signed_in_at = timezone.now()

    reveal = f"{live_server.url}/admin/credentials/cd2credential/{credential.pk}/reveal/"
    page.goto(reveal)
    assert page.locator("#id_password").count() == 0  # never a local password
    page.screenshot(path=str(SHOTS / "reveal-needs-provider.png"), full_page=True)
    with page.expect_navigation():
        page.click("#provider-reauth")
    # prompt=login: the provider asks again although its session is alive.
    assert page.url.startswith(django_settings.OIDC_ISSUER) and page.locator("#login").is_visible()
    page.fill("#login", "b-engineer")
    with page.expect_navigation(url=lambda url: url.startswith(live_server.url)):
        page.click("#sign-in")
    assert page.url == reveal
    page.fill("#id_reason", "check the key by hand for the pipeline")
    with page.expect_navigation():
        page.click("input[type=submit]")
    assert PLANTED_SECRET in page.content()
    event = AuditEvent.objects.get(kind=AuditEvent.Kind.REVEAL)
    assert event.actor.username == f"b-engineer@{DOMAIN}" and event.created_at >= signed_in_at


def test_a_provider_that_skips_the_fresh_sign_in_does_not_open_the_reveal(
    browser, live_server, sso_settings, institution, make_credential
):
    credential = make_credential(institution, secret=PLANTED_SECRET)
    sso_settings.person("b-engineer2", groups=["cd2-data"])
    page = sign_in(browser, live_server, "b-engineer2")
    reveal = f"{live_server.url}/admin/credentials/cd2credential/{credential.pk}/reveal/"
    page.goto(reveal)
    sso_settings.fault_next_id_token("stale_auth_time")
    with page.expect_navigation():
        page.click("#provider-reauth")
    page.fill("#login", "b-engineer2")
    with page.expect_navigation(url=lambda url: url.startswith(live_server.url)):
        page.click("#sign-in")
    assert page.locator("#refusal").is_visible()
    page.goto(reveal)
    assert page.locator("#provider-reauth").is_visible()  # still no fresh proof
    assert "provider did not ask" in AuditEvent.objects.get(kind=AuditEvent.Kind.SSO_REFUSED).detail["why"]
