"""Issue 25 item 6: a sign-in with a recovery code leads straight to setting up an authenticator.

A new colleague's first sign-in uses a single-use code from `addstatictoken`;
the page after the sign-in is the set-up, without asking for the password the
sign-in just checked, and from then on the authenticator's codes sign in.
Someone who still has an authenticator but used a recovery code is led there
too, with a way past it. The waived password holds once, for a few minutes.
"""

from __future__ import annotations

import datetime as dt
import re

import pytest
import time_machine
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.utils import timezone
from django_otp.oath import TOTP
from django_otp.plugins.otp_static.models import StaticDevice
from django_otp.plugins.otp_totp.models import TOTPDevice

from credentials.admin.devices import RECOVERY_SIGN_IN_FRESH_SECONDS
from credentials.models import AuditEvent

pytestmark = pytest.mark.django_db

LOGIN = "/admin/login/"
SET_UP = "/admin/my-authenticator/"
PASSWORD = "correct horse battery staple 42"


def code(device: TOTPDevice) -> str:
    return f"{TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift).token():06d}"


def sign_in(client, username: str, otp_token: str, next_url: str = "/admin/institutions/institution/"):
    return client.post(
        f"{LOGIN}?next={next_url}",
        {"username": username, "password": PASSWORD, "otp_token": otp_token, "next": next_url},
    )


def recovery_code(capsys, username: str) -> str:
    call_command("addstatictoken", username)
    return capsys.readouterr().out.strip()


@pytest.fixture
def newcomer(db):
    return get_user_model().objects.create_superuser("newcomer", "newcomer@example.com", PASSWORD)


def test_a_first_sign_in_with_a_recovery_code_leads_straight_to_setting_up_an_authenticator(client, newcomer, capsys):
    codes = [recovery_code(capsys, "newcomer"), recovery_code(capsys, "newcomer")]

    signed_in = sign_in(client, "newcomer", codes[0])

    assert signed_in.status_code == 302
    assert signed_in["Location"] == f"{SET_UP}?next=%2Fadmin%2Finstitutions%2Finstitution%2F"
    page = client.get(signed_in["Location"])
    body = page.content.decode()
    assert page.status_code == 200
    assert "you have no authenticator yet" in body and "you have 1 left" in body
    assert 'name="password"' not in body  # the sign-in a moment ago checked it

    qr = client.post(signed_in["Location"], {})
    assert 'alt="QR code for your new authenticator"' in qr.content.decode()
    device = TOTPDevice.objects.get(user=newcomer, confirmed=False)
    done = client.post(signed_in["Location"], {"otp_token": code(device)})

    assert done.status_code == 302 and done["Location"] == "/admin/institutions/institution/"
    device.refresh_from_db()
    assert device.confirmed
    kinds = list(AuditEvent.objects.filter(actor=newcomer).values_list("kind", flat=True).order_by("pk"))
    assert AuditEvent.Kind.TWO_FACTOR_RESET in kinds and AuditEvent.Kind.TWO_FACTOR_ENROLLED in kinds

    # The next sign-in is with the authenticator, and goes where it was going.
    client.logout()
    with time_machine.travel(timezone.now() + dt.timedelta(seconds=31), tick=False):
        again = sign_in(client, "newcomer", code(device))
    assert again.status_code == 302 and again["Location"] == "/admin/institutions/institution/"


def test_a_recovery_code_with_an_authenticator_still_leads_there_with_a_way_past(client, newcomer, capsys):
    TOTPDevice.objects.create(user=newcomer, name="phone", confirmed=True)

    signed_in = sign_in(client, "newcomer", recovery_code(capsys, "newcomer"), next_url="/admin/")

    assert signed_in["Location"].startswith(SET_UP)
    body = client.get(signed_in["Location"]).content.decode()
    assert "If you no longer have your authenticator app, set up a new one" in body
    assert re.search(r'id="recovery-not-now" href="/admin/"', body)
    assert client.get("/admin/").status_code == 200  # nothing forces it


def test_the_password_is_waived_once_and_only_minutes_after_the_sign_in(client, newcomer, capsys):
    location = sign_in(client, "newcomer", recovery_code(capsys, "newcomer"))["Location"]
    later = timezone.now() + dt.timedelta(seconds=RECOVERY_SIGN_IN_FRESH_SECONDS + 60)
    with time_machine.travel(later, tick=False):
        assert 'name="password"' in client.get(location).content.decode()

    client.post(location, {})  # the waiver used: a QR code shown
    assert 'name="password"' in client.get(SET_UP).content.decode()


def test_an_authenticator_code_signs_in_as_before(client, newcomer):
    device = TOTPDevice.objects.create(user=newcomer, name="phone", confirmed=True)
    response = sign_in(client, "newcomer", code(device))
    assert response.status_code == 302 and response["Location"] == "/admin/institutions/institution/"
    assert not StaticDevice.objects.filter(user=newcomer).exists()
