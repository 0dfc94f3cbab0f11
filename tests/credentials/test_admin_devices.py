"""Second factors in the admin: no seed or recovery code is ever read back; resets and deletes are audited."""

from __future__ import annotations

import base64
import re

import pytest
from django_otp.oath import TOTP
from django_otp.plugins.otp_static.models import StaticDevice
from django_otp.plugins.otp_totp.models import TOTPDevice

from credentials.admin.devices import PENDING_DEVICE_SESSION_KEY
from credentials.models import AuditEvent
from tests.conftest import STAFF_PASSWORD

RESET = "/admin/my-authenticator/"


def code(device: TOTPDevice) -> str:
    return f"{TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift).token():06d}"


def seed_forms(device: TOTPDevice) -> list[str]:
    """Every way a seed could be written on a page: hex, base32, and inside an otpauth:// URI."""
    b32 = base64.b32encode(device.bin_key).decode()
    return [device.key, b32, b32.rstrip("="), device.key.upper()]


@pytest.fixture
def superuser(make_staff):
    return make_staff(None, is_superuser=True)


@pytest.fixture
def colleague(make_staff):
    user = make_staff("Data engineer")
    totp = TOTPDevice.objects.create(user=user, name="colleague phone", confirmed=True)
    static = StaticDevice.objects.create(user=user, name="colleague codes", confirmed=True)
    static.token_set.create(token="rec0very1")
    static.token_set.create(token="rec0very2")
    return user, totp, static


def test_a_superuser_sees_who_has_which_device_but_never_a_seed_or_recovery_code(
    client, verified_login, superuser, colleague
):
    _, totp, static = colleague
    verified_login(client, superuser)
    pages = {
        url: client.get(url)
        for url in (
            "/admin/otp_totp/totpdevice/",
            f"/admin/otp_totp/totpdevice/{totp.pk}/change/",
            f"/admin/otp_totp/totpdevice/{totp.pk}/delete/",
            "/admin/otp_static/staticdevice/",
            f"/admin/otp_static/staticdevice/{static.pk}/change/",
            f"/admin/otp_static/staticdevice/{static.pk}/delete/",
        )
    }
    assert {url: r.status_code for url, r in pages.items()} == dict.fromkeys(pages, 200)
    assert "colleague phone" in pages["/admin/otp_totp/totpdevice/"].content.decode()
    for url, response in pages.items():
        body = response.content.decode()
        for secret in [*seed_forms(totp), "rec0very1", "rec0very2"]:
            assert secret not in body, (url, secret)
        assert not re.search(r'name="(key|token_set-0-token)"', body), url
        assert "otpauth://" not in body, url


def test_nobody_adds_edits_or_reads_the_qr_code_of_a_device_in_the_admin(client, verified_login, superuser, colleague):
    _, totp, _ = colleague
    verified_login(client, superuser)
    assert client.get("/admin/otp_totp/totpdevice/add/").status_code == 403
    assert client.get("/admin/otp_static/staticdevice/add/").status_code == 403
    # django-otp's own config and QR views are gone with its admin.
    assert client.get(f"/admin/otp_totp/totpdevice/{totp.pk}/config/").status_code in (302, 404)
    assert client.get(f"/admin/otp_totp/totpdevice/{totp.pk}/qrcode/").status_code in (302, 404)
    response = client.post(
        f"/admin/otp_totp/totpdevice/{totp.pk}/change/",
        {"user": superuser.pk, "name": "stolen", "confirmed": "on", "key": "00" * 20},
    )
    assert response.status_code == 403
    totp.refresh_from_db()
    assert totp.name == "colleague phone" and totp.key != "00" * 20


def test_a_superuser_deletes_a_colleagues_device_and_it_is_audited(client, verified_login, superuser, colleague):
    user, totp, static = colleague
    verified_login(client, superuser)
    response = client.post(f"/admin/otp_totp/totpdevice/{totp.pk}/delete/", {"post": "yes"}, REMOTE_ADDR="10.2.3.4")
    assert response.status_code == 302
    response = client.post(
        "/admin/otp_static/staticdevice/",
        {"action": "delete_selected", "_selected_action": [static.pk], "post": "yes"},
    )
    assert response.status_code == 302
    assert not TOTPDevice.objects.filter(pk=totp.pk).exists() and not StaticDevice.objects.filter(user=user).exists()
    events = AuditEvent.objects.filter(kind=AuditEvent.Kind.TWO_FACTOR_DELETED).order_by("pk")
    assert [(e.actor, e.detail["device"], e.detail["owner"]) for e in events] == [
        (superuser, "TOTPDevice", user.username),
        (superuser, "StaticDevice", user.username),
    ]
    assert events[0].ip_address == "10.2.3.4"


def test_a_data_engineer_cannot_delete_anyones_device(client, verified_login, make_staff, colleague):
    _, totp, _ = colleague
    verified_login(client, make_staff("Data engineer"))
    assert client.post(f"/admin/otp_totp/totpdevice/{totp.pk}/delete/", {"post": "yes"}).status_code == 403
    assert TOTPDevice.objects.filter(pk=totp.pk).exists()


def test_a_staff_member_resets_their_own_authenticator_with_password_and_a_code(client, verified_login, make_staff):
    user = make_staff("Viewer")
    verified_login(client, user)
    old = TOTPDevice.objects.get(user=user)

    assert client.post(RESET, {"password": "not mine"}).status_code == 200
    assert not TOTPDevice.objects.filter(user=user, confirmed=False).exists()
    assert AuditEvent.objects.filter(kind=AuditEvent.Kind.REAUTH_FAILED, actor=user).count() == 1

    shown = client.post(RESET, {"password": STAFF_PASSWORD}, REMOTE_ADDR="10.7.7.7")
    new = TOTPDevice.objects.get(user=user, confirmed=False)
    body = shown.content.decode()
    assert 'src="data:image/svg+xml;base64,' in body and base64.b32encode(new.bin_key).decode() in body
    assert "no-store" in shown["Cache-Control"]
    assert TOTPDevice.objects.get(pk=old.pk).confirmed  # the old one works until the new one is confirmed

    # The QR code and key are shown once: not on a reload, not after a wrong code.
    for again in (client.get(RESET), client.post(RESET, {"otp_token": "000000"})):
        assert not any(secret in again.content.decode() for secret in seed_forms(new))
    assert TOTPDevice.objects.get(pk=new.pk).confirmed is False

    TOTPDevice.objects.filter(pk=new.pk).update(throttling_failure_count=0, throttling_failure_timestamp=None)
    new.refresh_from_db()
    done = client.post(RESET, {"otp_token": code(new)})
    assert done.status_code == 302
    assert list(TOTPDevice.objects.filter(user=user).values_list("pk", "confirmed")) == [(new.pk, True)]
    assert PENDING_DEVICE_SESSION_KEY not in client.session
    assert client.get("/admin/").status_code == 200  # still signed in, now by the new device
    kinds = list(AuditEvent.objects.filter(actor=user).order_by("pk").values_list("kind", "ip_address"))
    assert kinds == [
        (AuditEvent.Kind.REAUTH_FAILED, "127.0.0.1"),
        (AuditEvent.Kind.TWO_FACTOR_RESET, "10.7.7.7"),
        (AuditEvent.Kind.TWO_FACTOR_ENROLLED, "127.0.0.1"),
    ]


def test_a_code_cannot_confirm_someone_elses_pending_device(client, verified_login, make_staff):
    mallory, victim = make_staff("Viewer"), make_staff("Viewer")
    pending = TOTPDevice.objects.create(user=victim, name="pending", confirmed=False)
    verified_login(client, mallory)
    session = client.session
    session[PENDING_DEVICE_SESSION_KEY] = pending.pk
    session.save()
    client.post(RESET, {"otp_token": code(pending)})
    assert TOTPDevice.objects.get(pk=pending.pk).confirmed is False


def test_five_wrong_passwords_in_a_row_on_the_reset_sign_the_session_out(client, verified_login, make_staff):
    # A stolen session cannot guess the password to enrol its own authenticator.
    user = make_staff("Viewer")
    verified_login(client, user)
    for _ in range(4):
        assert client.post(RESET, {"password": "guess"}).status_code == 200
    signed_out = client.post(RESET, {"password": "guess"})
    assert signed_out.status_code == 302 and signed_out["Location"] == "/admin/login/"
    assert client.post(RESET, {"password": STAFF_PASSWORD}).status_code == 302  # to the login page: no session
    assert not TOTPDevice.objects.filter(user=user, confirmed=False).exists()
    failures = AuditEvent.objects.filter(kind=AuditEvent.Kind.REAUTH_FAILED, actor=user).order_by("pk")
    assert [e.detail["failures_in_a_row"] for e in failures] == [1, 2, 3, 4, 5]


def test_the_right_password_clears_the_count(client, verified_login, make_staff):
    user = make_staff("Viewer")
    verified_login(client, user)
    for _ in range(4):
        client.post(RESET, {"password": "guess"})
    assert client.post(RESET, {"password": STAFF_PASSWORD}).status_code == 200  # the QR code
    for _ in range(4):
        assert client.post(RESET, {"password": "guess"}).status_code == 200  # four more, still signed in
    assert client.get("/admin/").status_code == 200
