"""The staff digest by hand: the same service as beat's Monday job."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from credentials.formatting import format_day
from credentials.models import Notice
from credentials.services.digest import staff_digest_build, staff_digest_send


class Command(BaseCommand):
    help = (
        "Write today's staff digest to the outbox and send it now, as beat's weekly job does (one per reader "
        "time zone, once a day: a second run the same day sends nothing). --dry-run prints what it would say."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="Print the digest's sections; send nothing.")

    def handle(self, *args, dry_run: bool = False, **options) -> None:
        if dry_run:
            digest = staff_digest_build()
            self.stdout.write(f"Staff digest for {format_day(digest.today)} (dry run, nothing sent):")
            for section in digest.sections.values():
                self.stdout.write(f"  {section.title}: {section.total}")
            to = ", ".join(digest.recipients) or "NOBODY (set STAFF_DIGEST_RECIPIENTS or give staff an email)"
            self.stdout.write(f"To: {to}")
            return
        notice_ids = staff_digest_send()
        if not notice_ids:
            self.stdout.write("Today's staff digest was already written: nothing sent (admin: Notices).")
            return
        for notice in Notice.objects.filter(pk__in=notice_ids).order_by("pk"):
            outcome = notice.get_state_display().lower()
            self.stdout.write(f"Staff digest for {format_day(notice.day)}: {outcome} to {notice.recipients or '-'}")
            if notice.last_error:
                self.stderr.write(f"  {notice.last_error}")
