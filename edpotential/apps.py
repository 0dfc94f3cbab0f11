from __future__ import annotations

from django.apps import AppConfig
from django.contrib.auth.signals import user_logged_in


class SecurityConfig(AppConfig):
    """Project-wide protections (edpotential/security.py): the session's start for its 12-hour cap."""

    name = "edpotential"
    label = "edpotential_security"
    verbose_name = "Security"

    def ready(self) -> None:
        from edpotential import security

        user_logged_in.connect(security.session_mark_start, dispatch_uid="edp-session-start")
