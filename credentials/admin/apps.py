from __future__ import annotations

import axes.apps
from django.contrib.admin.apps import AdminConfig
from django_otp.plugins.otp_static import apps as otp_static_apps
from django_otp.plugins.otp_totp import apps as otp_totp_apps


class StaffAdminConfig(AdminConfig):
    """django.contrib.admin with the staff site (two-factor, branding, dashboard) as the default site.

    In INSTALLED_APPS instead of "django.contrib.admin".
    """

    default_site = "credentials.admin.site.StaffAdminSite"

    def ready(self) -> None:
        super().ready()  # autodiscovery: every app's admin module (institutions/admin.py too), on the staff site
        from credentials.admin import institutions, keys, lockouts, notices, reminders, users  # noqa: F401  (see credentials/admin/__init__.py)
        from institutions.admin import institution_admin_extend

        # The institution admin is institutions'; what it shows of their keys is ours.
        institution_admin_extend(institutions.KeysExtension())


# Third-party apps whose models the staff admin shows, named in words: without
# these Django titles a label ("Axes", "Otp_Static", "Otp_Totp") in every
# breadcrumb and app page. In INSTALLED_APPS instead of the apps' own configs;
# the labels (and so tables and migrations) stay the apps'.
class LockoutsConfig(axes.apps.AppConfig):
    verbose_name = "Sign-in lockouts"


class RecoveryCodesConfig(otp_static_apps.DefaultConfig):
    verbose_name = "Recovery codes"


class AuthenticatorAppsConfig(otp_totp_apps.DefaultConfig):
    verbose_name = "Authenticator apps"
