"""Find institutions whose stored key summary (Institution.key_*) disagrees with their keys; --fix rewrites them.

    python manage.py check_key_summary          # lists drift, exits 1 if any
    python manage.py check_key_summary --fix    # rewrites the drifted rows from the keys

The summary is written by the key services in the transaction that changes
a key; drift means a key was changed some other way (a raw UPDATE, a
restored backup, a new writer that forgot the refresh). The staff list sorts
and filters by the summary, so drifted rows sit in the wrong place there.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from credentials.services.keys import key_summaries_drifted, key_summaries_fix

# How many drifted ids the report names; the count is always complete.
SHOWN = 20


class Command(BaseCommand):
    help = "Compare each institution's stored key summary with its keys; --fix rewrites the rows that differ."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--fix", action="store_true", help="Rewrite the drifted summaries from the keys.")

    def handle(self, *args, fix: bool = False, **options) -> None:
        drifted = key_summaries_drifted()
        if not drifted:
            self.stdout.write("Key summaries: all in step with the keys.")
            return
        shown = ", ".join(str(pk) for pk in drifted[:SHOWN]) + (" ..." if len(drifted) > SHOWN else "")
        if not fix:
            raise CommandError(
                f"Key summaries: {len(drifted)} institution(s) out of step with their keys (ids {shown}). "
                "Run with --fix to rewrite them."
            )
        written = key_summaries_fix(institution_ids=drifted)
        self.stdout.write(f"Key summaries: rewrote {written} institution(s) (ids {shown}).")
