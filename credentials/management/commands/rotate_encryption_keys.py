from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from credentials.fields import DecryptionError
from credentials.services.rotation import BATCH_SIZE, encryption_keys_rotate


class Command(BaseCommand):
    help = (
        "Re-encrypt every stored secret under the newest key in FERNET_KEYS, in batches. "
        "Safe to re-run; afterwards the older keys can be removed from FERNET_KEYS."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--batch-size", type=int, default=BATCH_SIZE, help=f"Rows per transaction (default {BATCH_SIZE})."
        )

    def handle(self, *args, batch_size: int, **options) -> None:
        # Every run, failed ones included, is audited by the service with its counts.
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")

        def progress(table, report):
            if options["verbosity"] >= 2:
                self.stdout.write(f"  {table}: {report.rotated} rotated, {report.unchanged} unchanged so far")

        try:
            report = encryption_keys_rotate(
                batch_size=batch_size, progress=progress, actor_label="manage.py rotate_encryption_keys"
            )
        except DecryptionError as exc:
            raise CommandError(str(exc)) from None
        for table, count in report.tables.items():
            self.stdout.write(f"{table}: {count} rows re-encrypted")
        self.stdout.write(
            self.style.SUCCESS(
                f"Done: {report.rotated} rows re-encrypted under the newest key, {report.unchanged} already were."
            )
        )
