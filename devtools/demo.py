"""The demo login's second factor (development only: each function refuses with DEBUG off)."""

from __future__ import annotations

from django.conf import settings
from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice


def require_debug(what: str) -> None:
    if not settings.DEBUG:
        raise RuntimeError(f"{what} is for development only and refuses to run with DEBUG off.")


def demo_two_factor_enrol(*, user) -> TOTPDevice:
    """Give the demo login an authenticator device; returns it."""
    require_debug("demo_two_factor_enrol")
    device = TOTPDevice.objects.filter(user=user, confirmed=True).first()
    return device or TOTPDevice.objects.create(user=user, name="demo authenticator", confirmed=True)


def totp_current_code(*, user) -> str | None:
    """The code `user`'s authenticator shows now."""
    require_debug("totp_current_code")
    device = TOTPDevice.objects.filter(user=user, confirmed=True).first()
    if device is None:
        return None
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
    return f"{totp.token():0{device.digits}d}"
