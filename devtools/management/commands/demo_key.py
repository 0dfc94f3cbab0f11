"""Development only: print a fresh key the fake CD2 gateway accepts, for an institution's submission page.

The README's accepted demo key is Northfield's own, so handed in anywhere
else it is refused as another institution's key. This one is new: the
fake gateway (`make run`'s "cd2" process) reads it from the keys file within
a second, and no institution holds it yet.
"""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from devtools.demo_data import demo_gateway_key_add
from institutions.models import Institution


class Command(BaseCommand):
    help = "Development only (DEBUG on): print a new Client ID and Secret the fake CD2 gateway accepts."

    def add_arguments(self, parser) -> None:
        parser.add_argument("slug", help="the institution whose submission page you will hand the key in on")

    def handle(self, *args, slug: str, **options) -> None:
        if not settings.DEBUG:
            raise CommandError("demo_key only runs in development (DEBUG on): it feeds the fake CD2 gateway.")
        institution = Institution.objects.filter(slug=slug).first()
        if institution is None:
            raise CommandError(f"No institution {slug!r}. The demo's: python manage.py load_demo_data")
        client_id, secret = demo_gateway_key_add()
        self.stdout.write(f"Client ID: {client_id}\nSecret:    {secret}")
        self.stderr.write(
            f"The fake gateway accepts this key from now on; hand it in on {institution.name}'s submission page:\n"
            f"  python manage.py create_submission_link {institution.slug}"
        )
