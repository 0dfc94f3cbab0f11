from __future__ import annotations

from django.apps import AppConfig
from django.contrib.auth.signals import user_logged_in, user_login_failed


class CredentialsConfig(AppConfig):
    name = "credentials"
    verbose_name = "Canvas Data 2 keys"

    def ready(self) -> None:
        from credentials import (
            checks,  # noqa: F401  (registers the system checks)
            middleware,
        )
        from credentials.services import audit

        user_logged_in.connect(audit.audit_login, dispatch_uid="edp-audit-login")
        user_login_failed.connect(audit.audit_login_failed, dispatch_uid="edp-audit-login-failed")
        user_logged_in.connect(middleware.time_zone_on_login, dispatch_uid="edp-staff-time-zone")
