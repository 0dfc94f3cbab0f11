"""Check active keys against CD2 now: the same service as the daily beat task."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from credentials.services.verification import credentials_verify_active
from institutions.models import Institution


class Command(BaseCommand):
    help = "Check every active key of served institutions against Canvas Data 2 now and record the results."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--institution", metavar="SLUG", help="Check only this institution's key.")

    def handle(self, *args, institution: str | None = None, **options) -> None:
        if institution and not Institution.objects.filter(slug=institution).exists():
            raise CommandError(f"No institution has the slug {institution!r}. The slug is shown in the admin.")
        run = credentials_verify_active(institution_slug=institution, run_now=True)
        for name, hint, summary in run.results:
            self.stdout.write(f"{name}: key {hint}: {summary}")
        self.stdout.write(
            f"Checked {run.checked} key(s): {run.ok} ok, {run.invalid} invalid, "
            f"{run.unavailable} not checked (CD2 unavailable; tried again next run)."
        )
