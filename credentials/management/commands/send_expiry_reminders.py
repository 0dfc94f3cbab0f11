"""Send the expiry reminders now due: the same service as the daily beat task, delivered in this process."""

from __future__ import annotations

import datetime as dt

from django.core.management.base import BaseCommand, CommandError

from credentials.formatting import format_day
from credentials.services.outbox import reminders_send_due


def _date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError as exc:
        raise CommandError(f"--today takes a date as YYYY-MM-DD, for example 2027-11-26; got {value!r}.") from exc


class Command(BaseCommand):
    help = (
        "Write every expiry reminder that has come due (each step exactly once) and the owners' daily "
        "summaries to the outbox, then deliver what the outbox holds. --dry-run only lists them."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--dry-run", action="store_true", help="List what the outbox would hold: who gets what; send nothing."
        )
        parser.add_argument(
            "--today",
            help="Run as if today were this date (YYYY-MM-DD), at the current time of day: "
            "link expiry, wording and the .ics are dated from it.",
        )
        parser.add_argument(
            "--queue", action="store_true", help="Queue the deliveries for the Celery worker instead (as beat does)."
        )

    def handle(self, *args, dry_run: bool = False, today: str | None = None, queue: bool = False, **options) -> None:
        run = reminders_send_due(today=_date(today) if today else None, dry_run=dry_run, queue=queue)
        if dry_run:
            owners: dict[str, int] = {}
            for item in run.planned:
                step = f"{item.threshold} days before" if item.threshold >= 0 else f"{-item.threshold} days after"
                to = ", ".join(item.recipients) or "NOBODY (add a contact)"
                self.stdout.write(f"{item.institution}: key {item.hint}, reminder {step} expiry -> {to}")
                if item.owner:
                    owners[item.owner] = owners.get(item.owner, 0) + 1
            for owner, count in sorted(owners.items()):
                self.stdout.write(f"Owner's summary -> {owner}: {count} institution(s) reminded")
            self.stdout.write(
                f"Dry run for {format_day(run.today)}: {run.due} reminder(s) due, "
                f"{run.owner_summaries} owner summary(ies), nothing sent."
            )
            return
        self.stdout.write(
            f"Reminders for {format_day(run.today)}: {run.due} due, {run.sent} sent, "
            f"{run.skipped} earlier step(s) skipped, {run.superseded} superseded, {run.failed} failed"
            f"{f', {run.queued} queued' if queue else ''}; {run.owner_summaries} owner summary(ies)."
        )
        if run.delivery_processes:
            self.stdout.write(
                f"Delivered by {run.delivery_processes} process(es) × {run.delivery_threads} sender thread(s)."
            )
        if run.failed:
            self.stderr.write(
                "Failed sends wait in the outbox and are retried with backoff (admin: Notices); "
                "those that give up show on the dashboard and in the staff digest."
            )
