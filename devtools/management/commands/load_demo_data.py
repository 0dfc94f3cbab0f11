"""Demo data for `make run`: an institution in every state staff will meet (devtools.demo_data).

Re-running keeps what is there: institutions that exist are left alone.
--reset deletes the demo institutions (with their keys, links, reminders and
audit events) and loads them afresh. Either way the passing demo keys are
written to VAR_DIR/fake-gateway-keys.txt for the fake CD2 gateway (Procfile.dev).
"""

from __future__ import annotations

import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from devtools.demo import demo_two_factor_enrol
from devtools.demo_data import DEMO_INSTITUTIONS, demo_gateway_keys_write, demo_load, demo_reset

DEMO_USERNAME = "demo"


class Command(BaseCommand):
    help = (
        "Load demo institutions, contacts and keys (idempotent), a demo staff login, and the fake CD2 "
        "gateway's keys file. --reset starts the demo institutions afresh."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--reset",
            action="store_true",
            help="Delete the demo institutions (keys, links, reminders, audit events) and load them again.",
        )

    def handle(self, *args, reset: bool = False, **options) -> None:
        if not settings.DEBUG:
            # Demo users and keys (public values) have no place in production.
            raise CommandError("load_demo_data only runs in development (DEBUG on); nothing was changed.")
        owner = self._demo_staff()
        if reset:
            self.stdout.write(f"Demo reset: {demo_reset()} demo institution(s) deleted.")
        created, stale = demo_load(owner=owner)
        self.stdout.write(
            f"Demo data: {created} institution(s) added, {len(DEMO_INSTITUTIONS) - created} already there."
        )
        if stale:
            self.stdout.write(
                self.style.WARNING(
                    f"{', '.join(stale)}: the active key is not the demo key, so the fake CD2 gateway rejects it. "
                    "Start the demo afresh with: python manage.py load_demo_data --reset"
                )
            )
        path = demo_gateway_keys_write()
        self.stdout.write(f"Keys the fake CD2 gateway accepts: {path}")

    def _demo_staff(self):
        User = get_user_model()
        user = User.objects.filter(username=DEMO_USERNAME).first()
        if user:
            self.stdout.write(
                f"Demo login: {DEMO_USERNAME} (password printed when it was created; "
                f"reset it with: python manage.py changepassword {DEMO_USERNAME})"
            )
        else:
            password = secrets.token_urlsafe(12)
            user = User.objects.create_superuser(username=DEMO_USERNAME, email="demo@localhost", password=password)
            self.stdout.write(self.style.WARNING(f"Demo login created: username {DEMO_USERNAME}  password {password}"))
            self.stdout.write("(Shown once. Reset it with: python manage.py changepassword demo)")
        self._demo_two_factor(user)
        return user

    def _demo_two_factor(self, user) -> None:
        # The admin asks for a one-time code too. In development the demo
        # login gets an authenticator device whose current code a
        # DEBUG-only command prints.
        device = demo_two_factor_enrol(user=user)
        self.stdout.write(f"Two-factor code for the admin login: python manage.py totp_code {DEMO_USERNAME}")
        self.stdout.write(f"(or add this to an authenticator app: {device.config_url})")
