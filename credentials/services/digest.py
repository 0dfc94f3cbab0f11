"""The weekly staff digest: who is late, what is failing, what is missing, what could not be delivered.

Beat writes the week's digest to the outbox (staff_digest_decide, one notice
per day and reader zone by its dedupe key); delivery renders it then
(staff_digest_write). A section past its row limit says how many more and
links to the admin list filtered to exactly those rows; nothing is dropped
silently.

Days: each reader gets the digest in their own zone (a staff member's
setting, matched by address; else TIME_ZONE): the week's date and the
times. Each key's date and day count are its institution's
(credentials/days.py), the same as in the customer's mail and the admin list.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

from django.conf import settings
from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils import timezone

from credentials.days import day_in, expiry_days_between, zone_named
from credentials.mail.messages import build_email
from credentials.models import Notice, StaffSettings
from credentials.outgoing import Send, Skip
from credentials.selectors import institutions_with_key_status, institutions_without_working_key
from credentials.services import health, jobs, notices, outbox
from institutions.models import Institution, KeyState, email_key

logger = logging.getLogger(__name__)

# Rows listed per section: the digest stays readable; the admin has the rest.
SECTION_LIMIT = 100
EXPIRING_WITHIN_DAYS = 30


@dataclass
class Section:
    title: str
    rows: list = field(default_factory=list)
    total: int = 0
    # The admin list showing every row of the section (for "... and N more").
    more_url: str = ""

    @property
    def more(self) -> int:
        return self.total - len(self.rows)


@dataclass
class StaffDigest:
    today: dt.date
    recipients: list[str]
    sections: dict[str, Section]
    zone: str = ""
    # Served institutions whose pipeline cannot pull now: the dashboard's count, by the same selector.
    no_working_key: int = 0


def _section(title: str, queryset, *, more: str = "") -> Section:
    rows = list(queryset[:SECTION_LIMIT])
    total = len(rows) if len(rows) < SECTION_LIMIT else queryset.count()
    return Section(title=title, rows=rows, total=total, more_url=settings.SITE_URL + more if more else "")


def _admin_list(model: str, query: str) -> str:
    return f"{reverse(f'admin:{model}_changelist')}?{query}"


def digest_recipients() -> list[str]:
    if settings.STAFF_DIGEST_RECIPIENTS:
        return list(settings.STAFF_DIGEST_RECIPIENTS)
    users = get_user_model().objects.filter(is_staff=True, is_active=True).exclude(email="")
    return sorted({user.email for user in users})


def digest_readers() -> dict[str, list[str]]:
    """The digest's recipients by the zone each reads in: their staff setting (found by address), else TIME_ZONE."""
    zones = {
        email_key(address): zone
        for address, zone in StaffSettings.objects.filter(user__is_active=True)
        .exclude(time_zone="")
        .values_list("user__email", "time_zone")
    }
    readers: dict[str, list[str]] = {}
    for address in digest_recipients():
        readers.setdefault(zones.get(email_key(address), settings.TIME_ZONE), []).append(address)
    return readers


def staff_digest_build(*, now: dt.datetime | None = None, zone: str | None = None) -> StaffDigest:
    """The digest at `now` for readers in `zone` (default TIME_ZONE): their date, each key's own day count."""
    now = now or timezone.now()
    zone = zone or settings.TIME_ZONE
    served = Institution.objects.filter(status__in=Institution.SERVED_STATUSES)
    institutions = institutions_with_key_status(queryset=served, now=now).select_related("account_owner")
    sections = {
        "expiring": _section(
            f"Keys expiring in the next {EXPIRING_WITHIN_DAYS} days",
            institutions.filter(
                expiry_days_between("key_expires_on", now, at_least=0, at_most=EXPIRING_WITHIN_DAYS)
            ).order_by("key_expires_on", "name"),
            more=_admin_list("institutions_institution", "expiry=30&served=1"),
        ),
        # Newest lapses first: those are the ones staff can still rescue.
        "expired": _section(
            "Expired keys (no new key yet), newest first",
            institutions.filter(expiry_days_between("key_expires_on", now, at_most=-1)).order_by(
                "-key_expires_on", "name"
            ),
            more=_admin_list("institutions_institution", "expiry=expired&served=1"),
        ),
        "failing": _section(
            "Keys that failed their check",
            institutions.filter(key_state=KeyState.FAILING).order_by("name"),
            more=_admin_list("institutions_institution", "check=failing&served=1"),
        ),
        "missing": _section(
            "No key on file, or one awaiting its check",
            institutions.filter(key_state__in=(KeyState.MISSING, KeyState.PENDING, KeyState.LOST)).order_by("name"),
            more=_admin_list("institutions_institution", "expiry=none&served=1"),
        ),
        "failed_notices": _section(
            "Notices that could not be delivered (resend from the admin)",
            Notice.objects.filter(state=Notice.State.FAILED)
            .exclude(kind=Notice.Kind.STAFF_DIGEST)
            .select_related("institution", "user")
            .order_by("-closed_at", "-pk"),
            more=_admin_list("credentials_notice", "state__exact=failed"),
        ),
    }
    return StaffDigest(
        today=day_in(zone, now),
        recipients=digest_readers().get(zone, []),
        sections=sections,
        zone=zone,
        no_working_key=institutions_without_working_key(now=now).count(),
    )


def staff_digest_decide(*, today: dt.date | None = None, now: dt.datetime | None = None) -> list[int]:
    """Write this day's digest to the outbox, one per reader zone; the ids of those still to send.

    `today` names the day for every zone (a run "as of" a day); by default
    each zone's own date at `now`. With nobody to tell, one digest is
    written all the same: its sender says why it was not sent.
    """
    now = now or timezone.now()
    zones = sorted(digest_readers()) or [settings.TIME_ZONE]
    written = []
    for zone in zones:
        day = today or day_in(zone, now)
        written.append(
            notices.notice_build(
                kind=Notice.Kind.STAFF_DIGEST,
                dedupe_key=f"staff-digest:{day.isoformat()}:{zone}",
                day=day,
                now=now,
                payload={"zone": zone},
            )
        )
    Notice.objects.bulk_create(written, ignore_conflicts=True)
    # SQLite and PostgreSQL return no id for a row that conflicted: read them back.
    return list(
        Notice.objects.filter(
            dedupe_key__in=[notice.dedupe_key for notice in written], state=Notice.State.PENDING
        ).values_list("pk", flat=True)
    )


def staff_digest_write(*, notice: Notice, now: dt.datetime) -> Send | Skip:
    """The outbox's sender of the digest: to STAFF_DIGEST_RECIPIENTS (or every staff user with an email)."""
    digest = staff_digest_build(now=now, zone=(notice.payload or {}).get("zone") or settings.TIME_ZONE)
    digest.today = notice.day
    if not digest.recipients:
        reason = "Not sent: set STAFF_DIGEST_RECIPIENTS or give a staff user an email address."
        logger.warning("Staff digest not sent: %s", reason)
        return Skip(state=Notice.State.CANCELLED, reason=reason)
    attention = sum(section.total for section in digest.sections.values())
    # Times in the mail (a notice that gave up ...) in the readers' zone.
    with timezone.override(zone_named(digest.zone)):
        message = build_email(
            "staff-digest",
            to=digest.recipients,
            context={
                "today": digest.today,
                "sections": list(digest.sections.values()),
                **digest.sections,
                "attention": attention,
                "no_working_key": digest.no_working_key,
                "admin_url": settings.SITE_URL + "/admin/",
            },
        )
    logger.info("Staff digest for %s recipients (%s items)", len(digest.recipients), attention)
    return Send(message=message, recipients=digest.recipients)


def staff_digest_send(*, today: dt.date | None = None, queue: bool = False) -> list[int]:
    """The weekly digest: write it to the outbox and deliver it (queue=True: through a task). Its notices' ids."""
    with health.job_run(health.JOB_DIGEST) as counts:
        notice_ids = staff_digest_decide(today=today)
        counts["written"] = len(notice_ids)
        for notice_id in notice_ids:
            if queue:
                jobs.job_enqueue_on_commit(jobs.DELIVER_NOTICE, args=(notice_id,), robust=True)
            else:
                outbox.notice_deliver(notice_id=notice_id)
    return notice_ids
