from __future__ import annotations

from django.apps import AppConfig


class CredentialsConfig(AppConfig):
    name = "credentials"
    verbose_name = "Canvas Data 2 keys"

    def ready(self) -> None:
        from credentials import checks  # noqa: F401  (registers the system checks)
