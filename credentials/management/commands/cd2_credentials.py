"""Hand an institution's CD2 key to the data pipeline, audited.

    eval "$(python manage.py cd2_credentials northfield --as ada --reason 'nightly load' --format env)"
    python manage.py cd2_credentials northfield --as ada --reason 'nightly load' --format json > /run/secrets/cd2.json

The env format sets DAP_CLIENT_ID and DAP_CLIENT_SECRET, the variables the
official instructure-dap-client reads; values are shell-quoted so `eval` and
`set -a; source FILE` both work. --as names the staff member handing the key
out (an active user with the hand-off permission, a Data engineer) and
--reason why; both are required. Every run that prints a key writes one
AuditEvent (kind handoff) naming that staff member and the OS user; every
refused run writes one too (kind handoff_refused).
"""

from __future__ import annotations

import getpass
import json
import shlex
import socket

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from credentials.days import institution_today
from credentials.formatting import format_day
from credentials.services.staff import StaffActionRefused, credential_handoff


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        return "unknown"


class Command(BaseCommand):
    help = "Print an institution's CD2 key for the data pipeline (env or JSON); every run is audited."

    def add_arguments(self, parser) -> None:
        parser.add_argument("institution_slug", help="The institution's slug, as shown in the admin.")
        parser.add_argument("--format", choices=("env", "json"), default="env", dest="output_format")
        parser.add_argument(
            "--allow-expired",
            action="store_true",
            help="Hand out the key even if it is expired, revoked or invalid (for backfills).",
        )
        parser.add_argument(
            "--as",
            required=True,
            dest="as_username",
            metavar="USERNAME",
            help="Your staff username: an active user allowed to hand off keys (a Data engineer).",
        )
        parser.add_argument("--reason", required=True, help="Why the key is handed out; kept in the audit log.")

    def handle(
        self,
        *args,
        institution_slug: str,
        output_format: str,
        allow_expired: bool,
        as_username: str,
        reason: str,
        **options,
    ):
        label = f"{_os_user()}@{socket.gethostname()} via manage.py cd2_credentials"
        try:
            key = credential_handoff(
                institution_slug=institution_slug,
                actor_username=as_username,
                actor_label=label,
                allow_expired=allow_expired,
                reason=reason,
                output_format=output_format,
            )
        except StaffActionRefused as exc:
            raise CommandError(str(exc)) from None
        credential = key.credential
        if output_format == "json":
            payload = {
                "client_id": key.client_id,
                "client_secret": key.secret,
                "expires_on": credential.expires_on.isoformat(),
                "region": credential.region,
            }
            self.stdout.write(json.dumps(payload))
        else:
            self.stdout.write(f"DAP_CLIENT_ID={shlex.quote(key.client_id)}")
            self.stdout.write(f"DAP_CLIENT_SECRET={shlex.quote(key.secret)}")
        if not credential.is_usable(institution_today(credential.institution, timezone.now())):
            # stderr, so a pipeline that captures stdout still gets clean output.
            if credential.status != credential.Status.ACTIVE:
                problem = f"is {credential.get_status_display().lower()}"
            else:
                problem = f"expired on {format_day(credential.expires_on)}"
            self.stderr.write(f"Warning: this key {problem}; handed out only because of --allow-expired.")
