"""The account owner's daily summary: at most one mail a day about their institutions that need attention.

Instead of a copy of every reminder plus a heads-up per reminder, an owner
gets one mail on a day something happened to their institutions: reminders
going out that day, keys whose check failed, notices that failed for good;
with every lapsed key of theirs listed. Written to the outbox by the daily
reminder run (one notice per owner and day, by its unique dedupe key) and
rendered when delivered, so it says what is true then.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from django.contrib.auth import get_user_model
from django.db.models import Q

from credentials.formatting import format_day
from credentials.mail.context import admin_url, expiry_phrase
from credentials.mail.messages import build_email
from credentials.models import FAILED_VERDICTS, CD2Credential, Notice, secret_fields_of
from credentials.outgoing import Send, Skip
from credentials.selectors import institutions_with_key_summary
from credentials.services import notices
from institutions.models import Institution, KeyState

# What an owner's summary looks back over: the day since the last one.
SUMMARY_WINDOW = dt.timedelta(hours=24)
# Notices that still count as "going out" (a superseded reminder does not).
_LIVE = (Notice.State.PENDING, Notice.State.SENDING, Notice.State.SENT)


@dataclass
class OwnerSummary:
    reminders: list = field(default_factory=list)
    lapsed: list = field(default_factory=list)
    failing: list = field(default_factory=list)
    failed_notices: list = field(default_factory=list)

    @property
    def institutions(self) -> int:
        names = {n.institution_id for n in self.reminders + self.failed_notices}
        names |= {row.pk for row in self.lapsed + self.failing}
        return len(names)

    def __bool__(self) -> bool:
        return bool(self.reminders or self.failing or self.failed_notices)


def _owner_ids_with_news(*, day: dt.date, since: dt.datetime) -> set[int]:
    served = Q(institution__status__in=Institution.SERVED_STATUSES, institution__account_owner__isnull=False)
    reminded = Notice.objects.filter(served, kind=Notice.Kind.REMINDER, day=day, state__in=_LIVE)
    failed = Notice.objects.filter(served, state=Notice.State.FAILED, closed_at__gte=since).exclude(
        kind=Notice.Kind.OWNER_SUMMARY
    )
    failing = CD2Credential.objects.filter(
        served, last_verdict__in=FAILED_VERDICTS, last_verified_at__gte=since
    ).exclude(status=CD2Credential.Status.SUPERSEDED)
    ids: set[int] = set()
    for queryset in (reminded, failed, failing):
        ids.update(queryset.values_list("institution__account_owner_id", flat=True).distinct())
    return ids


def _owners_with_news(*, day: dt.date, now: dt.datetime) -> list:
    return list(
        get_user_model()
        .objects.filter(pk__in=_owner_ids_with_news(day=day, since=now - SUMMARY_WINDOW), is_active=True)
        .exclude(email="")
        .only("pk", "email")
    )


def owner_summaries_planned(*, day: dt.date, now: dt.datetime) -> set[str]:
    """Addresses of the owners who would get a summary now, besides those of the reminders planned (dry run)."""
    return {user.email.strip() for user in _owners_with_news(day=day, now=now)}


def owner_summaries_decide(*, day: dt.date, now: dt.datetime) -> list[int]:
    """Write one summary notice for `day` per owner with news; returns the pending summaries' ids.

    Run twice, it writes nothing new (one notice per owner and day).
    """
    users = _owners_with_news(day=day, now=now)
    Notice.objects.bulk_create(
        [
            notices.notice_build(
                kind=Notice.Kind.OWNER_SUMMARY,
                dedupe_key=f"owner-summary:{user.pk}:{day.isoformat()}",
                day=day,
                now=now,
                user_id=user.pk,
                recipients=user.email.strip(),
            )
            for user in users
        ],
        ignore_conflicts=True,
    )
    return list(
        Notice.objects.filter(
            kind=Notice.Kind.OWNER_SUMMARY, day=day, state=Notice.State.PENDING, user__in=users
        ).values_list("pk", flat=True)
    )


def owner_summary_build(*, user, day: dt.date, now: dt.datetime) -> OwnerSummary:
    """What the owner's summary lists, in two queries: their notices, then their institutions.

    Each query reads two of the summary's lists at once and they are split
    here, keeping the database's order (its collation sorts the names); a
    query per list was most of a summary's time (bench/RESULTS.md).
    """
    institutions = Institution.objects.filter(account_owner=user, status__in=Institution.SERVED_STATUSES)
    since = now - SUMMARY_WINDOW
    reminded = Q(kind=Notice.Kind.REMINDER, day=day, state__in=_LIVE)
    failed = Q(state=Notice.State.FAILED, closed_at__gte=since) & ~Q(kind=Notice.Kind.OWNER_SUMMARY)
    summary = OwnerSummary()
    for notice in (
        Notice.objects.filter(reminded | failed, institution__in=institutions)
        .select_related("institution", "credential", "reminder")
        .defer(*secret_fields_of("credential"))
        .order_by("institution__name")
    ):
        is_reminder = notice.kind == Notice.Kind.REMINDER and notice.day == day and notice.state in _LIVE
        (summary.reminders if is_reminder else summary.failed_notices).append(notice)
    # The stored key summary says which key lapsed or fails (no join to the keys but for the hint).
    rows = list(
        institutions_with_key_summary(queryset=institutions, today=day)
        .filter(Q(key_expires_on__lt=day) | Q(key_state=KeyState.FAILING))
        .order_by("name")
    )
    lapsed = [row for row in rows if row.active_expires_on is not None and row.active_expires_on < day]
    # sorted() is stable: the newest lapse first, then by name as the database sorted them.
    summary.lapsed = sorted(lapsed, key=lambda row: row.active_expires_on, reverse=True)
    summary.failing = [row for row in rows if row.key_state == KeyState.FAILING]
    return summary


def owner_summary_write(*, notice: Notice, now: dt.datetime) -> Send | Skip:
    """The outbox's sender of an owner's daily summary: the mail, or why not to send it."""
    user = notice.user
    address = (user.email or "").strip() if user is not None and user.is_active else ""
    if not address:
        return Skip(state=Notice.State.CANCELLED, reason="Not sent: the owner is deactivated or has no email address.")
    summary = owner_summary_build(user=user, day=notice.day, now=now)
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

    rows = [
        {
            "name": n.institution.name,
            "what": f"reminded: key {n.credential.hint} {expiry_phrase((n.credential.expires_on - notice.day).days)}",
            "url": admin_url(n.institution),
        }
        for n in summary.reminders
    ]
    rows += [
        {
            "name": r.name,
            "what": f"key {r.active_hint} lapsed on {format_day(r.active_expires_on)}",
            "url": admin_url(r),
        }
        for r in summary.lapsed
    ]
    rows += [{"name": r.name, "what": "CD2 refused the key at its check", "url": admin_url(r)} for r in summary.failing]
    rows += [
        {
            "name": n.institution.name,
            "what": f"our {n.get_kind_display().lower()} could not be delivered ({n.last_error[:80]})",
            "url": admin_url(n.institution),
        }
        for n in summary.failed_notices
    ]
    context["rows"] = rows
    return Send(message=build_email("owner-summary", to=[address], context=context), recipients=[address])
