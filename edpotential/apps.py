from __future__ import annotations

from django.apps import AppConfig
from django.contrib.auth.signals import user_logged_in


class SecurityConfig(AppConfig):
    """Project-wide protections (security.py): the session's 12-hour cap starts here; deploy checks (checks.py)."""

    name = "edpotential"
    label = "edpotential_security"
    verbose_name = "Security"

    def ready(self) -> None:
        from edpotential import checks, security  # noqa: F401  (checks: registers the deploy checks)

        user_logged_in.connect(security.session_mark_start, dispatch_uid="edp-session-start")
