"""The staff site: the admin with a second factor, our branding and the dashboard on its index.

Set as Django's default site by `credentials.apps.StaffAdminConfig` (in
INSTALLED_APPS instead of "django.contrib.admin"), so every `@admin.register`
lands on it and no code patches `admin.site` at run time.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from django import forms
from django.conf import settings
from django.contrib.admin import AdminSite
from django.contrib.auth.signals import user_login_failed
from django.http import HttpResponseRedirect
from django.urls import path, reverse
from django.utils.functional import SimpleLazyObject
from django.utils.http import urlencode
from django_otp.admin import OTPAdminAuthenticationForm, OTPAdminSite
from django_otp.plugins.otp_static.models import StaticDevice
from django_otp.plugins.otp_totp.models import TOTPDevice

from credentials.admin import devices, my_settings
from credentials.admin.dashboard import dashboard_context
from requestinfo import client_ip
from staffsso.config import sso_enabled
from staffsso.services import break_glass_allowed, break_glass_signed_in
from staffsso.session import is_sso_session, mfa_by_provider

DASHBOARD_PERMISSION = "institutions.view_institution"


@dataclass(frozen=True)
class Section:
    """One heading of the index: the models staff use together, by "app_label.model_name"."""

    key: str
    name: str
    models: tuple[str, ...]
    superusers_only: bool = False

    def holds(self, app_label: str, model_name: str) -> bool:
        return f"{app_label}.{model_name}" in self.models or f"{app_label}.*" in self.models


# The index in the order staff work: customers, their keys, what we told them,
# who did what; security housekeeping last and for superusers only.
SECTIONS = (
    Section("cockpit", "Institutions", ("institutions.institution", "institutions.contact")),
    Section("keys", "Keys", ("credentials.cd2credential", "credentials.submissionlink")),
    Section("notices", "Notices and reminders", ("credentials.reminderlog", "credentials.notice")),
    Section("audit", "Audit", ("credentials.auditevent",)),
    Section("api", "Data pipeline API", ("api.*",), superusers_only=True),
    Section(
        "security", "Security", ("auth.*", "axes.*", "otp_totp.*", "otp_static.*", "staffsso.*"), superusers_only=True
    ),
)
OTHER_SECTION = Section("other", "Other", ())
# The admins that take the place of the ones other apps register (see StaffAdminSite.register).
REPLACEMENT_ADMINS = {
    TOTPDevice: devices.TOTPDeviceAdmin,
    StaticDevice: devices.StaticDeviceAdmin,
}


# The one answer to every failed sign-in: which part was wrong (the user, the
# password, the code) is what an attacker guessing passwords wants to know.
SIGN_IN_FAILED = "Sign-in failed. Check your username, password and one-time code, then try again."


class CodeInput(forms.TextInput):
    """A one-time code is never rendered back: a used code is worth nothing and differs from one failure to the next."""

    def format_value(self, value):
        return None


class StaffLoginForm(OTPAdminAuthenticationForm):
    """The admin login: username, password and a code from the authenticator app or a recovery code.

    django-otp asks the user to pick a device first; with one authenticator
    and one set of recovery codes per person, the code's shape says which:
    six digits are an authenticator code, anything else a recovery code. So
    the page never lists a user's devices, and every failure, whichever part
    failed, gets the same answer.
    """

    otp_token = forms.CharField(required=False, widget=CodeInput(attrs={"autocomplete": "one-time-code"}))

    def clean(self):
        try:
            cleaned = super().clean()
        except forms.ValidationError:
            # Forget the user a right password found: the template and
            # django-otp read it to offer that user's devices.
            self.user_cache = None
            raise forms.ValidationError(SIGN_IN_FAILED, code="sign_in_failed") from None
        user = self.user_cache
        if sso_enabled() and user is not None and not break_glass_allowed(user):
            # With SSO on, a password signs in break-glass accounts only; the
            # same answer as any failure, so the form tells nobody whose
            # password was right.
            self.user_cache = None
            user_login_failed.send(
                sender=__name__,
                credentials={"username": user.get_username()},
                request=self.request,
                reason="password sign-in refused: SSO is on and this is not a break-glass account",
            )
            raise forms.ValidationError(SIGN_IN_FAILED, code="sign_in_failed")
        return cleaned

    def _verify_token(self, user, token, device=None):
        if device is None:
            token = (token or "").strip()
            if token.isdigit() and len(token) == 6:
                device = TOTPDevice.objects.filter(user=user, confirmed=True).first()
            else:
                device = StaticDevice.objects.filter(user=user, confirmed=True).first()
            if device is None:
                raise forms.ValidationError(SIGN_IN_FAILED, code="sign_in_failed")
        return super()._verify_token(user, token, device)

    def _update_form(self, user):
        # django-otp fills the device choice with the user's device names and
        # renders the password back; neither belongs in the page.
        self.fields["password"].widget.render_value = False

    def clean_otp(self, user):
        try:
            super().clean_otp(user)
        except forms.ValidationError:
            if user is not None:
                # The password was right but the code missing or wrong: a
                # failed sign-in all the same, audited and counted toward
                # the axes lockout (which listens to user_login_failed).
                user_login_failed.send(
                    sender=__name__,
                    credentials={"username": user.get_username()},
                    request=self.request,
                    reason="wrong or missing one-time code",
                )
            raise


class StaffAdminSite(OTPAdminSite):
    """Every page needs a password and a verified one-time code (OTPAdminSite); the index is the dashboard."""

    site_header = "CD2 key registry"
    site_title = "CD2 key registry"
    index_title = "Dashboard"
    login_form = StaffLoginForm
    login_template = "security/admin_login.html"
    # A handful of models fit in the breadcrumbs and the index; the institution
    # list needs the width of the sidebar more than staff need the sidebar.
    enable_nav_sidebar = False

    def __init__(self, name: str = "admin") -> None:
        super().__init__(name)

    def register(self, model_or_iterable, admin_class=None, **options):
        # django-otp's apps register their device admins on the default site
        # as they load (importing django-otp's admin modules here would be an
        # import circle). Theirs show a seed and recovery codes; ours take
        # their place. (The user admin is replaced in users.py: see there.)
        if isinstance(model_or_iterable, type):
            admin_class = REPLACEMENT_ADMINS.get(model_or_iterable, admin_class)
        return super().register(model_or_iterable, admin_class, **options)

    def has_permission(self, request):
        """Active staff with a verified second factor: our one-time code, or the provider's when it counts.

        OTPAdminSite asks for a django-otp device; a sign-in with the
        identity provider whose amr showed a second factor (OIDC_REQUIRE_MFA)
        has none here, and needs none.
        """
        return AdminSite.has_permission(self, request) and (request.user.is_verified() or mfa_by_provider(request))

    def login(self, request, extra_context=None):
        if (
            is_sso_session(request)
            and request.user.is_authenticated
            and not (request.user.is_verified() or mfa_by_provider(request))
        ):
            # Signed in with the provider, our code still to come.
            return HttpResponseRedirect(
                reverse("staffsso:code") + "?" + urlencode({"next": request.GET.get("next", "")})
            )
        extra_context = {
            **(extra_context or {}),
            "sso_enabled": sso_enabled(),
            "sso_provider_name": settings.OIDC_PROVIDER_NAME,
            "sso_login_url": reverse("staffsso:login") + "?" + urlencode({"next": request.GET.get("next", "/admin/")}),
        }
        response = super().login(request, extra_context)
        signed_in = request.method == "POST" and request.user.is_authenticated and response.status_code == 302
        if signed_in and sso_enabled():
            # Only a break-glass account gets here (StaffLoginForm): audited and every superuser told.
            break_glass_signed_in(user=request.user, ip_address=client_ip(request))
        if signed_in:
            device = getattr(request.user, "otp_device", None)
            return devices.signed_in_with_recovery_code(request, device, response["Location"]) or response
        return response

    def get_urls(self):
        reset = self.admin_view(partial(devices.authenticator_reset_view, admin_site=self))
        own = self.admin_view(partial(my_settings.my_settings_view, admin_site=self))
        return [
            path("my-authenticator/", reset, name="authenticator_reset"),
            path("my-settings/", own, name="my_settings"),
            *super().get_urls(),
        ]

    def each_context(self, request):
        """Django's context of every admin page, with the app list built only when a template reads it.

        Django's own `each_context` builds the whole app list for every page
        (a permission check and two `reverse()` per registered model) to feed
        the navigation sidebar, which this site turns off
        (`enable_nav_sidebar`); the index builds its own list. Built on every
        page it was 13 % of a page's time (the admin crawl's profile), so it
        is lazy here; the other keys are Django 5.2's.
        """
        script_name = request.META["SCRIPT_NAME"]
        return {
            "site_title": self.site_title,
            "site_header": self.site_header,
            "site_url": script_name if self.site_url == "/" and script_name else self.site_url,
            "has_permission": self.has_permission(request),
            "available_apps": SimpleLazyObject(partial(self.get_app_list, request)),
            "is_popup": False,
            "is_nav_sidebar_enabled": self.enable_nav_sidebar,
            "log_entries": self.get_log_entries(request),
            # The "Reset my authenticator" link in base_site.html; other admin
            # sites rendering the same templates (the bench's stock floor) have no such page.
            "authenticator_reset_url": reverse(f"{self.name}:authenticator_reset"),
            "my_settings_url": reverse(f"{self.name}:my_settings"),
        }

    def get_app_list(self, request, app_label=None):
        """The index grouped by what staff do (SECTIONS), not by Django app; an app's own page is unchanged."""
        if app_label is not None:
            return super().get_app_list(request, app_label)
        grouped: dict[Section, list[dict]] = {}
        for app in super().get_app_list(request):
            for model in app["models"]:
                name = model["object_name"].lower()
                section = next((s for s in SECTIONS if s.holds(app["app_label"], name)), OTHER_SECTION)
                if section.superusers_only and not request.user.is_superuser:
                    continue
                grouped.setdefault(section, []).append(model)
        return [
            {
                "name": section.name,
                "app_label": section.key,
                "app_url": models[0]["admin_url"] or "",
                "has_module_perms": True,
                "models": sorted(models, key=lambda m: m["name"]),
            }
            for section in (*SECTIONS, OTHER_SECTION)
            if (models := grouped.get(section))
        ]

    def index(self, request, extra_context=None):
        extra_context = dict(extra_context or {})
        if request.user.has_perm(DASHBOARD_PERMISSION):
            extra_context.update(dashboard_context(), show_dashboard=True)
        return super().index(request, extra_context)
