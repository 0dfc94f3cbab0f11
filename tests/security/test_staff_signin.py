"""Staff sign-in: password and one-time code for every admin page, lockouts, audit, session limits."""

from __future__ import annotations

import datetime as dt
import re

import pytest
import time_machine
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import RequestFactory
from django_otp.oath import TOTP
from django_otp.plugins.otp_static.models import StaticDevice
from django_otp.plugins.otp_totp.models import TOTPDevice

from credentials.admin.site import SIGN_IN_FAILED
from credentials.models import AuditEvent
from devtools.demo import demo_two_factor_enrol, totp_current_code
from requestinfo import client_ip

LOGIN = "/admin/login/"
PASSWORD = "correct horse battery staple 42"


@pytest.fixture
def staff(db):
    user = get_user_model().objects.create_superuser("ops", "ops@example.com", PASSWORD)
    TOTPDevice.objects.create(user=user, name="phone", confirmed=True)
    return user


def code_for(user) -> str:
    device = TOTPDevice.objects.get(user=user)
    return f"{TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift).token():06d}"


def sign_in(client, *, username="ops", password=PASSWORD, otp_token="", ip="10.0.0.1"):
    return client.post(
        LOGIN,
        {"username": username, "password": password, "otp_token": otp_token, "next": "/admin/"},
        REMOTE_ADDR=ip,
    )


def test_a_password_only_session_cannot_open_any_admin_page(client, staff):
    client.force_login(staff)
    response = client.get("/admin/")
    assert response.status_code == 302
    assert response["Location"].startswith(LOGIN)


def test_the_login_page_asks_for_a_one_time_code(client, db):
    assert 'name="otp_token"' in client.get(LOGIN).content.decode()


def test_the_right_password_without_a_code_does_not_sign_in_and_is_audited(client, staff):
    response = sign_in(client)
    assert response.status_code == 200
    assert client.get("/admin/").status_code == 302
    event = AuditEvent.objects.get(kind=AuditEvent.Kind.LOGIN_FAILED)
    assert (event.actor_label, event.ip_address) == ("ops", "10.0.0.1")
    assert "one-time code" in event.reason


def test_password_and_authenticator_code_open_the_admin_and_are_audited(client, staff):
    response = sign_in(client, otp_token=code_for(staff))
    assert response.status_code == 302, response.content.decode()[:2000]
    assert client.get("/admin/").status_code == 200
    event = AuditEvent.objects.get(kind=AuditEvent.Kind.LOGIN)
    assert (event.actor, event.ip_address, event.detail["second_factor"]) == (staff, "10.0.0.1", "TOTPDevice")


def test_a_recovery_code_signs_in_once(client, staff):
    device = StaticDevice.objects.create(user=staff, name="recovery codes", confirmed=True)
    device.token_set.create(token="r3covery9")
    assert sign_in(client, otp_token="r3covery9").status_code == 302
    client.logout()
    assert sign_in(client, otp_token="r3covery9").status_code == 200  # used up
    assert client.get("/admin/").status_code == 302


def test_a_wrong_password_is_audited_with_the_username_tried_and_the_address(client, staff):
    sign_in(client, password="wrong", ip="192.0.2.7")
    event = AuditEvent.objects.get(kind=AuditEvent.Kind.LOGIN_FAILED)
    assert (event.actor_label, event.ip_address) == ("ops", "192.0.2.7")
    assert "wrong" not in str(event.detail) and "wrong" not in event.actor_label  # never the password tried


def test_repeated_failures_lock_out_that_username_from_that_address_only(client, staff, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT):
        sign_in(client, password="wrong", ip="203.0.113.9")
    locked = sign_in(client, otp_token=code_for(staff), ip="203.0.113.9")
    assert locked.status_code == 429
    assert client.get("/admin/").status_code == 302
    # The attacker's address cannot lock the real user out from the office.
    other_client = type(client)()
    assert sign_in(other_client, otp_token=code_for(staff), ip="198.51.100.20").status_code == 302
    assert other_client.get("/admin/").status_code == 200


def test_wrong_codes_count_toward_the_lockout(client, staff, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT):
        sign_in(client, otp_token="000000", ip="203.0.113.10")
    assert sign_in(client, otp_token=code_for(staff), ip="203.0.113.10").status_code == 429


def test_staff_enrol_their_own_authenticator_from_the_admin_with_a_qr_code(admin_client, admin_user):
    """Details and the confirmed-device rules: tests/credentials/test_admin_devices.py."""
    response = admin_client.post("/admin/my-authenticator/", {"password": "password"})
    assert response.status_code == 200 and 'src="data:image/svg+xml;base64,' in response.content.decode()
    assert TOTPDevice.objects.filter(user=admin_user, confirmed=False).count() == 1


def test_a_session_ends_after_thirty_idle_minutes(admin_client):
    with time_machine.travel(dt.datetime.now(dt.UTC) + dt.timedelta(minutes=29), tick=False):
        assert admin_client.get("/admin/").status_code == 200
    with time_machine.travel(dt.datetime.now(dt.UTC) + dt.timedelta(minutes=29 + 31), tick=False):
        assert admin_client.get("/admin/").status_code == 302


def test_a_session_ends_twelve_hours_after_sign_in_however_active(admin_client):
    start = dt.datetime.now(dt.UTC)
    assert admin_client.get("/admin/").status_code == 200
    for minutes in range(25, 12 * 60, 25):  # a request every 25 minutes all day
        with time_machine.travel(start + dt.timedelta(minutes=minutes), tick=False):
            assert admin_client.get("/admin/").status_code == 200, minutes
    with time_machine.travel(start + dt.timedelta(hours=12, minutes=10), tick=False):
        assert admin_client.get("/admin/").status_code == 302


def test_forwarded_addresses_are_ignored_unless_behind_the_trusted_proxy(settings):
    request = RequestFactory().get("/", REMOTE_ADDR="10.1.1.1", HTTP_X_FORWARDED_FOR="6.6.6.6, 198.51.100.4")
    settings.BEHIND_TRUSTED_PROXY = False
    assert client_ip(request) == "10.1.1.1"
    settings.BEHIND_TRUSTED_PROXY = True
    assert client_ip(request) == "198.51.100.4"  # the entry our proxy appended, not the forged one


def test_the_development_code_helper_refuses_to_work_with_debug_off(staff, settings):
    settings.DEBUG = False
    with pytest.raises(CommandError, match="only runs in development"):
        call_command("totp_code", "ops")
    with pytest.raises(RuntimeError):
        totp_current_code(user=staff)
    with pytest.raises(RuntimeError):
        demo_two_factor_enrol(user=staff)


def test_the_development_code_helper_prints_a_code_the_login_accepts(client, staff, settings, capsys):
    settings.DEBUG = True
    call_command("totp_code", "ops")
    code = capsys.readouterr().out.strip()
    settings.DEBUG = False
    assert sign_in(client, otp_token=code).status_code == 302


def test_the_first_superuser_signs_in_with_a_recovery_code_from_the_command_line(client, db, capsys):
    get_user_model().objects.create_superuser("first", "first@example.com", PASSWORD)
    call_command("addstatictoken", "first")
    code = capsys.readouterr().out.strip()
    assert sign_in(client, username="first", otp_token=code).status_code == 302
    assert client.get("/admin/my-authenticator/").status_code == 200


def test_a_wrong_code_does_not_put_the_password_back_into_the_page(client, staff):
    page = sign_in(client, otp_token="000000").content.decode()
    assert SIGN_IN_FAILED in page
    assert PASSWORD not in page


def _without_csrf_and_username(response) -> str:
    """The page less the two parts that differ by design: the CSRF token and the username typed (shown back)."""
    body = re.sub(r'name="csrfmiddlewaretoken" value="[^"]+"', "", response.content.decode())
    return re.sub(r'name="username" value="[^"]*"', "", body)


def test_every_failed_sign_in_gets_the_same_answer_and_no_device_names(client, staff):
    """Not a password oracle: a right password with a wrong code reads exactly like a wrong password."""
    StaticDevice.objects.create(user=staff, name="Ops recovery sheet", confirmed=True).token_set.create(token="abc123x")
    TOTPDevice.objects.filter(user=staff).update(name="Ops Pixel 7 work phone")
    attempts = {
        "unknown user": {"username": "nobody-here"},
        "wrong password": {"password": "not the password"},
        "wrong password, right code": {"password": "not the password", "otp_token": code_for(staff)},
        "right password, no code": {},
        "right password, wrong code": {"otp_token": "000000"},
        "right password, wrong recovery code": {"otp_token": "zzz999q"},
    }
    # One address each, so the lockout (its own answer, 429) stays out of the comparison.
    answers = {name: sign_in(client, ip=f"10.9.0.{n}", **kw) for n, (name, kw) in enumerate(attempts.items())}
    assert {name: r.status_code for name, r in answers.items()} == dict.fromkeys(answers, 200)
    bodies = {name: _without_csrf_and_username(r) for name, r in answers.items()}
    assert SIGN_IN_FAILED in bodies["unknown user"]
    assert len(set(bodies.values())) == 1, [name for name in bodies if bodies[name] != bodies["unknown user"]]
    for body in bodies.values():
        assert "Ops Pixel 7" not in body and "Ops recovery sheet" not in body
        assert 'name="otp_device"' not in body
    assert client.get("/admin/").status_code == 302
