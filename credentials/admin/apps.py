from __future__ import annotations

from django.contrib.admin.apps import AdminConfig


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
