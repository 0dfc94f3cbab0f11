"""The demo `make run` loads: one institution in every state staff will meet.

Every demo key is a public made-up value, derived from the institution's
slug, so the fake CD2 gateway can be told exactly which ones pass
(`demo_gateway_keys_write` puts them in VAR_DIR/fake-gateway-keys.txt, which
`python -m devtools.fake_gateway --keys-file` reads; see Procfile.dev). A
check of the demo then behaves as it would in production and leaves each
institution in the state promised here (DemoInstitution.key_state): a
passing key stays active, the failing one stays failing, the pending one
waits (its gateway answers 503).

Development only: every function here refuses with DEBUG off.
"""

from __future__ import annotations

import datetime as dt
import secrets
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from smtplib import SMTPRecipientsRefused

from django.conf import settings
from django.core.mail.backends.base import BaseEmailBackend
from django.db import transaction
from django.utils import timezone

from credentials.cd2 import CheckResult, Verdict
from credentials.days import institution_today
from credentials.mail.messages import SEND_ERRORS
from credentials.models import AuditEvent, CD2Credential, Notice
from credentials.services import outbox
from credentials.services.keys import credential_check_record, credential_create, credential_set_status
from credentials.services.reminders import reminder_step_claim
from credentials.validators import CleanKey
from devtools.demo import require_debug
from devtools.fake_gateway import (
    DEMO_ACCEPTED_CLIENT_ID,
    DEMO_ACCEPTED_SECRET,
    GATEWAY_DOWN_CLIENT_ID,
)
from institutions.models import Contact, Institution, KeyState

KEYS_FILE_NAME = "fake-gateway-keys.txt"

# How a demo key answers a check at the fake gateway.
PASSES = "passes"  # listed in the keys file: 200
REJECTED = "rejected"  # unknown to the gateway: 401, like a key deleted at identity.instructure.com
GATEWAY_DOWN = "gateway_down"  # the gateway answers 503: a pending key stays pending

SENT, FAILED = Notice.State.SENT, Notice.State.FAILED


@dataclass(frozen=True)
class DemoInstitution:
    slug: str
    name: str
    domain: str
    timezone: str
    key_state: str  # what staff see (selectors.KeyState), before and after a check of every key
    days: int | None = None  # the key expires this many days from today; None: no key
    check: str = PASSES
    # Reminder steps already handled: (threshold, state), sent on their day.
    reminders: tuple[tuple[int, str], ...] = field(default_factory=tuple)


DEMO_INSTITUTIONS: tuple[DemoInstitution, ...] = (
    DemoInstitution(
        "northfield-university",
        "Northfield University",
        "northfield.instructure.com",
        "America/Chicago",
        KeyState.OK,
        days=320,
    ),
    DemoInstitution(
        "lakeside-college",
        "Lakeside College",
        "canvas.lakeside.edu",
        "America/New_York",
        KeyState.EXPIRING,
        days=30,
        reminders=((60, SENT),),
    ),
    DemoInstitution(
        "harbour-city-schools",
        "Harbour City Schools",
        "harbourcity.instructure.com",
        "Australia/Sydney",
        KeyState.EXPIRING,
        days=7,
        reminders=((60, SENT), (30, SENT), (14, SENT), (7, FAILED)),
    ),
    DemoInstitution(
        "st-brendans-academy",
        "St Brendan's Academy",
        "stbrendans.instructure.com",
        "Europe/Dublin",
        KeyState.EXPIRED,
        days=-9,
        # The fake gateway does not know expiry dates: the expired key still
        # passes there, so a check keeps the demo's expired state to look at.
        reminders=((60, SENT), (30, SENT), (14, SENT), (7, SENT), (3, SENT), (1, SENT), (0, SENT), (-7, SENT)),
    ),
    DemoInstitution(
        "prairie-state-tech",
        "Prairie State Technical College",
        "pstc.instructure.com",
        "America/Denver",
        KeyState.MISSING,
    ),
    DemoInstitution(
        "maple-ridge-district",
        "Maple Ridge School District",
        "mapleridge.instructure.com",
        "America/Vancouver",
        KeyState.FAILING,
        days=200,
        check=REJECTED,
    ),
    DemoInstitution(
        "riverbend-community-college",
        "Riverbend Community College",
        "riverbend.instructure.com",
        "America/Los_Angeles",
        KeyState.PENDING,
        days=365,
        check=GATEWAY_DOWN,
    ),
)
DEMO_SLUGS = tuple(demo.slug for demo in DEMO_INSTITUTIONS)

_PASSED = CheckResult(
    verdict=Verdict.OK, status_code=200, error_type=None, message="demo", retry_after=None, table_count=20
)
_REJECTED = CheckResult(
    verdict=Verdict.REJECTED,
    status_code=401,
    error_type="AuthenticationError",
    message="The gateway refused the Client ID and Secret.",
    retry_after=None,
    table_count=None,
)
_UNAVAILABLE = CheckResult(
    verdict=Verdict.UNAVAILABLE,
    status_code=503,
    error_type="ServiceUnavailable",
    message="demo",
    retry_after=None,
    table_count=None,
)


def demo_key(demo: DemoInstitution) -> tuple[str, str]:
    """The institution's demo Client ID and Secret: public made-up values, the same on every machine."""
    if demo.slug == "northfield-university":
        # The key the README offers for the submission page: handing off
        # Northfield's key gives a key the fake gateway accepts.
        return DEMO_ACCEPTED_CLIENT_ID, DEMO_ACCEPTED_SECRET
    if demo.check == GATEWAY_DOWN:
        return GATEWAY_DOWN_CLIENT_ID, f"demo-secret-{demo.slug}"
    number = DEMO_SLUGS.index(demo.slug) + 1
    return f"us-east-1#d3000000-0000-4000-8000-{number:012d}", f"demo-secret-{demo.slug}"


def demo_gateway_keys() -> dict[str, str]:
    """{client_id: secret} of the demo keys that should pass a check."""
    return dict(demo_key(demo) for demo in DEMO_INSTITUTIONS if demo.days is not None and demo.check == PASSES)


def demo_keys_file() -> Path:
    return Path(settings.VAR_DIR) / KEYS_FILE_NAME


def demo_gateway_keys_write(path: Path | None = None) -> Path:
    """Write the passing demo keys, one CLIENT_ID:SECRET a line, for the fake gateway's --keys-file."""
    require_debug("demo_gateway_keys_write")
    path = path or demo_keys_file()
    lines = ["# Written by load_demo_data: the demo keys the fake CD2 gateway accepts (public demo values)."]
    lines += [f"{client_id}:{secret}" for client_id, secret in demo_gateway_keys().items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def demo_gateway_key_add(path: Path | None = None) -> tuple[str, str]:
    """A fresh key the fake gateway accepts and no institution holds: (Client ID, Secret).

    Added to the keys file, which the running gateway reads again when it
    changes; printed by `manage.py demo_key`. Fresh each time, so handing it in
    is a new key for any institution (the README's accepted key is on file for
    Northfield, so anywhere else it is refused as another institution's).
    """
    require_debug("demo_gateway_key_add")
    path = path or demo_keys_file()
    client_id = f"us-east-1#{uuid.uuid4()}"
    secret = f"demo-secret-{secrets.token_hex(8)}"
    with path.open("a", encoding="utf-8") as keys_file:
        keys_file.write(f"{client_id}:{secret}\n")
    return client_id, secret


def demo_reset() -> int:
    """Delete the demo institutions with their keys, links, reminders, contacts and audit events."""
    require_debug("demo_reset")
    institutions = Institution.objects.filter(slug__in=DEMO_SLUGS)
    with transaction.atomic():
        AuditEvent.objects.filter(institution__in=institutions).delete()
        CD2Credential.objects.filter(institution__in=institutions).delete()  # reminders cascade
        deleted = institutions.count()
        institutions.delete()  # contacts and links cascade
    return deleted


def demo_load(*, owner, now: dt.datetime | None = None) -> tuple[int, list[str]]:
    """Add the demo institutions that are not there yet.

    Returns (how many were added, slugs of existing demo institutions whose
    active key is not the demo key: loaded by an older version; `--reset`
    replaces them).
    """
    require_debug("demo_load")
    now = now or timezone.now()
    created, stale = 0, []
    with transaction.atomic():
        for demo in DEMO_INSTITUTIONS:
            institution, was_created = Institution.objects.get_or_create(
                slug=demo.slug,
                defaults={
                    "name": demo.name,
                    "canvas_domain": demo.domain,
                    "timezone": demo.timezone,
                    "status": Institution.Status.ACTIVE,
                    "account_owner": owner,
                },
            )
            if was_created:
                created += 1
                _add_contact_and_key(institution=institution, demo=demo, now=now)
            elif not _has_demo_key(institution=institution, demo=demo):
                stale.append(demo.slug)
    return created, stale


def _has_demo_key(*, institution: Institution, demo: DemoInstitution) -> bool:
    if demo.days is None or demo.check != PASSES:
        return True
    active = CD2Credential.objects.filter(institution=institution, status=CD2Credential.Status.ACTIVE).first()
    return active is None or active.client_id == demo_key(demo)[0]


def _add_contact_and_key(*, institution: Institution, demo: DemoInstitution, now: dt.datetime) -> None:
    Contact.objects.create(
        institution=institution,
        name="Canvas Admin",
        email=f"canvas-admin@{demo.slug}.example.edu",
        role=Contact.Role.CANVAS_ADMIN,
    )
    if demo.days is None:
        return
    today = institution_today(institution, now)  # "N days" as the institution's own calendar counts them
    client_id, secret = demo_key(demo)
    # validate_key_input would refuse a past date; the demo needs an expired key.
    key = CleanKey(client_id=client_id, secret=secret, expires_on=today + dt.timedelta(days=demo.days))
    if demo.check == GATEWAY_DOWN:
        # Handed in an hour ago while CD2 was down: stored, waiting for its re-check.
        credential_create(
            institution=institution,
            key=key,
            source=CD2Credential.Source.LINK,
            status=CD2Credential.Status.PENDING_VERIFICATION,
            check=_UNAVAILABLE,
            submitted_by="Canvas Admin",
            submitted_by_email=f"canvas-admin@{demo.slug}.example.edu",
            now=now - dt.timedelta(hours=1),
        )
        return
    # A one-year key, imported the day it was made and checked daily since.
    submitted = now - dt.timedelta(days=max(1, 365 - demo.days))
    credential = credential_create(
        institution=institution,
        key=key,
        source=CD2Credential.Source.IMPORT,
        status=CD2Credential.Status.ACTIVE,
        check=_PASSED,
        submitted_by="Demo data",
        now=submitted,
    )
    if demo.check == REJECTED:
        # As the daily check left it: the key was deleted at identity.instructure.com.
        checked = now - dt.timedelta(days=2)
        credential.save(update_fields=credential_check_record(credential=credential, check=_REJECTED, now=checked))
        credential_set_status(
            credential=credential, status=CD2Credential.Status.INVALID, reason=_REJECTED.message, now=checked
        )
    for threshold, state in demo.reminders:
        _remind(credential=credential, threshold=threshold, state=state)


class _DeliveredNowhere(BaseEmailBackend):
    """The demo's past mails: accepted, and sent nowhere (the contacts are made up)."""

    def send_messages(self, email_messages) -> int:
        return len(email_messages)


class _RefusedByTheServer(BaseEmailBackend):
    """The customer's mail server refusing the address, as a real one answers (550 user unknown)."""

    def send_messages(self, email_messages) -> int:
        raise SMTPRecipientsRefused({to: (550, b"5.1.1 User unknown") for m in email_messages for to in m.to})


def _remind(*, credential: CD2Credential, threshold: int, state: str) -> None:
    """One reminder step as production takes it: claimed on its day and delivered by the outbox.

    The claim, the notice, the link the mail carries (which ends the link
    before it) and the key summary's "reminded, no new key yet" are all the
    services' own writes. A failed step is refused by the server until the
    outbox gives up on it.
    """
    on_day = timezone.make_aware(dt.datetime.combine(credential.expires_on - dt.timedelta(days=threshold), dt.time(6)))
    notice = reminder_step_claim(credential=credential, threshold=threshold, now=on_day)
    if state == SENT:
        outbox.notice_send_now(notice_id=notice.pk, now=on_day, connection=_DeliveredNowhere())
    else:
        for attempt_at in (on_day, on_day + settings.NOTICE_GIVE_UP_AFTER):
            try:
                outbox.notice_send_now(notice_id=notice.pk, now=attempt_at, connection=_RefusedByTheServer())
            except SEND_ERRORS:
                pass  # recorded on the notice: waiting for its retry, then failed for good
    # The outbox writes the moment the server took the mail (now); the demo's mails went out on their day.
    # Only the notice's times move: no key, link or summary depends on them being later.
    delivered = Notice.objects.filter(pk=notice.pk)
    delivered.filter(sent_at__isnull=False).update(sent_at=on_day)
    delivered.filter(closed_at__isnull=False).update(closed_at=on_day + settings.NOTICE_GIVE_UP_AFTER)
