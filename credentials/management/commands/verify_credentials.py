"""Check active keys against CD2 now: the same service as the daily beat task."""

from __future__ import annotations

import getpass
import socket

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from credentials.services.staff import CHECK_PERMISSION
from credentials.services.verification import credentials_verify_active
from institutions.models import Institution


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        return "unknown"


class Command(BaseCommand):
    help = (
        "Check every active key of served institutions against Canvas Data 2 now and record the results. "
        "A person passes --as with their staff username: each check is audited as theirs."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--institution", metavar="SLUG", help="Check only this institution's key.")
        parser.add_argument(
            "--as",
            dest="as_username",
            metavar="USERNAME",
            help="Your staff username (an active user allowed to check keys): the audit names you. "
            "Without it the checks are audited as this command run by the OS user (as a cron job's are).",
        )

    def handle(self, *args, institution: str | None = None, as_username: str | None = None, **options) -> None:
        actor = None
        if as_username is not None:
            user_model = get_user_model()
            actor = user_model._default_manager.filter(**{user_model.USERNAME_FIELD: as_username}).first()
            # One answer for unknown, inactive and unauthorised, as cd2_credentials --as gives.
            if actor is None or not actor.is_active or not actor.has_perm(CHECK_PERMISSION):
                raise CommandError(
                    f"{as_username!r} is not an active staff user allowed to check keys. Pass --as with your own "
                    "username; Customer success and Data engineer have the permission."
                )
        if institution and not Institution.objects.filter(slug=institution).exists():
            raise CommandError(f"No institution has the slug {institution!r}. The slug is shown in the admin.")
        label = f"{_os_user()}@{socket.gethostname()} via manage.py verify_credentials"
        run = credentials_verify_active(institution_slug=institution, run_now=True, actor=actor, actor_label=label)
        for name, hint, summary in run.results:
            self.stdout.write(f"{name}: key {hint}: {summary}")
        self.stdout.write(
            f"Checked {run.checked} key(s): {run.ok} ok, {run.invalid} invalid, "
            f"{run.unavailable} not checked (CD2 unavailable; tried again next run)."
        )
