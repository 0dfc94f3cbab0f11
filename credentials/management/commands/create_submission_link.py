"""Make a submission link for an institution; print it, and with --email mail it to the contacts."""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from credentials.formatting import format_moment
from credentials.services import outbox
from credentials.services.links import submission_link_create, submission_link_send
from institutions.models import Institution


class Command(BaseCommand):
    help = (
        "Make a single-use submission link for an institution and print its URL (from SITE_URL). "
        "With --email, also mail it to the institution's contacts who receive reminders."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("slug", help="the institution's slug, e.g. northfield-university")
        parser.add_argument(
            "--days", type=int, default=None, help="days the link stays valid (default SUBMISSION_LINK_DAYS)"
        )
        parser.add_argument("--email", action="store_true", help="mail the link to the institution's contacts")

    def handle(self, *args, slug: str, days: int | None, email: bool, **options) -> None:
        institution = Institution.objects.filter(slug=slug).first()
        if institution is None:
            known = ", ".join(Institution.objects.order_by("slug").values_list("slug", flat=True)[:20])
            raise CommandError(f"No institution has the slug {slug!r}. Known slugs: {known or 'none yet'}.")
        if not institution.is_served():
            self.stderr.write(
                self.style.WARNING(f"Note: {institution.name} is {institution.get_status_display().lower()}.")
            )
        try:
            if email:
                notice = submission_link_send(institution=institution, days=days, reason="command")
            else:
                new_link = submission_link_create(institution=institution, days=days, reason="command")
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        if email:
            # The link is made when the mail goes out (services/links.py), so there is no URL to print:
            # printed here it would be a second copy of a key to the institution's page.
            sent = outbox.notice_deliver(notice_id=notice.pk)
            notice.refresh_from_db()
            if sent:
                self.stdout.write(f"Link for {institution.name} mailed to {notice.recipients}, single use.")
            else:
                self.stderr.write(
                    f"Not mailed yet ({notice.get_state_display().lower()}: {notice.last_error}); "
                    f"the outbox retries it (notice {notice.pk})."
                )
            return
        self.stdout.write(new_link.url)
        expires = format_moment(new_link.link.expires_at, settings.TIME_ZONE, with_zone=True)
        self.stderr.write(f"Link for {institution.name}, valid until {expires}, single use.")
