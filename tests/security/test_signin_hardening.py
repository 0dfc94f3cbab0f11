"""Staff sign-in hardening: one address is locked out across usernames, and staff passwords must be strong.

The (username, address) lockout of five failures is in test_staff_signin.py;
here the second, higher limit for one address whatever the usernames
(edpotential.security.AddressWideLockoutHandler) and AUTH_PASSWORD_VALIDATORS.
"""

from __future__ import annotations

import datetime as dt

import pytest
import time_machine
from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice

LOGIN = "/admin/login/"
PASSWORD = "correct horse battery staple 42"
ATTACKER = "203.0.113.66"


@pytest.fixture
def staff(db):
    user = get_user_model().objects.create_superuser("ops", "ops@example.com", PASSWORD)
    TOTPDevice.objects.create(user=user, name="phone", confirmed=True)
    return user


def code_for(user) -> str:
    device = TOTPDevice.objects.get(user=user)
    return f"{TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift).token():06d}"


def sign_in(client, *, username="ops", password=PASSWORD, otp_token="", ip=ATTACKER):
    return client.post(
        LOGIN, {"username": username, "password": password, "otp_token": otp_token, "next": "/admin/"}, REMOTE_ADDR=ip
    )


def spray(client, attempts: int, *, usernames: int, ip=ATTACKER) -> list[int]:
    """`attempts` wrong passwords spread over `usernames` usernames from one address; the statuses."""
    return [
        sign_in(client, username=f"user{n % usernames}", password=f"guess-{n}", ip=ip).status_code
        for n in range(attempts)
    ]


def test_the_address_limit_is_higher_than_the_per_username_limit(settings):
    assert settings.LOCKOUT_IP_FAILURE_LIMIT > settings.AXES_FAILURE_LIMIT
    assert settings.AXES_HANDLER == "edpotential.security.AddressWideLockoutHandler"


def test_sixteen_failures_over_thirteen_usernames_from_one_address_lock_it_out(client, staff, settings):
    # The probe: this locked nothing when only (username, address) pairs were counted.
    statuses = spray(client, 16, usernames=13)

    limit = settings.LOCKOUT_IP_FAILURE_LIMIT
    # The failure that reaches the limit is answered with the lockout, as for one username.
    assert statuses == [200] * (limit - 1) + [429] * (16 - limit + 1)
    # Locked out whatever is typed next, the right password and code included ...
    assert sign_in(client, otp_token=code_for(staff)).status_code == 429
    assert client.get("/admin/").status_code == 302
    # ... from that address only.
    office = type(client)()
    assert sign_in(office, otp_token=code_for(staff), ip="198.51.100.20").status_code == 302


def test_colleagues_behind_one_address_stay_in_below_the_address_limit(client, staff, settings):
    statuses = spray(client, settings.LOCKOUT_IP_FAILURE_LIMIT - 1, usernames=settings.LOCKOUT_IP_FAILURE_LIMIT)
    assert set(statuses) == {200}
    assert sign_in(client, otp_token=code_for(staff)).status_code == 302


def test_a_good_sign_in_resets_its_own_failures_not_the_others_from_its_address(client, staff, settings):
    limit = settings.LOCKOUT_IP_FAILURE_LIMIT
    spray(client, limit - 2, usernames=limit)
    assert sign_in(client, password="typo").status_code == 200  # ops' own failure: one short of the limit
    assert sign_in(client, otp_token=code_for(staff)).status_code == 302
    client.logout()
    # ops' failure is forgotten, the other limit - 2 are not: two more reach the limit.
    assert spray(client, 2, usernames=1) == [200, 429]


def test_the_address_lockout_ends_after_the_cool_off(client, staff, settings):
    spray(client, settings.LOCKOUT_IP_FAILURE_LIMIT, usernames=settings.LOCKOUT_IP_FAILURE_LIMIT)
    assert sign_in(client, otp_token=code_for(staff)).status_code == 429
    with time_machine.travel(dt.datetime.now(dt.UTC) + settings.AXES_COOLOFF_TIME + dt.timedelta(minutes=1)):
        assert sign_in(client, otp_token=code_for(staff)).status_code == 302


# ---------------------------------------------------------------------------
# Password strength (AUTH_PASSWORD_VALIDATORS)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("password", "code"),
    [
        ("a", "password_too_short"),
        ("Tr0ub4dor&3", "password_too_short"),  # 11 characters
        ("password1234", "password_too_common"),
        ("qwertyuiop12", "password_too_common"),
        ("123456789012", "password_entirely_numeric"),
        ("margaret.hamilton1", "password_too_similar"),
    ],
)
def test_weak_staff_passwords_are_refused(password, code):
    user = get_user_model()(username="margaret.hamilton", email="margaret@example.com")
    with pytest.raises(ValidationError) as refused:
        validate_password(password, user)
    assert code in [error.code for error in refused.value.error_list]


def test_a_long_uncommon_password_is_accepted():
    validate_password(PASSWORD, get_user_model()(username="margaret.hamilton"))


def test_the_admin_refuses_to_create_a_user_with_the_password_a(admin_client):
    response = admin_client.post(
        "/admin/auth/user/add/",
        {"username": "newcomer", "usable_password": "true", "password1": "a", "password2": "a"},
    )
    assert response.status_code == 200
    assert "This password is too short" in response.content.decode()
    assert not get_user_model().objects.filter(username="newcomer").exists()


def test_the_admin_accepts_a_strong_password(admin_client):
    response = admin_client.post(
        "/admin/auth/user/add/",
        {"username": "newcomer", "usable_password": "true", "password1": PASSWORD, "password2": PASSWORD},
    )
    assert response.status_code == 302
    assert get_user_model().objects.get(username="newcomer").check_password(PASSWORD)
