"""Demo data for `make run`: a handful of institutions in every expiry state.

Re-running keeps what is there: institutions that exist are left alone.
The demo keys are made-up values that no real gateway accepts.
"""

from __future__ import annotations

import datetime as dt
import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone

from credentials.cd2 import Verdict
from credentials.models import CD2Credential
from credentials.services.keys import credential_create
from credentials.validators import CleanKey
from devtools.demo import demo_two_factor_enrol
from devtools.fake_gateway import DEMO_ACCEPTED_CLIENT_ID, DEMO_ACCEPTED_SECRET
from institutions.models import Contact, Institution

DEMO_USERNAME = "demo"
DEMO_WORKING_KEY_SLUG = "northfield-university"

# (slug, name, domain, timezone, days until expiry or None for no key, status of that key)
DEMO_INSTITUTIONS = [
    ("northfield-university", "Northfield University", "northfield.instructure.com", "America/Chicago", 320, "active"),
    ("lakeside-college", "Lakeside College", "canvas.lakeside.edu", "America/New_York", 14, "active"),
    ("harbour-city-schools", "Harbour City Schools", "harbourcity.instructure.com", "Australia/Sydney", 5, "active"),
    ("st-brendans-academy", "St Brendan's Academy", "stbrendans.instructure.com", "Europe/Dublin", -9, "active"),
    ("prairie-state-tech", "Prairie State Technical College", "pstc.instructure.com", "America/Denver", None, None),
    (
        "maple-ridge-district",
        "Maple Ridge School District",
        "mapleridge.instructure.com",
        "America/Vancouver",
        200,
        "invalid",
    ),
]


class Command(BaseCommand):
    help = "Load demo institutions, contacts and keys (idempotent), and a demo staff login."

    def handle(self, *args, **options) -> None:
        if not settings.DEBUG:
            # Demo users and keys (one of them public) have no place in production.
            raise CommandError("load_demo_data only runs in development (DEBUG on); nothing was created.")
        owner = self._demo_staff()
        today = timezone.localdate()
        created = 0
        with transaction.atomic():
            for slug, name, domain, tz, days, key_status in DEMO_INSTITUTIONS:
                institution, was_created = Institution.objects.get_or_create(
                    slug=slug,
                    defaults={
                        "name": name,
                        "canvas_domain": domain,
                        "timezone": tz,
                        "status": Institution.Status.ACTIVE,
                        "account_owner": owner,
                    },
                )
                if not was_created:
                    continue
                created += 1
                Contact.objects.create(
                    institution=institution,
                    name="Canvas Admin",
                    email=f"canvas-admin@{slug}.example.edu",
                    role=Contact.Role.CANVAS_ADMIN,
                )
                if days is None:
                    continue
                # Northfield holds the key the fake CD2 gateway (make run) accepts,
                # so `cd2_credentials northfield-university` hands off a working key.
                if slug == DEMO_WORKING_KEY_SLUG:
                    client_id, secret = DEMO_ACCEPTED_CLIENT_ID, DEMO_ACCEPTED_SECRET
                else:
                    client_id = f"us-east-1#{secrets.token_hex(4)}-demo-{secrets.token_hex(2)}"
                    secret = secrets.token_urlsafe(24)
                key = CleanKey(
                    client_id=client_id,
                    secret=secret,
                    # validate_key_input would refuse a past date; demo data
                    # needs an expired key to show that state.
                    expires_on=today + dt.timedelta(days=days),
                )
                credential = credential_create(
                    institution=institution,
                    key=key,
                    source=CD2Credential.Source.IMPORT,
                    status=CD2Credential.Status.ACTIVE,
                    submitted_by="Demo data",
                )
                if key_status == "invalid":
                    credential.status = CD2Credential.Status.INVALID
                    credential.last_verdict = Verdict.REJECTED.value
                    credential.last_verification = "rejected (401 AuthenticationError)"
                    credential.save(update_fields=["status", "last_verdict", "last_verification"])
        self.stdout.write(
            f"Demo data: {created} institution(s) added, {len(DEMO_INSTITUTIONS) - created} already there."
        )

    def _demo_staff(self):
        User = get_user_model()
        user = User.objects.filter(username=DEMO_USERNAME).first()
        if user:
            self.stdout.write(
                f"Demo login: {DEMO_USERNAME} (password printed when it was created; "
                f"reset it with: python manage.py changepassword {DEMO_USERNAME})"
            )
        else:
            password = secrets.token_urlsafe(12)
            user = User.objects.create_superuser(username=DEMO_USERNAME, email="demo@localhost", password=password)
            self.stdout.write(self.style.WARNING(f"Demo login created: username {DEMO_USERNAME}  password {password}"))
            self.stdout.write("(Shown once. Reset it with: python manage.py changepassword demo)")
        self._demo_two_factor(user)
        return user

    def _demo_two_factor(self, user) -> None:
        # The admin asks for a one-time code too. In development the demo
        # login gets an authenticator device whose current code a
        # DEBUG-only command prints.
        device = demo_two_factor_enrol(user=user)
        self.stdout.write(f"Two-factor code for the admin login: python manage.py totp_code {DEMO_USERNAME}")
        self.stdout.write(f"(or add this to an authenticator app: {device.config_url})")
