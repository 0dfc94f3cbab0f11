from __future__ import annotations

from cryptography.fernet import Fernet
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Print a new Fernet key for FERNET_KEYS (put it first to encrypt with it)."

    requires_system_checks = []  # must work while FERNET_KEYS is still broken

    def handle(self, *args, **options) -> None:
        self.stdout.write(Fernet.generate_key().decode())
