"""Staff alerts: what needs a human today, in the team's chat and in the mail of who asked for it.

Events (models.StaffAlert): a served institution's key lapsed with no new
key (the daily reminder run looks), a key failed its check (the verdict's
own transaction), a notice gave up (the outbox's signal notice_failed, in
the transaction that records it), a scheduled job is overdue (the outbox
sweep looks, every few minutes), a key was refused as on file for another
institution (the refusal's transaction).

Each event is written as outbox notices where it is decided: one per chat
channel (Notice.Kind.STAFF_ALERT, every URL of STAFF_ALERT_URLS) and one per
staff member who chose it on "My settings" (STAFF_ALERT_MAIL). The dedupe
key names the event ("alert:key_check_failed:<key id>:chat:<channel>"), so
an event decided twice is said once. Delivery is the outbox's, durable and
retried like any notice; these kinds are grouped (outgoing.Sender.group_key):
a notice waits STAFF_ALERT_GROUP_SECONDS for others to join, and the
notices of one audience that are due by then go as one message ("12 keys
failed their check: ..."), all sent or all retried together.

What a message holds: institution names, a key's hint (region and the
Client ID's last 4 characters, safe to show), a check's summary, a job's
name, our own words for why a notice gave up, and a link to the admin
page. Never a Secret, a Client ID, a token, a chat URL or a customer's
address (the error of a failed send is named by its type only).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict

from django.conf import settings
from django.db.models import QuerySet
from django.urls import reverse
from django.utils import timezone

from credentials.chat import ChatMessage, channel_label, chat_channels
from credentials.formatting import format_day, format_moment
from credentials.mail.messages import build_email, render_email
from credentials.models import CD2Credential, Notice, StaffAlert, StaffSettings
from credentials.outgoing import Send, Skip
from credentials.services import health, notices
from institutions.models import Institution, KeyState

logger = logging.getLogger(__name__)

# A message lists this many events of a kind, then "... and N more" with a link to the list.
ITEMS_PER_GROUP = 20
# The daily run looks this far back for lapsed keys: a run missed for days still reports each once.
LAPSED_LOOKBACK_DAYS = 7

# How a group of events is headed: (one, many).
HEADINGS = {
    StaffAlert.KEY_LAPSED: ("1 key lapsed with no new key", "{n} keys lapsed with no new key"),
    StaffAlert.KEY_CHECK_FAILED: ("1 key failed its check", "{n} keys failed their check"),
    StaffAlert.NOTICE_GAVE_UP: ("1 notice gave up", "{n} notices gave up"),
    StaffAlert.JOB_OVERDUE: ("1 scheduled job is overdue", "{n} scheduled jobs are overdue"),
    StaffAlert.KEY_CONFLICT: (
        "1 key refused: on file for another institution",
        "{n} keys refused: on file for another institution",
    ),
}


def heading(event: str, n: int) -> str:
    one, many = HEADINGS[StaffAlert(event)]
    return one if n == 1 else many.format(n=n)


# --------------------------------------------------------------------------
# Deciding: the notices of one event
# --------------------------------------------------------------------------


def alert_mail_user_ids(*, event: str) -> list[int]:
    """Active staff with an address who chose this event on "My settings" (a few rows: staff only)."""
    rows = (
        StaffSettings.objects.filter(user__is_active=True, user__is_staff=True)
        .exclude(user__email="")
        .values_list("user_id", "alert_events")
    )
    return sorted(user_id for user_id, events in rows if event in (events or ()))


def staff_alert_record(
    *,
    event: str,
    key: str,
    subject: str,
    detail: str,
    path: str,
    now: dt.datetime | None = None,
    institution_id: int | None = None,
    credential_id: int | None = None,
) -> int:
    """Write the notices of one event (call in the transaction that decides it); how many were new.

    `key` tells this event apart from others of its kind (a key's id, a
    job's name and last run); `subject` and `detail` are its line in the
    message, `path` its admin page.
    """
    now = now or timezone.now()
    event = StaffAlert(event).value
    payload = {"event": event, "subject": subject[:200], "detail": detail[:300], "path": path}
    delay = dt.timedelta(seconds=settings.STAFF_ALERT_GROUP_SECONDS)
    common = {"now": now, "institution_id": institution_id, "credential_id": credential_id, "delay": delay}
    written = 0
    for channel in chat_channels():
        written += (
            notices.notice_write(
                kind=Notice.Kind.STAFF_ALERT,
                dedupe_key=f"alert:{event}:{key}:chat:{channel}",
                payload={**payload, "channel": channel},
                **common,
            )
            is not None
        )
    for user_id in alert_mail_user_ids(event=event):
        written += (
            notices.notice_write(
                kind=Notice.Kind.STAFF_ALERT_MAIL,
                dedupe_key=f"alert:{event}:{key}:user:{user_id}",
                user_id=user_id,
                payload=payload,
                **common,
            )
            is not None
        )
    return written


def _institution_path(institution_id: int) -> str:
    return reverse("admin:institutions_institution_change", args=[institution_id])


def key_check_failed_record(*, credential: CD2Credential, summary: str, now: dt.datetime) -> int:
    """A key's check said it does not work (401/403): the daily check, a staff check, a pending key's re-check."""
    return staff_alert_record(
        event=StaffAlert.KEY_CHECK_FAILED,
        key=str(credential.pk),
        subject=credential.institution.name,
        detail=f"key {credential.hint}: {summary}",
        path=_institution_path(credential.institution_id),
        now=now,
        institution_id=credential.institution_id,
        credential_id=credential.pk,
    )


def key_conflict_record(*, on_file: CD2Credential, institution: Institution, now: dt.datetime) -> int:
    """A key handed over for `institution` was refused: it is on file for another one."""
    return staff_alert_record(
        event=StaffAlert.KEY_CONFLICT,
        key=f"{on_file.pk}:{institution.pk}",
        subject=institution.name,
        detail=f"key {on_file.hint} is on file for {on_file.institution.name}",
        path=_institution_path(institution.pk),
        now=now,
        institution_id=institution.pk,
        credential_id=on_file.pk,
    )


def notice_failed_record(sender=None, *, notice: Notice, reason: str, now: dt.datetime, **kwargs) -> int:
    """The outbox's notice_failed listener: a notice gave up. Never about a staff alert (it would alert itself)."""
    if notice.kind in (Notice.Kind.STAFF_ALERT, Notice.Kind.STAFF_ALERT_MAIL):
        return 0
    institution = notice.institution.name if notice.institution_id else ""
    what = f"{notice.get_kind_display()} of {format_day(notice.day)}"
    return staff_alert_record(
        event=StaffAlert.NOTICE_GAVE_UP,
        key=str(notice.pk),
        subject=f"{institution}: {what}" if institution else what,
        detail=f"after {notice.attempts} attempt{'' if notice.attempts == 1 else 's'}: {reason}",
        path=reverse("admin:credentials_notice_change", args=[notice.pk]),
        now=now,
        institution_id=notice.institution_id,
    )


def staff_alerts_jobs_overdue(*, now: dt.datetime | None = None) -> int:
    """Record an alert for each overdue scheduled job, once per overdue spell (the outbox sweep calls this)."""
    now = now or timezone.now()
    written = 0
    for status in health.jobs_status(now=now):
        if not status.overdue:
            continue
        last = status.last
        written += staff_alert_record(
            event=StaffAlert.JOB_OVERDUE,
            key=f"{status.name}:{int(last.finished_at.timestamp()) if last else 'never'}",
            subject=status.name,
            detail=(
                f"last ran to the end {format_moment(last.finished_at, 'UTC', with_zone=True)}"
                if last
                else "has never run"
            ),
            path=reverse("admin:index"),
            now=now,
        )
    return written


def lapsed_keys(*, today: dt.date) -> QuerySet:
    """Served institutions whose active key's last day was in the LAPSED_LOOKBACK_DAYS before today.

    From the key summary: ok there means no newer key is waiting (a key
    handed over since makes it pending or replaces the active one).
    """
    return Institution.objects.filter(
        status__in=Institution.SERVED_STATUSES,
        key_condition=KeyState.OK,
        key_expires_on__lt=today,
        key_expires_on__gte=today - dt.timedelta(days=LAPSED_LOOKBACK_DAYS),
    )


def staff_alerts_keys_lapsed(*, now: dt.datetime | None = None) -> int:
    """Record an alert for each key that lapsed with no new key (the daily reminder task calls this)."""
    now = now or timezone.now()
    rows = list(lapsed_keys(today=timezone.localdate(now)).values("pk", "name", "key_pk", "key_expires_on"))
    hints = dict(CD2Credential.objects.filter(pk__in=[row["key_pk"] for row in rows]).values_list("pk", "hint"))
    written = 0
    for row in rows:
        written += staff_alert_record(
            event=StaffAlert.KEY_LAPSED,
            key=str(row["key_pk"]),
            subject=row["name"],
            detail=f"key {hints.get(row['key_pk'], '')} expired on {format_day(row['key_expires_on'])}",
            path=_institution_path(row["pk"]),
            now=now,
            institution_id=row["pk"],
            credential_id=row["key_pk"],
        )
    return written


# --------------------------------------------------------------------------
# Delivering: the outbox's grouped senders
# --------------------------------------------------------------------------


def alert_context(group: list[Notice]) -> dict:
    """What a grouped message says: a heading per kind of event, its lines (with links), and how many more."""
    by_event: dict[str, list[dict]] = defaultdict(list)
    for notice in group:
        by_event[notice.payload["event"]].append(notice.payload)
    groups = []
    for event in StaffAlert.values:
        items = by_event.get(event)
        if not items:
            continue
        lines = [
            {"subject": item["subject"], "detail": item["detail"], "url": settings.SITE_URL + item["path"]}
            for item in items[:ITEMS_PER_GROUP]
        ]
        groups.append({"heading": heading(event, len(items)), "items": lines, "more": len(items) - len(lines)})
    if len(groups) == 1:
        subject = groups[0]["heading"]
    else:
        subject = f"{len(group)} alerts: " + "; ".join(g["heading"] for g in groups)
    return {"subject": subject, "groups": groups, "dashboard_url": settings.SITE_URL + reverse("admin:index")}


def alert_group_window() -> dt.timedelta:
    return dt.timedelta(seconds=settings.STAFF_ALERT_GROUP_SECONDS)


def chat_group(notice: Notice) -> dict:
    return {"payload__channel": notice.payload.get("channel", "")}


def mail_group(notice: Notice) -> dict:
    return {"user_id": notice.user_id}


def staff_alert_chat_write(*, notices: list[Notice], now: dt.datetime) -> Send | Skip:
    """The outbox's sender of a chat channel's alerts: one message for the group."""
    url = chat_channels().get(notices[0].payload.get("channel", ""))
    if url is None:
        return Skip(state=Notice.State.CANCELLED, reason="Not sent: the chat channel is no longer in STAFF_ALERT_URLS.")
    title, text, _ = render_email("staff-alert", alert_context(notices))
    return Send(message=ChatMessage(url=url, title=title, body=text), recipients=[channel_label(url)])


def staff_alert_mail_write(*, notices: list[Notice], now: dt.datetime) -> Send | Skip:
    """The outbox's sender of one staff member's alert mail: one mail for the group."""
    user = notices[0].user
    if user is None or not user.is_active or not user.email:
        return Skip(state=Notice.State.CANCELLED, reason="Not sent: the staff member is inactive or has no address.")
    message = build_email("staff-alert", to=[user.email], context=alert_context(notices))
    return Send(message=message, recipients=[user.email])
