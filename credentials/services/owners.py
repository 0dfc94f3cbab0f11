"""The account owner's daily summary: at most one mail a day about their institutions that need attention.

Instead of a copy of every reminder plus a heads-up per reminder, an owner
gets one mail on a day something happened to their institutions: reminders
gone out, keys whose check failed, notices that failed for good, keys whose
reminders ended; with every lapsed key of theirs listed. Written to the
outbox by the reminder run (one notice per owner and day of the owner's
zone, by its unique dedupe key) and rendered when delivered, so it says
what is true then.

Each summary covers a window: from the end of the owner's previous one to
its own decision (payload "since", as_of). When a new day's summary is
decided while an older one still waits for delivery (a mail server down
across midnight), the older one is superseded and its window carried into
the new one: one summary a day, and nothing the stale one had to say is lost.

Days: the summary's day and heading are the owner's (their staff setting,
else TIME_ZONE); each key's date and day count are its institution's
(credentials/days.py), the same as in the customer's mail.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass, field

from django.contrib.auth import get_user_model
from django.db.models import Max, Q
from django.utils import timezone

from credentials.days import (
    day_in,
    earliest_expiry_still_reminded,
    institution_key_days,
    institution_zone,
    reminders_end_on,
    zone_named,
)
from credentials.formatting import format_day
from credentials.mail.context import admin_url
from credentials.mail.messages import build_email
from credentials.models import FAILED_VERDICTS, CD2Credential, Notice, secret_fields_of
from credentials.outgoing import Send, Skip
from credentials.selectors import institutions_with_key_summary, staff_time_zone
from credentials.services import notices
from institutions.models import Institution, KeyState

# What an owner's first summary looks back over.
SUMMARY_WINDOW = dt.timedelta(hours=24)
# Notices that still count as "going out" (a superseded reminder does not).
_LIVE = (Notice.State.PENDING, Notice.State.SENDING, Notice.State.SENT)
_SERVED = Q(status__in=Institution.SERVED_STATUSES)


@dataclass
class OwnerSummary:
    reminders: list = field(default_factory=list)
    lapsed: list = field(default_factory=list)
    failing: list = field(default_factory=list)
    failed_notices: list = field(default_factory=list)
    # Lapsed keys whose reminders ended within this summary's window (said once).
    ended: list = field(default_factory=list)

    @property
    def institutions(self) -> int:
        names = {n.institution_id for n in self.reminders + self.failed_notices}
        names |= {row.pk for row in self.lapsed + self.failing + self.ended}
        return len(names)

    def __bool__(self) -> bool:
        return bool(self.reminders or self.failing or self.failed_notices or self.ended)


def owner_zone(user) -> zoneinfo.ZoneInfo:
    """The zone an owner reads their summary in: their staff setting, else TIME_ZONE."""
    return zone_named(staff_time_zone(user=user))


def _ended_between(row, *, since: dt.datetime, until: dt.datetime) -> bool:
    """The row's key's reminders ended (its institution's day passed reminders_end_on) within (since, until]."""
    if row.active_expires_on is None:
        return False
    end = reminders_end_on(row.active_expires_on)
    zone = institution_zone(row)
    return day_in(zone, since) <= end < day_in(zone, until)


def _ended_candidates(*, since: dt.datetime, until: dt.datetime):
    """Served institutions whose active key may have had its reminders end within (since, until]: a day wider."""
    latest = earliest_expiry_still_reminded(until.date() + dt.timedelta(days=1))
    earliest = earliest_expiry_still_reminded(since.date() - dt.timedelta(days=1))
    return Institution.objects.filter(
        _SERVED,
        key_expires_on__gte=earliest - dt.timedelta(days=1),
        key_expires_on__lt=latest,
    )


def _news_at(*, owner_ids, since: dt.datetime, now: dt.datetime) -> dict[int, dt.datetime]:
    """The latest moment of news per owner in (since, now]: reminders decided, notices failed, checks failed."""
    served = Q(institution__status__in=Institution.SERVED_STATUSES, institution__account_owner__in=owner_ids)
    owner = "institution__account_owner_id"
    sources = (
        Notice.objects.filter(served, kind=Notice.Kind.REMINDER, state__in=_LIVE, created_at__gt=since)
        .filter(created_at__lte=now)
        .values(owner)
        .annotate(at=Max("created_at")),
        Notice.objects.filter(served, state=Notice.State.FAILED, closed_at__gt=since, closed_at__lte=now)
        .exclude(kind=Notice.Kind.OWNER_SUMMARY)
        .values(owner)
        .annotate(at=Max("closed_at")),
        CD2Credential.objects.filter(
            served, last_verdict__in=FAILED_VERDICTS, last_verified_at__gt=since, last_verified_at__lte=now
        )
        .exclude(status=CD2Credential.Status.SUPERSEDED)
        .values(owner)
        .annotate(at=Max("last_verified_at")),
    )
    latest: dict[int, dt.datetime] = {}
    for source in sources:
        for row in source.order_by():
            latest[row[owner]] = max(latest.get(row[owner], row["at"]), row["at"])
    for row in _ended_candidates(since=since, until=now).filter(account_owner__in=owner_ids):
        row.active_expires_on = row.key_expires_on
        if _ended_between(row, since=since, until=now):
            latest[row.account_owner_id] = max(latest.get(row.account_owner_id, now), now)
    return latest


@dataclass(frozen=True)
class _Due:
    user: object
    day: dt.date
    since: dt.datetime
    waiting: tuple[int, ...]  # older summaries still waiting: superseded by this one


def _owners_due(*, now: dt.datetime, not_before: dt.time | None) -> list[_Due]:
    """Owners with news since their last summary whose day has no summary yet (and whose clock reached not_before)."""
    users = list(
        get_user_model()
        .objects.filter(is_active=True, owned_institutions__isnull=False)
        .exclude(email="")
        .distinct()
        .only("pk", "email")
    )
    if not users:
        return []
    # Per owner: the latest day with a summary, the end of the last closed one, and those still waiting.
    summaries = Notice.objects.filter(kind=Notice.Kind.OWNER_SUMMARY, user__in=users)
    last = {
        row["user"]: row
        for row in summaries.values("user")
        .annotate(day=Max("day"), closed=Max("as_of", filter=~Q(state=Notice.State.PENDING)))
        .order_by()
    }
    waiting: dict[int, list[Notice]] = {}
    for notice in summaries.filter(state=Notice.State.PENDING).only("pk", "user_id", "as_of", "payload"):
        waiting.setdefault(notice.user_id, []).append(notice)
    candidates = []
    for user in users:
        local = now.astimezone(owner_zone(user))
        if not_before is not None and local.time() < not_before:
            continue
        day = local.date()
        seen = last.get(user.pk, {})
        if seen.get("day") is not None and seen["day"] >= day:
            continue  # today's is written (or a later day's, by a run "as of" another day)
        theirs = waiting.get(user.pk, [])
        if theirs:
            since = min(_since_of(n) for n in theirs)
        elif seen.get("closed") is not None:
            since = seen["closed"]
        else:
            since = now - SUMMARY_WINDOW
        candidates.append(_Due(user=user, day=day, since=since, waiting=tuple(n.pk for n in theirs)))
    if not candidates:
        return []
    news = _news_at(owner_ids=[c.user.pk for c in candidates], since=min(c.since for c in candidates), now=now)
    return [c for c in candidates if c.waiting or news.get(c.user.pk, c.since) > c.since]


def _since_of(notice: Notice) -> dt.datetime:
    since = (notice.payload or {}).get("since")
    return dt.datetime.fromisoformat(since) if since else notice.as_of - SUMMARY_WINDOW


def owner_summaries_planned(*, now: dt.datetime, not_before: dt.time | None = None) -> set[str]:
    """Addresses of the owners who would get a summary now, besides those of the reminders planned (dry run)."""
    return {due.user.email.strip() for due in _owners_due(now=now, not_before=not_before)}


def owner_summaries_decide(*, now: dt.datetime, not_before: dt.time | None = None) -> list[int]:
    """Write one summary notice per owner with news, for the owner's day; returns the pending summaries' ids.

    Run twice, it writes nothing new (one notice per owner and day). An
    older summary still waiting is superseded and its window carried in.
    """
    due = _owners_due(now=now, not_before=not_before)
    Notice.objects.bulk_create(
        [
            notices.notice_build(
                kind=Notice.Kind.OWNER_SUMMARY,
                dedupe_key=f"owner-summary:{d.user.pk}:{d.day.isoformat()}",
                day=d.day,
                now=now,
                user_id=d.user.pk,
                recipients=d.user.email.strip(),
                payload={"since": d.since.isoformat()},
            )
            for d in due
        ],
        ignore_conflicts=True,
    )
    for d in due:
        for notice_id in d.waiting:
            notices.notice_supersede(
                notice_id=notice_id,
                reason=f"Not sent: carried into the summary of {format_day(d.day)} (one summary a day).",
                now=now,
            )
    return list(
        Notice.objects.filter(
            kind=Notice.Kind.OWNER_SUMMARY,
            state=Notice.State.PENDING,
            dedupe_key__in=[f"owner-summary:{d.user.pk}:{d.day.isoformat()}" for d in due],
        ).values_list("pk", flat=True)
    )


def owner_summary_build(*, user, day: dt.date, now: dt.datetime, since: dt.datetime | None = None) -> OwnerSummary:
    """What the owner's summary lists for the window (since, now]: their notices, then their institutions.

    Each query reads two of the summary's lists at once and they are split
    here, keeping the database's order (its collation sorts the names); a
    query per list was most of a summary's time (bench/RESULTS.md).
    """
    institutions = Institution.objects.filter(account_owner=user, status__in=Institution.SERVED_STATUSES)
    since = since or now - SUMMARY_WINDOW
    reminded = Q(kind=Notice.Kind.REMINDER, created_at__gt=since, created_at__lte=now, state__in=_LIVE)
    failed = Q(state=Notice.State.FAILED, closed_at__gt=since, closed_at__lte=now) & ~Q(kind=Notice.Kind.OWNER_SUMMARY)
    summary = OwnerSummary()
    for notice in (
        Notice.objects.filter(reminded | failed, institution__in=institutions)
        .select_related("institution", "credential", "reminder")
        .defer(*secret_fields_of("credential"))
        .order_by("institution__name", "created_at")
    ):
        is_reminder = notice.kind == Notice.Kind.REMINDER and notice.state in _LIVE
        (summary.reminders if is_reminder else summary.failed_notices).append(notice)
    # The stored key summary says which key lapsed or fails (no join to the keys but for the hint).
    rows = list(
        institutions_with_key_summary(queryset=institutions, now=now)
        .filter(Q(days_left__lt=0) | Q(key_state=KeyState.FAILING))
        .order_by("name")
    )
    lapsed = [row for row in rows if row.days_left is not None and row.days_left < 0]
    # sorted() is stable: the newest lapse first, then by name as the database sorted them.
    lapsed = sorted(lapsed, key=lambda row: row.active_expires_on, reverse=True)
    summary.ended = [row for row in lapsed if _ended_between(row, since=since, until=now)]
    summary.lapsed = [row for row in lapsed if row not in summary.ended]
    summary.failing = [row for row in rows if row.key_state == KeyState.FAILING]
    return summary


def _reminder_what(notice: Notice, *, now: dt.datetime) -> str:
    """A reminder as its customer read it: the day count at its sending, in the institution's zone."""
    credential = notice.credential
    at = notice.sent_at or now
    days = institution_key_days(notice.institution, expires_on=credential.expires_on, now=at)
    return f"reminded: key {credential.hint} {days.phrase} ({format_day(credential.expires_on)})"


def owner_summary_write(*, notice: Notice, now: dt.datetime) -> Send | Skip:
    """The outbox's sender of an owner's daily summary: the mail, or why not to send it."""
    user = notice.user
    address = (user.email or "").strip() if user is not None and user.is_active else ""
    if not address:
        return Skip(state=Notice.State.CANCELLED, reason="Not sent: the owner is deactivated or has no email address.")
    # The window ends at the decision: what came after it is the next summary's.
    until = min(now, notice.as_of)
    summary = owner_summary_build(user=user, day=notice.day, now=until, since=_since_of(notice))
    if not summary:
        return Skip(
            state=Notice.State.SUPERSEDED,
            reason="Not sent: nothing needs attention any more (the reminders were superseded).",
        )
    context = {
        "owner": user,
        "day": notice.day,
        "summary": summary,
        "count": summary.institutions,
    }

    def lapsed_what(row) -> str:
        days = institution_key_days(row, expires_on=row.active_expires_on, now=until)
        return f"key {row.active_hint} lapsed on {format_day(row.active_expires_on)} ({days.phrase})"

    rows = [
        {"name": n.institution.name, "what": _reminder_what(n, now=until), "url": admin_url(n.institution)}
        for n in summary.reminders
    ]
    rows += [
        {
            "name": r.name,
            "what": f"{lapsed_what(r)}; reminders ended on {format_day(reminders_end_on(r.active_expires_on))}: "
            f"no more reminders go to its contacts, over to you",
            "url": admin_url(r),
        }
        for r in summary.ended
    ]
    rows += [{"name": r.name, "what": lapsed_what(r), "url": admin_url(r)} for r in summary.lapsed]
    rows += [{"name": r.name, "what": "CD2 refused the key at its check", "url": admin_url(r)} for r in summary.failing]
    rows += [
        {
            "name": n.institution.name,
            "what": f"our {n.get_kind_display().lower()} could not be delivered ({n.error_in_words()[:80]})",
            "url": admin_url(n.institution),
        }
        for n in summary.failed_notices
    ]
    context["rows"] = rows
    with timezone.override(owner_zone(user)):  # any time of day in the owner's zone
        message = build_email("owner-summary", to=[address], context=context)
    return Send(message=message, recipients=[address])
