"""Decide the expiry reminders now due and queue them for the workers: the same service as the daily beat task."""

from __future__ import annotations

import argparse
import datetime as dt

from django.core.management.base import BaseCommand, CommandError

from credentials.formatting import format_day
from credentials.services.reminders import reminders_report, reminders_send_due, reminders_wait


def _date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError as exc:
        raise CommandError(f"--today takes a date as YYYY-MM-DD, for example 2027-11-26; got {value!r}.") from exc


class Command(BaseCommand):
    help = (
        "Write every expiry reminder that has come due (each step exactly once) and the owners' daily "
        "summaries to the outbox and queue them for the Celery workers, as beat does. --wait waits for the "
        "workers and says what they did; --dry-run only lists them."
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
            "--wait",
            action="store_true",
            help="Wait until the workers have tried every notice this run queued, then say what was sent.",
        )
        parser.add_argument(
            "--wait-timeout",
            type=float,
            default=600.0,
            metavar="SECONDS",
            help="How long --wait waits for the workers (default 600); exit code 1 when they have not finished.",
        )
        # Queueing is what the command always does now; --queue is accepted for crontabs that still pass it.
        parser.add_argument("--queue", action="store_true", help=argparse.SUPPRESS)

    def handle(
        self,
        *args,
        dry_run: bool = False,
        today: str | None = None,
        wait: bool = False,
        wait_timeout: float = 600.0,
        **options,
    ) -> None:
        run = reminders_send_due(today=_date(today) if today else None, dry_run=dry_run)
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
            f"Reminders for {format_day(run.today)}: {run.due} due, {run.skipped} earlier step(s) skipped, "
            f"{run.superseded} superseded; {run.owner_summaries} owner summary(ies); "
            f"{run.queued} notice(s) queued for the workers."
        )
        if not wait:
            return
        finished = reminders_wait(run, timeout=wait_timeout)
        reminders_report(run)
        self.stdout.write(
            f"Delivered: {run.sent} reminder(s) sent, {run.failed} failed, {run.superseded} superseded; "
            f"{run.summaries_sent} owner summary(ies) sent."
        )
        if run.failed:
            self.stderr.write(
                "Failed sends wait in the outbox and are retried with backoff (admin: Notices); "
                "those that give up show on the dashboard and in the staff digest."
            )
        if not finished:
            raise CommandError(
                f"{run.waiting} notice(s) not tried by the workers within {wait_timeout:g} s: is a Celery worker "
                "running (celery -A edpotential worker)? They stay queued and are sent when one is."
            )
