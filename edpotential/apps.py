from __future__ import annotations

from django.apps import AppConfig


class SecurityConfig(AppConfig):
    """Project-wide protections (edpotential/security.py): admin two-factor, sign-in audit."""

    name = "edpotential"
    label = "edpotential_security"
    verbose_name = "Security"

    def ready(self) -> None:
        from django.contrib import admin
        from django.contrib.auth.signals import user_logged_in, user_login_failed

        from edpotential import security

        security.admin_require_two_factor(admin.site)
        security.totp_admin_show_seed_only_while_enrolling(admin.site)
        user_logged_in.connect(security.audit_login, dispatch_uid="edp-audit-login")
        user_login_failed.connect(security.audit_login_failed, dispatch_uid="edp-audit-login-failed")
