"""Staff second factors in the admin: nobody reads a seed or a recovery code back, superusers included.

django-otp's own device admins show a confirmed authenticator's seed in an
editable field and list recovery codes. StaffAdminSite.register puts these
admins in their place: a device page shows who owns it and when it was used,
nothing else; nobody adds or edits a device here; deleting one (superusers)
is audited. A staff member replaces their own authenticator on "Reset my
authenticator" (password first, the new QR code shown once, confirmed by a
code from it).
"""

from __future__ import annotations

import base64
import io
import time

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.cache import add_never_cache_headers, patch_cache_control
from django.utils.http import url_has_allowed_host_and_scheme, urlencode
from django.views.decorators.debug import sensitive_post_parameters, sensitive_variables
from django_otp import login as otp_login
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice
from django_otp.qr import write_qrcode_image

from credentials.admin.pages import REAUTH_FAILURES_SESSION_KEY, reauth_failed, reauth_is_fresh
from credentials.services.two_factor import (
    authenticator_reset_confirm,
    authenticator_reset_start,
    two_factor_device_delete,
)
from requestinfo import client_ip
from safeadmin.lists import SafeFilterValuesMixin
from staffsso.session import is_sso_session, reauth_url

# --------------------------------------------------------------------------
# Device admins (TOTP authenticators and recovery codes)
# --------------------------------------------------------------------------

DEVICE_FIELDS = ("user", "name", "confirmed", "created_at", "last_used_at")


class DeviceAdmin(SafeFilterValuesMixin, admin.ModelAdmin):
    """Who has which second factor and when it was last used; delete is the only change, and it is audited."""

    list_display = DEVICE_FIELDS
    list_filter = ("confirmed",)
    list_select_related = ("user",)
    search_fields = ("user__username", "user__email", "name")
    search_help_text = "Search by username, email or device name."
    # Explicit, so the read-only page can never grow the seed (`key`) or the codes.
    fields = DEVICE_FIELDS
    readonly_fields = DEVICE_FIELDS

    def has_add_permission(self, request) -> bool:
        # Enrolment is the staff member's own act: "Reset my authenticator".
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def delete_model(self, request, obj) -> None:
        two_factor_device_delete(device=obj, actor=request.user, ip_address=client_ip(request))

    def delete_queryset(self, request, queryset) -> None:
        for device in queryset.select_related("user"):
            two_factor_device_delete(device=device, actor=request.user, ip_address=client_ip(request))


class TOTPDeviceAdmin(DeviceAdmin):
    pass


class StaticDeviceAdmin(DeviceAdmin):
    # No token inline: recovery codes are shown once, to their owner, when made.
    pass


# --------------------------------------------------------------------------
# Reset my authenticator
# --------------------------------------------------------------------------

# The unconfirmed device this session is enrolling (its id, never its seed).
PENDING_DEVICE_SESSION_KEY = "authenticator_reset_device"
# When this session signed in with a recovery code (a time): the set-up page that follows needs no
# second password, the sign-in having just checked it. Used once, and only this long after the sign-in.
RECOVERY_SIGN_IN_SESSION_KEY = "signed_in_with_recovery_code"
RECOVERY_SIGN_IN_FRESH_SECONDS = 10 * 60


def signed_in_with_recovery_code(request: HttpRequest, device, next_url: str) -> HttpResponseRedirect | None:
    """After a sign-in: straight to setting up an authenticator when the code was a recovery code, else None.

    A recovery code is single-use: who signs in with one (a new colleague's
    first sign-in, a lost phone) needs an authenticator before the codes run
    out. Both doors call this: the password form and the code after the
    identity provider (staffsso).
    """
    if not isinstance(device, StaticDevice):
        return None
    request.session[RECOVERY_SIGN_IN_SESSION_KEY] = time.time()
    url = reverse("admin:authenticator_reset")
    if next_url:
        url += "?" + urlencode({"next": next_url})
    return HttpResponseRedirect(url)


def _recovery_sign_in_is_fresh(request: HttpRequest) -> bool:
    at = request.session.get(RECOVERY_SIGN_IN_SESSION_KEY)
    return isinstance(at, int | float) and 0 <= time.time() - at < RECOVERY_SIGN_IN_FRESH_SECONDS


def _safe_next(request: HttpRequest) -> str:
    next_url = request.GET.get("next") or ""
    allowed = url_has_allowed_host_and_scheme(
        next_url, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    )
    return next_url if next_url and allowed else ""


class PasswordForm(forms.Form):
    password = forms.CharField(
        label="Your password",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
    )

    def __init__(self, *args, user, request, just_signed_in: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.user = user
        # Signed in with the identity provider: no local password; the proof
        # is a fresh sign-in there (as for a reveal, credentials/admin/pages.py).
        # Signed in a moment ago with a recovery code: that sign-in was the proof.
        self.by_provider = is_sso_session(request)
        self.needs_provider = self.by_provider and not reauth_is_fresh(request) and not just_signed_in
        if self.by_provider or just_signed_in:
            del self.fields["password"]

    def clean(self):
        cleaned = super().clean()
        if self.needs_provider:
            raise ValidationError("Sign in again with your identity provider first (the button above).")
        return cleaned

    def clean_password(self) -> str:
        if not self.user.check_password(self.cleaned_data["password"]):
            raise ValidationError("That is not your password.", code="wrong_password")
        return ""


class CodeForm(forms.Form):
    otp_token = forms.CharField(
        label="Code from the app",
        max_length=16,
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "inputmode": "numeric"}),
    )


def _qr_data_uri(config_url: str) -> str:
    out = io.BytesIO()
    write_qrcode_image(config_url, out)
    return "data:image/svg+xml;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def _private(response: HttpResponse) -> HttpResponse:
    add_never_cache_headers(response)
    patch_cache_control(response, no_store=True, private=True)
    return response


@sensitive_post_parameters("password", "otp_token")
@sensitive_variables("device", "context")
def authenticator_reset_view(request: HttpRequest, *, admin_site) -> HttpResponse:
    """Password, then the new QR code (this response only), then a code from it: the new device replaces the old."""
    user = request.user
    ip_address = client_ip(request)
    just_signed_in = _recovery_sign_in_is_fresh(request)
    has_authenticator = TOTPDevice.objects.filter(user=user, confirmed=True).exists()
    next_url = _safe_next(request)
    context = {
        **admin_site.each_context(request),
        "title": "Set up your authenticator" if just_signed_in else "Reset my authenticator",
        "recovery_sign_in": just_signed_in,
        "has_authenticator": has_authenticator,
        "recovery_codes_left": StaticToken.objects.filter(device__user=user, device__confirmed=True).count(),
        "next_url": next_url,
    }
    pending_id = request.session.get(PENDING_DEVICE_SESSION_KEY)
    password_form = PasswordForm(user=user, request=request, just_signed_in=just_signed_in)
    code_form = None

    if request.method == "POST" and "otp_token" in request.POST and pending_id:
        code_form = CodeForm(request.POST)
        if code_form.is_valid():
            device = authenticator_reset_confirm(
                user=user, device_id=pending_id, token=code_form.cleaned_data["otp_token"], ip_address=ip_address
            )
            if device is not None:
                del request.session[PENDING_DEVICE_SESSION_KEY]
                # This session was verified by the device just replaced.
                otp_login(request, device)
                messages.success(
                    request,
                    "Your new authenticator is set up; the old one no longer works."
                    if has_authenticator
                    else "Your authenticator is set up: sign in with its codes from now on.",
                )
                return HttpResponseRedirect(next_url or reverse("admin:index"))
            code_form.add_error(
                "otp_token",
                "That code does not match. Check the app's clock, or start again for a new QR code.",
            )
    elif request.method == "POST":
        password_form = PasswordForm(request.POST, user=user, request=request, just_signed_in=just_signed_in)
        if password_form.is_valid():
            request.session.pop(REAUTH_FAILURES_SESSION_KEY, None)  # the wrong ones before were not "in a row"
            request.session.pop(RECOVERY_SIGN_IN_SESSION_KEY, None)  # used once
            device = authenticator_reset_start(user=user, ip_address=ip_address)
            request.session[PENDING_DEVICE_SESSION_KEY] = device.pk
            context.update(
                qr_code=_qr_data_uri(device.config_url),
                secret_b32=base64.b32encode(device.bin_key).decode("ascii"),
            )
            code_form = CodeForm()
        elif password_form.has_error("password", "wrong_password"):
            # Counted with the reveal's: the fifth wrong password in a row signs the session out.
            signed_out = reauth_failed(request, where="authenticator reset password check")
            if signed_out is not None:
                return signed_out
    context.update(
        password_form=password_form,
        code_form=code_form,
        provider_reauth_url=reauth_url(request.get_full_path()),
        provider_name=settings.OIDC_PROVIDER_NAME,
    )
    return _private(TemplateResponse(request, "admin/credentials/authenticator_reset.html", context))
