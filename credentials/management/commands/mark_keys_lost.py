"""FERNET_KEYS lost for good: wipe what no configured key reads, so web and worker start again (audited).

The runbook's procedure (docs/RUNBOOK.md, "When FERNET_KEYS is lost"):
first without --confirm, to see how many stored rows cannot be read; then
with --confirm and that number. Then `send_links_to_all` asks every served
institution for a new key.
"""

from __future__ import annotations

import getpass

from django.core.management.base import BaseCommand, CommandError

from credentials.services.lost_keys import LostKeysRefused, encryption_keys_lost_mark, unreadable_values
from credentials.services.staff import StaffActionRefused, clean_reason


class Command(BaseCommand):
    help = (
        "Mark every stored key that no FERNET_KEYS key can read as lost (its values wiped, audited), so the "
        "registry runs again; then ask for new keys with send_links_to_all. Without --confirm: only show the count."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--reason", required=True, help="why the keys are lost (audited), e.g. the incident")
        parser.add_argument(
            "--confirm",
            type=int,
            metavar="N",
            help="the number of unreadable rows a run without --confirm reported: wipes them",
        )

    def handle(self, *args, reason: str, confirm: int | None, **options) -> None:
        try:
            reason = clean_reason(reason, what="marking keys lost")
        except StaffActionRefused as exc:
            raise CommandError(str(exc)) from None
        if confirm is None:
            self._survey(reason)
            return
        try:
            report = encryption_keys_lost_mark(
                reason=reason, actor_label=f"manage.py mark_keys_lost (OS user {getpass.getuser()})", confirmed=confirm
            )
        except LostKeysRefused as exc:
            raise CommandError(str(exc)) from None
        found = report.unreadable
        keys = len(found.rows.get("credentials.CD2Credential", []))
        secrets = len(found.rows.get("api.ServiceAccount", []))
        self.stdout.write(
            f"Marked {keys} key(s) lost (Client ID and Secret wiped, audited): "
            f"{len(report.institutions)} institution(s) now have no key and show “Lost: ask for a new key”."
        )
        if secrets:
            self.stdout.write(
                f"Forgot {secrets} webhook signing secret(s): their webhooks wait until a superuser rotates "
                f"each secret (admin, Pipeline API) and gives it to the receiver's owner."
            )
        self.stdout.write(
            self.style.SUCCESS(
                "Web, worker and beat can start. Next, ask every institution for a new key: "
                'python manage.py send_links_to_all --reason "encryption key lost"'
            )
        )

    def _survey(self, reason: str) -> None:
        found = unreadable_values()
        if not found.total:
            self.stdout.write("Every stored value reads with FERNET_KEYS: nothing to mark lost.")
            return
        for label, scanned in found.scanned.items():
            self.stdout.write(f"{label}: {len(found.rows.get(label, []))} of {scanned} row(s) cannot be read")
        self.stdout.write(
            "If the key they were written with still exists anywhere (secret store history, a running process: "
            "docs/RUNBOOK.md), put it back in FERNET_KEYS instead: this cannot be undone.\n"
            f'To wipe them: python manage.py mark_keys_lost --reason "{reason}" --confirm {found.total}'
        )
