"""Development only: print the current one-time code of a user's authenticator device.

`make run`'s demo login needs a code at the admin login; this saves
installing an authenticator app on a laptop. It refuses to run with DEBUG
off, so it cannot become a way around the second factor in production.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from devtools.demo import totp_current_code


class Command(BaseCommand):
    help = "Development only (DEBUG on): print a user's current six-digit admin login code."

    def add_arguments(self, parser) -> None:
        parser.add_argument("username", nargs="?", default="demo")

    def handle(self, *args, username: str, **options) -> None:
        if not settings.DEBUG:
            raise CommandError("totp_code only runs in development (DEBUG on). Use your authenticator app.")
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user {username!r}.")
        code = totp_current_code(user=user)
        if code is None:
            raise CommandError(f"{username} has no confirmed authenticator device. Run load_demo_data.")
        self.stdout.write(code)
