"""Send the expiry reminders now due: the same service as the daily beat task."""

from __future__ import annotations

import datetime as dt

from django.core.management.base import BaseCommand, CommandError

from credentials.services.reminders import reminders_send_due


def _date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError as exc:
        raise CommandError(f"--today takes a date as YYYY-MM-DD, for example 2027-11-26; got {value!r}.") from exc


class Command(BaseCommand):
    help = "Send every expiry reminder that has come due (each step exactly once). --dry-run only lists them."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="List who would get which reminder; send nothing.")
        parser.add_argument(
            "--today",
            help="Run as if today were this date (YYYY-MM-DD), at the current time of day: "
            "link expiry, wording and the .ics are dated from it.",
        )

    def handle(self, *args, dry_run: bool = False, today: str | None = None, **options) -> None:
        run = reminders_send_due(today=_date(today) if today else None, dry_run=dry_run)
        if dry_run:
            for item in run.planned:
                step = f"{item.threshold} days before" if item.threshold >= 0 else f"{-item.threshold} days after"
                to = ", ".join(item.recipients) or "NOBODY (add a contact)"
                self.stdout.write(f"{item.institution}: key {item.hint}, reminder {step} expiry -> {to}")
            self.stdout.write(f"Dry run for {run.today:%d %B %Y}: {run.due} reminder(s) due, nothing sent.")
            return
        self.stdout.write(
            f"Reminders for {run.today:%d %B %Y}: {run.due} due, {run.sent} sent, "
            f"{run.skipped} earlier step(s) skipped, {run.failed} failed."
        )
        if run.failed:
            self.stderr.write("Failed reminders show in the admin with their error; the staff digest lists them.")
