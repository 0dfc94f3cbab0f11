"""Sign-in with the identity provider against a real OpenID provider on loopback (Django's test client on our side).

Each refusal is checked three ways: the person is not signed in, the page
says what to do, and an audit event names the provider's subject and the
reason (never a token). The Chromium journeys are in test_sso_browser.py.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest
import requests
import time_machine
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core import mail
from django.test import Client
from django.utils import timezone
from django_otp.oath import TOTP
from django_otp.plugins.otp_static.models import StaticDevice
from django_otp.plugins.otp_totp.models import TOTPDevice

from credentials.admin.site import SIGN_IN_FAILED
from credentials.models import AuditEvent
from staffsso.models import BreakGlassAccount, ProviderSession, StaffIdentity
from staffsso.services import identities_deactivate_unseen
from tests.conftest import delivered
from tests.staffsso.provider import DOMAIN, ROLE_GROUP

pytestmark = [pytest.mark.xdist_group("oidc_provider"), pytest.mark.django_db]

PASSWORD = "correct horse battery staple 42"


def signed_in(client) -> bool:
    return client.get("/admin/").status_code == 200


def events(kind) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(kind=kind).order_by("pk"))


def no_token_in_the_audit_log(provider) -> None:
    """No audit row holds a token: every string in every event is short of one (tokens are long and dotted)."""
    for event in AuditEvent.objects.all():
        text = json.dumps(event.detail) + event.reason + event.actor_label
        assert "eyJ" not in text, event.kind  # the start of every JWT header


# --------------------------------------------------------------------------
# Groups to roles
# --------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["Viewer", "Customer success", "Data engineer", "Superuser"])
def test_each_provider_group_signs_in_with_its_role(role, sso_settings):
    sub = sso_settings.person(f"p-{ROLE_GROUP[role].removeprefix('cd2-')}", groups=[ROLE_GROUP[role], "unrelated"])
    client = Client()

    response = sso_settings.sign_in(client, sub)

    assert response.status_code == 302 and response["Location"] == "/admin/"
    assert signed_in(client)
    user = get_user_model().objects.get(sso_identity__subject=sub)
    assert user.username == f"{sub}@{DOMAIN}"
    assert not user.has_usable_password()
    assert sorted(user.groups.values_list("name", flat=True)) == ([] if role == "Superuser" else [role])
    assert user.is_superuser == (role == "Superuser") and user.is_staff
    (event,) = events(AuditEvent.Kind.SSO_LOGIN)
    assert event.actor == user and event.detail["subject"] == sub and event.detail["roles"] == [role]
    assert event.detail["second_factor"] == "identity provider"
    assert not events(AuditEvent.Kind.LOGIN)  # one event per sign-in, the SSO one
    no_token_in_the_audit_log(sso_settings)


def test_the_authorization_request_uses_pkce_state_and_nonce(sso_settings):
    response = Client().get("/sso/login/?next=/admin/")
    query = requests.utils.urlparse(response["Location"]).query
    params = dict(part.split("=", 1) for part in query.split("&"))
    assert params["code_challenge_method"] == "S256" and len(params["code_challenge"]) == 43
    assert len(params["state"]) >= 32 and len(params["nonce"]) >= 32
    assert params["response_type"] == "code"


def test_a_group_change_at_the_provider_takes_effect_at_the_next_sign_in(sso_settings):
    sub = sso_settings.person("mover", groups=["cd2-data"])
    sso_settings.sign_in(Client(), sub)
    sso_settings.update(sub, groups=["cd2-viewers"])

    sso_settings.sign_in(Client(), sub)

    user = get_user_model().objects.get(sso_identity__subject=sub)
    assert list(user.groups.values_list("name", flat=True)) == ["Viewer"]
    change = events(AuditEvent.Kind.ROLE_CHANGED)[-1]
    assert (change.detail["before"], change.detail["after"]) == (["Data engineer"], ["Viewer"])
    assert change.detail["subject"] == sub


def test_a_role_added_here_is_taken_away_at_the_next_re_validation(sso_settings):
    sub = sso_settings.person("viewer", groups=["cd2-viewers"])
    client = Client()
    sso_settings.sign_in(client, sub)
    user = get_user_model().objects.get(sso_identity__subject=sub)
    user.groups.add(Group.objects.get(name="Data engineer"))
    user.is_superuser = True
    user.save()

    with time_machine.travel(timezone.now() + dt.timedelta(minutes=6), tick=False):
        assert signed_in(client)

    user.refresh_from_db()
    assert list(user.groups.values_list("name", flat=True)) == ["Viewer"] and not user.is_superuser
    change = events(AuditEvent.Kind.ROLE_CHANGED)[-1]
    assert "not at the identity provider" in change.reason


# --------------------------------------------------------------------------
# Refusals
# --------------------------------------------------------------------------


def refused(client, response, reason: str, *, sub: str = "") -> AuditEvent:
    assert response.status_code == 403, response.content[:300]
    assert not signed_in(client)
    (event,) = events(AuditEvent.Kind.SSO_REFUSED)
    assert event.reason == reason
    if sub:
        assert event.detail["subject"] == sub
    return event


def test_a_person_in_no_mapped_group_is_refused_with_a_page_that_says_to_ask_for_access(sso_settings):
    sub = sso_settings.person("nogroup", groups=["everyone", "cd2-viewers-old"])
    client = Client()
    response = sso_settings.sign_in(client, sub)
    refused(client, response, "no_group", sub=sub)
    page = response.content.decode()
    assert "Ask for access" in page and "Ask your manager or the IT team for access" in page


def test_a_person_who_lost_every_group_loses_every_role_too(sso_settings):
    sub = sso_settings.person("leaver", groups=["cd2-data"])
    sso_settings.sign_in(Client(), sub)
    sso_settings.update(sub, groups=[])
    client = Client()
    refused(client, sso_settings.sign_in(client, sub), "no_group", sub=sub)
    user = get_user_model().objects.get(sso_identity__subject=sub)
    assert not user.groups.exists() and not user.is_staff


def test_a_sign_in_without_a_second_factor_is_refused_when_mfa_is_required(sso_settings):
    sub = sso_settings.person("onefactor", groups=["cd2-viewers"], amr=["pwd"])
    client = Client()
    response = sso_settings.sign_in(client, sub)
    refused(client, response, "no_mfa", sub=sub)
    assert "multi-factor" in response.content.decode()


def test_without_required_mfa_our_one_time_code_follows_the_provider(sso_settings, settings):
    settings.OIDC_REQUIRE_MFA = False
    sub = sso_settings.person("totp", groups=["cd2-viewers"], amr=["pwd"])
    client = Client()
    response = sso_settings.sign_in(client, sub)
    assert response.status_code == 302 and response["Location"].startswith("/sso/code/")
    assert client.get("/admin/").status_code == 302  # not yet
    user = get_user_model().objects.get(sso_identity__subject=sub)
    device = TOTPDevice.objects.create(user=user, name="phone", confirmed=True)

    wrong = client.post(response["Location"], {"otp_token": "000000"})
    assert wrong.status_code == 200 and "did not work" in wrong.content.decode()
    assert events(AuditEvent.Kind.LOGIN_FAILED)[-1].actor_label == user.username
    # django-otp throttles a device for a second after a wrong code.
    with time_machine.travel(timezone.now() + dt.timedelta(seconds=2), tick=False):
        code = f"{TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift).token():06d}"
        right = client.post(response["Location"], {"otp_token": code})

    assert right.status_code == 302 and right["Location"] == "/admin/"
    assert signed_in(client)


@pytest.mark.parametrize(
    ("fault", "why"),
    [
        ("tampered", "signature"),
        ("stranger_key", "signature"),
        ("wrong_audience", "audience"),
        ("wrong_issuer", "issuer"),
        ("expired", "xpired"),
        ("wrong_nonce", "nonce"),
        ("no_nonce", "nonce"),
    ],
)
def test_a_bad_id_token_is_refused(fault, why, sso_settings):
    sub = sso_settings.person("target", groups=["cd2-viewers"])
    sso_settings.fault_next_id_token(fault)
    client = Client()
    event = refused(client, sso_settings.sign_in(client, sub), "bad_token")
    assert why in event.detail["why"]
    assert not StaffIdentity.objects.exists()
    no_token_in_the_audit_log(sso_settings)


def test_an_address_outside_the_allowed_domains_is_refused(sso_settings):
    sub = sso_settings.person("outsider", groups=["cd2-admins"], email="outsider@gmail.com")
    client = Client()
    refused(client, sso_settings.sign_in(client, sub), "wrong_domain", sub=sub)


def test_an_unverified_address_is_refused(sso_settings):
    sub = sso_settings.person("unverified", groups=["cd2-admins"], email_verified=False)
    client = Client()
    refused(client, sso_settings.sign_in(client, sub), "wrong_domain", sub=sub)


def test_a_replayed_callback_is_refused(sso_settings):
    sub = sso_settings.person("replay", groups=["cd2-viewers"])
    client = Client()
    response = client.get("/sso/login/")
    browser = requests.Session()
    location = response["Location"]
    answer = browser.get(location, allow_redirects=False)
    answer = browser.post(
        sso_settings.issuer + answer.headers["Location"] + "/login", data={"login": sub}, allow_redirects=False
    )
    callback = browser.get(answer.headers["Location"], allow_redirects=False).headers["Location"]
    path = callback.removeprefix("http://testserver")
    assert client.get(path).status_code == 302
    other = Client()
    refused(other, other.get(path), "bad_state")  # another browser, or the same callback twice


def test_a_person_deactivated_here_is_refused_even_with_the_right_group(sso_settings):
    sub = sso_settings.person("benched", groups=["cd2-viewers"])
    sso_settings.sign_in(Client(), sub)
    get_user_model().objects.filter(sso_identity__subject=sub).update(is_active=False)
    client = Client()
    refused(client, sso_settings.sign_in(client, sub), "deactivated", sub=sub)


# --------------------------------------------------------------------------
# Leavers
# --------------------------------------------------------------------------


def test_a_person_disabled_at_the_provider_is_signed_out_at_the_next_re_validation(sso_settings):
    sub = sso_settings.person("disabled", groups=["cd2-cs"])
    client = Client()
    sso_settings.sign_in(client, sub)
    sso_settings.update(sub, disabled=True)
    start = timezone.now()

    with time_machine.travel(start + dt.timedelta(minutes=4), tick=False):
        assert signed_in(client)  # within the interval: not asked yet
    with time_machine.travel(start + dt.timedelta(minutes=5, seconds=30), tick=False):
        assert not signed_in(client)

    (event,) = events(AuditEvent.Kind.SSO_SIGNED_OUT)
    assert event.detail["subject"] == sub and "refused" in event.reason
    assert [r["grant_type"] for r in sso_settings.token_requests()] == ["authorization_code", "refresh_token"]
    assert ProviderSession.objects.get().ended_at is not None
    no_token_in_the_audit_log(sso_settings)


def test_a_person_still_enabled_stays_signed_in_and_is_seen(sso_settings):
    sub = sso_settings.person("stayer", groups=["cd2-cs"])
    client = Client()
    sso_settings.sign_in(client, sub)
    later = timezone.now() + dt.timedelta(minutes=6)
    with time_machine.travel(later, tick=False):
        assert signed_in(client)
    assert StaffIdentity.objects.get(subject=sub).last_seen_at == later
    assert sso_settings.token_requests()[-1] == {"grant_type": "refresh_token", "status": 200, "error": None}


def test_a_session_ends_after_oidc_session_hours_however_active(sso_settings):
    sub = sso_settings.person("longday", groups=["cd2-cs"])
    client = Client()
    sso_settings.sign_in(client, sub)
    start = timezone.now()
    for minutes in range(5, 8 * 60, 25):  # active all day: a request every 25 minutes
        now = start + dt.timedelta(minutes=minutes)
        sso_settings.clock_to(now)  # the provider's clock with ours: its tokens stay current
        with time_machine.travel(now, tick=False):
            assert signed_in(client), minutes
    with time_machine.travel(start + dt.timedelta(hours=8, minutes=1), tick=False):
        assert not signed_in(client)


def test_the_daily_job_deactivates_people_not_seen_for_30_days(sso_settings):
    for sub in ("gone", "here"):
        sso_settings.sign_in(Client(), sso_settings.person(sub, groups=["cd2-cs"]))
    StaffIdentity.objects.filter(subject="gone").update(last_seen_at=timezone.now() - dt.timedelta(days=31))
    StaffIdentity.objects.filter(subject="here").update(last_seen_at=timezone.now() - dt.timedelta(days=29))

    assert identities_deactivate_unseen() == 1
    assert identities_deactivate_unseen() == 0  # once

    assert not get_user_model().objects.get(sso_identity__subject="gone").is_active
    assert get_user_model().objects.get(sso_identity__subject="here").is_active
    (event,) = events(AuditEvent.Kind.DEACTIVATED)
    assert event.detail["subject"] == "gone" and "30 days" in event.reason


# --------------------------------------------------------------------------
# Break glass
# --------------------------------------------------------------------------


@pytest.fixture
def local_superuser(db):
    user = get_user_model().objects.create_superuser("ops", "ops@registry.example", PASSWORD)
    device = TOTPDevice.objects.create(user=user, name="phone", confirmed=True)
    return user, device


def password_sign_in(client, user, device):
    code = f"{TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift).token():06d}"
    return client.post(
        "/admin/login/",
        {"username": user.username, "password": PASSWORD, "otp_token": code, "next": "/admin/"},
        REMOTE_ADDR="10.1.2.3",
    )


def test_with_sso_on_a_password_does_not_sign_in_an_account_that_is_not_break_glass(sso_settings, local_superuser):
    client = Client()
    response = password_sign_in(client, *local_superuser)
    assert response.status_code == 200 and SIGN_IN_FAILED in response.content.decode()
    assert not signed_in(client)
    assert "break-glass" in events(AuditEvent.Kind.LOGIN_FAILED)[-1].reason


def test_a_break_glass_sign_in_works_is_audited_and_every_superuser_is_mailed(sso_settings, local_superuser):
    user, device = local_superuser
    get_user_model().objects.create_superuser("other-admin", "other@registry.example", "x" * 20)
    BreakGlassAccount.objects.create(user=user, reason="provider outage")
    client = Client()

    response = password_sign_in(client, user, device)

    assert response.status_code == 302 and signed_in(client)
    (event,) = events(AuditEvent.Kind.BREAK_GLASS)
    assert event.actor == user and event.ip_address == "10.1.2.3"
    (message,) = delivered()
    assert sorted(message.to) == ["ops@registry.example", "other@registry.example"]
    assert "Break-glass sign-in" in message.subject and "ops" in message.subject
    assert "10.1.2.3" in message.body and f"/admin/credentials/auditevent/{event.pk}/change/" in message.body


def test_a_break_glass_account_without_an_authenticator_is_refused(sso_settings, local_superuser):
    user, device = local_superuser
    BreakGlassAccount.objects.create(user=user, reason="provider outage")
    device_copy = device
    # The code is checked against the device first; without a confirmed TOTP device break-glass does not apply.
    TOTPDevice.objects.filter(pk=device.pk).update(confirmed=False)
    client = Client()
    assert password_sign_in(client, user, device_copy).status_code == 200
    assert not signed_in(client)
    assert not mail.outbox


def test_with_sso_off_nothing_changes(client, db, local_superuser):
    assert client.get("/sso/login/").status_code == 404
    assert client.get("/sso/callback/?code=x&state=y").status_code == 404
    page = client.get("/admin/login/").content.decode()
    assert "Sign in with" not in page and "break-glass" not in page
    assert password_sign_in(client, *local_superuser).status_code == 302
    assert signed_in(client)


def test_extra_authorization_parameters_are_sent_but_never_replace_ours(sso_settings, settings):
    settings.OIDC_AUTH_PARAMS = "access_type=offline&hd=uni.example&state=mine&nonce=mine"
    query = requests.utils.urlparse(Client().get("/sso/login/")["Location"]).query
    params = dict(part.split("=", 1) for part in query.split("&"))
    assert params["access_type"] == "offline" and params["hd"] == "uni.example"
    assert params["state"] != "mine" and params["nonce"] != "mine"


def test_a_recovery_code_after_the_provider_leads_straight_to_setting_up_an_authenticator(sso_settings, settings):
    # Issue 25 item 6, at the identity provider's door: the page after the code is the set-up, no re-sign-in asked.
    settings.OIDC_REQUIRE_MFA = False
    sub = sso_settings.person("newcomer", groups=["cd2-viewers"], amr=["pwd"])
    client = Client()
    response = sso_settings.sign_in(client, sub)
    user = get_user_model().objects.get(sso_identity__subject=sub)
    StaticDevice.objects.create(user=user, name="first sign-in", confirmed=True).token_set.create(token="f1rstc0de")

    right = client.post(response["Location"], {"otp_token": "f1rstc0de"})

    assert right.status_code == 302 and right["Location"] == "/admin/my-authenticator/?next=%2Fadmin%2F"
    page = client.get(right["Location"]).content.decode()
    assert "you have no authenticator yet" in page and "provider-reauth" not in page
    qr = client.post(right["Location"], {}).content.decode()
    assert 'alt="QR code for your new authenticator"' in qr
