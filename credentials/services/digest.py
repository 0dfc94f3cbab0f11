"""The weekly staff digest: who is late, what is failing, what is missing."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

from django.conf import settings
from django.contrib.auth import get_user_model
from django.utils import timezone

from credentials.emails import send_email
from credentials.models import CD2Credential, ReminderLog, secret_fields_of
from credentials.selectors import KeyState, institutions_with_key_status
from institutions.models import Institution

logger = logging.getLogger(__name__)

# Rows listed per section: the digest stays readable; the admin has the rest.
SECTION_LIMIT = 100
EXPIRING_WITHIN_DAYS = 30


@dataclass
class Section:
    title: str
    rows: list = field(default_factory=list)
    total: int = 0

    @property
    def more(self) -> int:
        return self.total - len(self.rows)


@dataclass
class StaffDigest:
    today: dt.date
    recipients: list[str]
    sections: dict[str, Section]
    sent: bool = False


def _section(title: str, queryset) -> Section:
    rows = list(queryset[:SECTION_LIMIT])
    total = len(rows) if len(rows) < SECTION_LIMIT else queryset.count()
    return Section(title=title, rows=rows, total=total)


def digest_recipients() -> list[str]:
    if settings.STAFF_DIGEST_RECIPIENTS:
        return list(settings.STAFF_DIGEST_RECIPIENTS)
    users = get_user_model().objects.filter(is_staff=True, is_active=True).exclude(email="")
    return sorted({user.email for user in users})


def staff_digest_build(*, today: dt.date | None = None) -> StaffDigest:
    today = today or timezone.localdate()
    served = Institution.objects.filter(status__in=Institution.SERVED_STATUSES)
    institutions = institutions_with_key_status(queryset=served, today=today).select_related("account_owner")
    sections = {
        "expiring": _section(
            f"Keys expiring in the next {EXPIRING_WITHIN_DAYS} days",
            institutions.filter(
                active_expires_on__gte=today, active_expires_on__lte=today + dt.timedelta(days=EXPIRING_WITHIN_DAYS)
            ).order_by("active_expires_on", "name"),
        ),
        "expired": _section(
            "Expired keys (no new key yet)",
            institutions.filter(active_expires_on__lt=today).order_by("active_expires_on", "name"),
        ),
        "failing": _section(
            "Keys that failed their check", institutions.filter(key_state=KeyState.FAILING).order_by("name")
        ),
        "missing": _section(
            "Institutions with no working key",
            institutions.filter(key_state__in=(KeyState.MISSING, KeyState.PENDING)).order_by("name"),
        ),
        "failed_reminders": _section(
            "Reminders that could not be sent",
            ReminderLog.objects.filter(
                state=ReminderLog.State.FAILED,
                credential__status=CD2Credential.Status.ACTIVE,
                credential__institution__status__in=Institution.SERVED_STATUSES,
            )
            .select_related("credential__institution")
            .defer(*secret_fields_of("credential"))
            .order_by("-failed_at"),
        ),
    }
    return StaffDigest(today=today, recipients=digest_recipients(), sections=sections)


def staff_digest_send(*, today: dt.date | None = None) -> StaffDigest:
    """Build the digest and mail it to STAFF_DIGEST_RECIPIENTS (or every staff user with an email)."""
    digest = staff_digest_build(today=today)
    if not digest.recipients:
        logger.warning("Staff digest not sent: set STAFF_DIGEST_RECIPIENTS or give a staff user an email address")
        return digest
    attention = sum(section.total for section in digest.sections.values())
    send_email(
        "staff-digest",
        to=digest.recipients,
        context={
            "today": digest.today,
            "sections": list(digest.sections.values()),
            "expiring": digest.sections["expiring"],
            "expired": digest.sections["expired"],
            "failing": digest.sections["failing"],
            "missing": digest.sections["missing"],
            "failed_reminders": digest.sections["failed_reminders"],
            "attention": attention,
            "admin_url": settings.SITE_URL + "/admin/",
        },
    )
    digest.sent = True
    logger.info("Staff digest sent to %s recipients (%s items)", len(digest.recipients), attention)
    return digest
