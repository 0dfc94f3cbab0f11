from __future__ import annotations

from django.apps import AppConfig
from django.core import checks


class StaffSsoConfig(AppConfig):
    name = "staffsso"
    verbose_name = "Staff sign-in with the identity provider"

    def ready(self) -> None:
        from credentials.models import Notice
        from credentials.outgoing import sender_register
        from staffsso import services

        sender_register(Notice.Kind.BREAK_GLASS, services.break_glass_notice_write)
        checks.register(check_sso_settings, checks.Tags.security)


def check_sso_settings(app_configs=None, **kwargs):
    """With OIDC_ISSUER set, the rest must be there and the group mapping must name our roles."""
    from django.core.exceptions import ImproperlyConfigured

    from staffsso.config import sso_config, sso_enabled

    if not sso_enabled():
        return []
    try:
        sso_config()
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), id="staffsso.E001")]
    return []
