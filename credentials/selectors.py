"""Reads that more than one door uses: key status, due reminders, pending keys, the current key.

Lists, the reminder scan, the dashboard and the digest all call these, so
"expiring", "failing" and "due" mean the same thing everywhere, and no list
loops over rows in Python.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.conf import settings
from django.db import connection, models
from django.db.models import Case, Exists, F, FilteredRelation, Min, OuterRef, Q, Subquery, Value, When
from django.db.models.functions import Coalesce, TruncDate
from django.db.models.lookups import Exact
from django.utils import timezone

from credentials.days import (
    days_left_sql,
    earliest_expiry_still_reminded,
    expiry_days_between,
    institution_zone,
    largest_step_allowed,
    reminders_end_on,
    reminders_ended_sql,
)
from credentials.expressions import DaysBetween, DaysUntil, ExpiryState, expiry_state_case
from credentials.formatting import format_day
from credentials.models import (
    FAILED_VERDICTS,
    AuditEvent,
    CD2Credential,
    Notice,
    PendingReason,
    ReminderLog,
    StaffSettings,
    secret_fields_of,
    step_label,
)
from institutions.models import NO_WORKING_KEY_STATES, STORED_KEY_STATES, Institution, KeyState, email_key

__all__ = ["ExpiryState", "KeyState"]

# A pending key not checked for this long lost its re-check (broker down when
# it was queued) or ran out of retries: the sweep queues another. Longer than
# the longest backoff step, so a running retry chain is rarely doubled.
PENDING_SWEEP_AFTER = dt.timedelta(hours=7)
# A key Instructure answered "not enabled" (403) for is checked again about
# daily (the hourly sweep, a little under a day so it does not drift an hour
# later each day) for PENDING_NOT_ENABLED_FOR; after that staff decide.
PENDING_NOT_ENABLED_EVERY = dt.timedelta(hours=23)
PENDING_NOT_ENABLED_FOR = dt.timedelta(days=30)


def local_today() -> dt.date:
    return timezone.localdate()


# --------------------------------------------------------------------------
# Institutions and their key
# --------------------------------------------------------------------------


def key_summary_expected(*, fields: tuple[str, ...] | None = None) -> dict:
    """The institution's key summary (Institution.key_*) as it should be, as expressions over OuterRef("pk").

    The one rule for the stored summary: the key services write it with
    these (keys.institution_key_summary_refresh) and the drift check
    compares with them. key_condition is pending when the newest key that
    is not history awaits its check (a new key is on its way, whatever the
    old active key says); else failing when the active key's last check said
    it does not work; else active; without an active key, failing when the
    newest key was found invalid, lost when the registry lost the means to
    read it (mark_keys_lost), else missing. `fields`: only these columns.
    """
    reminded = Exists(_reminded_without_answer(institution=OuterRef("pk")))
    if fields == ("key_reminded_unanswered",):
        # A sent reminder's refresh (one per reminder): the other expressions cost more to build than the UPDATE.
        return {"key_reminded_unanswered": reminded}
    keys = CD2Credential.objects.filter(institution=OuterRef("pk"))
    active = keys.filter(status=CD2Credential.Status.ACTIVE)
    newest_status = Subquery(
        keys.exclude(status=CD2Credential.Status.SUPERSEDED).order_by("-submitted_at", "-pk").values("status")[:1]
    )
    expected = {
        "key_condition": Case(
            When(Exact(newest_status, CD2Credential.Status.PENDING_VERIFICATION), then=Value(KeyState.PENDING)),
            When(Exists(active.filter(last_verdict__in=FAILED_VERDICTS)), then=Value(KeyState.FAILING)),
            When(Exists(active), then=Value(KeyState.OK)),
            When(Exact(newest_status, CD2Credential.Status.INVALID), then=Value(KeyState.FAILING)),
            When(Exact(newest_status, CD2Credential.Status.LOST), then=Value(KeyState.LOST)),
            default=Value(KeyState.MISSING),
            output_field=models.CharField(),
        ),
        "key_pk": Subquery(active.values("pk")[:1]),
        "key_expires_on": Subquery(active.values("expires_on")[:1]),
        "key_checked_at": Subquery(active.values("last_verified_at")[:1]),
        "key_region": Coalesce(Subquery(active.values("region")[:1]), Value("")),
        "key_reminded_unanswered": reminded,
    }
    return expected if fields is None else {field: expected[field] for field in fields}


def _reminded_without_answer(*, institution):
    """Sent reminder steps about `institution`'s active key with no key handed in since they went out.

    Read from the steps' notices (an extra reminder, outside the schedule,
    has no step and does not count). One exists exactly when the newest sent
    reminder has no answer: a later reminder has fewer submissions after it.
    """
    answer = CD2Credential.objects.filter(
        institution=OuterRef("credential__institution"), submitted_at__gt=OuterRef("sent_at")
    ).exclude(pk=OuterRef("credential"))
    return Notice.objects.filter(
        reminder__isnull=False,
        credential__institution=institution,
        credential__status=CD2Credential.Status.ACTIVE,
        state=Notice.State.SENT,
    ).filter(~Exists(answer))


def key_summary_drift(*, queryset=None):
    """Institutions whose stored key summary differs from key_summary_expected(), with expected_* annotated."""
    queryset = Institution.objects.all() if queryset is None else queryset
    expected = key_summary_expected()
    differs = Q()
    for field in expected:
        wanted = F(f"expected_{field}")
        # Unequal, or NULL on one side only (an equality test is NULL, not false, when one side is).
        differs |= Q(**{f"{field}__lt": wanted}) | Q(**{f"{field}__gt": wanted})
        differs |= Q(**{f"{field}__isnull": True, f"expected_{field}__isnull": False})
        differs |= Q(**{f"{field}__isnull": False, f"expected_{field}__isnull": True})
    return queryset.annotate(**{f"expected_{field}": value for field, value in expected.items()}).filter(differs)


def key_state_case(*, today: dt.date | None = None, days_left=None) -> Case:
    """KeyState from the stored summary: an active key's state is its expiry that day, the others are stored.

    The day: one `today` for every row, or `days_left` (each institution's
    own day count, days.days_left_sql). The stored pending, failing and
    missing are KeyState's own values, so they pass through as they are.
    """
    return Case(
        When(
            key_condition=KeyState.OK,
            then=expiry_state_case(field="key_expires_on", today=today, days_left=days_left),
        ),
        default=F("key_condition"),
        output_field=models.CharField(),
    )


def _days_left(*, today: dt.date | None, now: dt.datetime | None):
    """Each row's day count to key_expires_on: its institution's own (at `now`), or from one `today` for all."""
    if today is not None:
        return DaysUntil("key_expires_on", today)
    return days_left_sql("key_expires_on", now or timezone.now())


def institutions_with_key_status(*, queryset=None, today: dt.date | None = None, now: dt.datetime | None = None):
    """Institutions with their active key (one LEFT JOIN) and its state.

    Adds: active_key_id, active_expires_on, active_hint, active_region,
    active_last_verified_at, active_last_verdict, active_last_verification,
    active_last_pulled_at, active_submitted_at, last_reminder_id,
    last_reminder_step, last_reminder_state and last_reminder_at (the last
    attempt to remind about the active key: its notice, step (None for an
    extra one), notice state and when it was sent, gave up or was written),
    last_handled_step (the most urgent step of the active key sent, failed
    or skipped: steps only go down), days_left (NULL without an active key), expiry_state (ok, expiring,
    expired, missing), the newest key when it is pending (pending_key_id,
    pending_hint, pending_expires_on, pending_reason) and key_state (see
    key_summary_expected; an active key's state is its expiry state).

    What a list sorts and filters on (key_state, days_left, expiry_state,
    active_expires_on, active_region, active_last_verified_at) is read from
    the institution's stored key summary, so an index serves it; the rest
    comes from the join and from subqueries in the select list, which
    PostgreSQL evaluates for the page's rows only, after the sort and LIMIT.

    Day counts and states are each institution's own at `now` (default: this
    instant; credentials/days.py); `today` instead counts every row from one
    date (a question "as of" a day).
    """
    days_left = _days_left(today=today, now=now)
    queryset = Institution.objects.all() if queryset is None else queryset
    newest_pending = (
        CD2Credential.objects.filter(institution=OuterRef("pk"))
        .exclude(status=CD2Credential.Status.SUPERSEDED)
        .order_by("-submitted_at", "-pk")
    )
    # A step's delivery is its notice's. The last attempt: the newest reminder about the active key that
    # was, or is being, mailed (sent, failed, waiting), not one skipped on purpose; extra ones included.
    attempted = (
        Notice.objects.filter(credential=OuterRef("active_key_id"), kind=Notice.Kind.REMINDER)
        .exclude(state__in=(Notice.State.SUPERSEDED, Notice.State.CANCELLED))
        .order_by("-created_at", "-pk")
    )
    handled = (
        ReminderLog.objects.filter(credential=OuterRef("active_key_id"), notice__isnull=False)
        .exclude(notice__state__in=Notice.OPEN_STATES)
        .values("credential")
        .annotate(step=Min("threshold"))
        .values("step")
    )
    pending = Q(key_condition=KeyState.PENDING)

    def newest(field: str):
        return Case(
            When(pending, then=Subquery(newest_pending.values(field)[:1])),
            default=Value(None),
        )

    return (
        queryset.annotate(
            active_key=FilteredRelation("credentials", condition=Q(credentials__status=CD2Credential.Status.ACTIVE)),
        )
        .annotate(
            active_key_id=F("active_key__id"),
            active_expires_on=F("key_expires_on"),
            active_hint=F("active_key__hint"),
            active_region=F("key_region"),
            active_last_verified_at=F("key_checked_at"),
            active_last_verdict=F("active_key__last_verdict"),
            active_last_verification=F("active_key__last_verification"),
            active_last_pulled_at=F("active_key__last_pulled_at"),
            active_submitted_at=F("active_key__submitted_at"),
            active_accepted_at=F("active_key__status_changed_at"),
            days_left=days_left,
            expiry_state=expiry_state_case(
                field="key_expires_on", days_left=days_left, missing_when=Q(key_expires_on__isnull=True)
            ),
            key_state=key_state_case(days_left=days_left),
        )
        .annotate(
            pending_key_id=newest("pk"),
            pending_hint=newest("hint"),
            pending_expires_on=newest("expires_on"),
            pending_reason=newest("pending_reason"),
        )
        .annotate(
            last_reminder_id=Subquery(attempted.values("pk")[:1]),
            last_reminder_step=Subquery(attempted.values("reminder__threshold")[:1]),
            last_reminder_state=Subquery(attempted.values("state")[:1]),
            last_reminder_at=Subquery(
                attempted.annotate(at=Coalesce("sent_at", "closed_at", "created_at")).values("at")[:1]
            ),
            last_handled_step=Subquery(handled[:1]),
        )
    )


def no_working_key(*, now: dt.datetime | None = None) -> Q:
    """Institutions with no working key (NO_WORKING_KEY_STATES), from the stored key summary on their own day.

    The one rule of "no working key": the dashboard's count, the staff
    digest's and the institution list's filter all read it.
    """
    stored = [state for state in NO_WORKING_KEY_STATES if state in STORED_KEY_STATES]
    expired = Q(key_condition=KeyState.OK) & expiry_days_between("key_expires_on", now or timezone.now(), at_most=-1)
    return Q(key_condition__in=stored) | expired


def institutions_without_working_key(*, now: dt.datetime | None = None):
    """Served institutions with no working key (no_working_key)."""
    return Institution.objects.filter(status__in=Institution.SERVED_STATUSES).filter(no_working_key(now=now))


def institutions_with_key_summary(*, queryset=None, today: dt.date | None = None, now: dt.datetime | None = None):
    """Institutions with their active key's id, hint, expiry, region, last check and key_state: no join.

    The lean twin of institutions_with_key_status for a machine's list (the
    API's GET /keys/): everything but the hint is read from the stored key
    summary (Institution.key_*); the hint is one primary-key lookup per row
    of the page (a subquery PostgreSQL runs after the sort and LIMIT).
    Same attribute names as institutions_with_key_status (and the same days).
    """
    days_left = _days_left(today=today, now=now)
    queryset = Institution.objects.all() if queryset is None else queryset
    hint = CD2Credential.objects.filter(pk=OuterRef("key_pk")).values("hint")[:1]
    return queryset.annotate(
        active_key_id=F("key_pk"),
        active_hint=Subquery(hint),
        active_expires_on=F("key_expires_on"),
        active_region=F("key_region"),
        active_last_verified_at=F("key_checked_at"),
        days_left=days_left,
        key_state=key_state_case(days_left=days_left),
    )


def regions_in_use() -> list[str]:
    """The regions of the institutions' active keys, in order, each once.

    One index probe per region (a "loose index scan" on the index that
    starts with key_region), in one recursive query: SELECT DISTINCT would
    read every institution's entry in the index, on every view of the list.
    """
    table = connection.ops.quote_name(Institution._meta.db_table)
    column = connection.ops.quote_name(Institution._meta.get_field("key_region").column)
    sql = (
        f"WITH RECURSIVE regions (region) AS ("  # noqa: S608  # nosec B608 (our own table and column names, quoted)
        f" SELECT MIN({column}) FROM {table} WHERE {column} > %s"
        f" UNION ALL SELECT (SELECT MIN({column}) FROM {table} WHERE {column} > regions.region)"
        f" FROM regions WHERE regions.region IS NOT NULL"
        f") SELECT region FROM regions WHERE region IS NOT NULL"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [""])
        return [row[0] for row in cursor.fetchall()]


def reminders_ended(*, now: dt.datetime | None = None) -> Q:
    """Institutions whose active key lapsed so long ago, on their own day, that its reminders have ended.

    For .filter() on Institution (the list's "reminders ended"): ranges of the stored key_expires_on.
    """
    return reminders_ended_sql("key_expires_on", now or timezone.now())


def reminded_without_answer() -> Q:
    """Institutions whose active key was reminded about and who have handed in no key since the newest reminder.

    For .filter() on Institution: the stored key_reminded_unanswered (key_summary_expected's rule, kept by
    the key services and the reminder service), served by a partial index in the list's order.
    """
    return Q(key_reminded_unanswered=True)


def current_key(*, institution: Institution, statuses: tuple[str, ...]) -> CD2Credential | None:
    """The institution's newest key in one of `statuses`, without its secrets."""
    return (
        CD2Credential.objects.without_secrets()
        .filter(institution=institution, status__in=statuses)
        .order_by("-submitted_at", "-pk")
        .first()
    )


def handoff_candidate(*, institution: Institution) -> CD2Credential | None:
    """The key the pipeline would get: the active one, else the newest that is not history."""
    return current_key(institution=institution, statuses=(CD2Credential.Status.ACTIVE,)) or current_key(
        institution=institution, statuses=(CD2Credential.Status.REVOKED, CD2Credential.Status.INVALID)
    )


def served_active_keys(*, institution_slug: str | None = None):
    """Active keys of institutions we still serve, oldest first: what the daily check covers."""
    keys = CD2Credential.objects.filter(
        status=CD2Credential.Status.ACTIVE, institution__status__in=Institution.SERVED_STATUSES
    )
    if institution_slug:
        keys = keys.filter(institution__slug=institution_slug)
    return keys.order_by("pk")


def pending_credentials_due(*, now: dt.datetime | None = None) -> list[int]:
    """Ids of pending keys due for another check by the hourly sweep.

    A key waiting for Instructure to enable CD2 (403): not checked for
    PENDING_NOT_ENABLED_EVERY, while younger than PENDING_NOT_ENABLED_FOR
    (then staff decide: it stays pending, shown as such). Any other: not
    checked for PENDING_SWEEP_AFTER, because its own re-check was lost
    (broker down) or ran out of retries.
    """
    now = now or timezone.now()

    def not_checked_since(cutoff: dt.datetime) -> Q:
        return Q(last_verified_at__lt=cutoff) | Q(last_verified_at__isnull=True, submitted_at__lt=cutoff)

    not_enabled = Q(pending_reason=PendingReason.NOT_ENABLED)
    return list(
        CD2Credential.objects.filter(status=CD2Credential.Status.PENDING_VERIFICATION)
        .filter(
            (
                not_enabled
                & not_checked_since(now - PENDING_NOT_ENABLED_EVERY)
                & Q(submitted_at__gte=now - PENDING_NOT_ENABLED_FOR)
            )
            | (~not_enabled & not_checked_since(now - PENDING_SWEEP_AFTER))
        )
        .order_by("pk")
        .values_list("pk", flat=True)
    )


# A check asked for by a sync report normally runs within a minute of its
# task; older than this, its task was lost (the broker was down) and the
# hourly sweep queues it again.
REQUESTED_CHECK_SWEEP_AFTER = dt.timedelta(minutes=10)


def checks_requested_due(*, now: dt.datetime | None = None) -> list[int]:
    """Ids of active keys a check was asked for (API sync report) that has no answer yet and whose task was lost."""
    now = now or timezone.now()
    return list(
        CD2Credential.objects.filter(
            status=CD2Credential.Status.ACTIVE, check_requested_at__lt=now - REQUESTED_CHECK_SWEEP_AFTER
        )
        .order_by("pk")
        .values_list("pk", flat=True)
    )


def newer_key_pending(key: str = "") -> Exists:
    """The institution of the (outer) key has a newer key waiting for its check.

    `key` is the path to the key from the outer query ("" for a key query,
    "credential__" for a reminder query). While the newer key waits, the
    old key's expiry reminders pause: the customer has already made the new
    key. They resume by themselves when the check ends (the new key becomes
    active and supersedes the old one, or it is found invalid and the
    customer is told at once).
    """
    return Exists(
        CD2Credential.objects.filter(
            institution_id=OuterRef(f"{key}institution_id"),
            status=CD2Credential.Status.PENDING_VERIFICATION,
            submitted_at__gt=OuterRef(f"{key}submitted_at"),
        )
    )


def newer_key_in_hand(key: str = "") -> Exists:
    """The institution of the (outer) key has a newer key, active or waiting for its check.

    `key` as for newer_key_pending. A notice about a key that stopped
    working (or was refused at its re-check) asks for a new key: once one
    has arrived, the notice is superseded rather than sent.
    """
    return Exists(
        CD2Credential.objects.filter(
            institution_id=OuterRef(f"{key}institution_id"),
            status__in=(CD2Credential.Status.ACTIVE, CD2Credential.Status.PENDING_VERIFICATION),
            submitted_at__gt=OuterRef(f"{key}submitted_at"),
        )
    )


# --------------------------------------------------------------------------
# Reminders due
# --------------------------------------------------------------------------


def reminder_days_before() -> list[int]:
    return sorted({int(days) for days in settings.REMINDER_DAYS_BEFORE if int(days) >= 0})


def reminder_repeat_after() -> int:
    return int(settings.REMINDER_REPEAT_AFTER_EXPIRY_DAYS)


def reminder_cadence_after_expiry() -> tuple[int, int, int]:
    """(repeat, weekly_until, monthly): every `repeat` days until `weekly_until` after expiry, then every `monthly`.

    weekly_until is a whole number of repeats; 0 repeat means no reminder after the day-of one.
    """
    repeat = reminder_repeat_after()
    if repeat <= 0:
        return 0, 0, 0
    weekly_until = max(int(settings.REMINDER_WEEKLY_AFTER_EXPIRY_FOR_DAYS) // repeat, 1) * repeat
    return repeat, weekly_until, max(int(settings.REMINDER_MONTHLY_REPEAT_DAYS), 0)


def reminder_step(*, days_left: int) -> int | None:
    """The most urgent threshold that has come due for a key `days_left` from expiry.

    None when no reminder is due yet. After expiry: weekly (-7, -14 ... -42),
    then monthly (-72, -102 ...). Must agree with _step_expression (SQL).
    """
    before = reminder_days_before()
    repeat, weekly_until, monthly = reminder_cadence_after_expiry()
    if days_left >= 0:
        return next((t for t in before if t >= days_left), None)
    since = -days_left
    if repeat and since >= weekly_until:
        months = (since - weekly_until) // monthly if monthly else 0
        return -(weekly_until + months * monthly)
    if repeat and since >= repeat:
        return -repeat * (since // repeat)
    return before[0] if before else None


@dataclass(frozen=True)
class PlannedStep:
    """A reminder step and the day it is (or was) due."""

    threshold: int
    on: dt.date

    def label(self) -> str:
        return step_label(self.threshold)


def _after_expiry_thresholds():
    """The steps after expiry, in order: every `repeat` days until `weekly_until`, then every `monthly`."""
    repeat, weekly_until, monthly = reminder_cadence_after_expiry()
    if not repeat:
        return
    yield from range(-repeat, -weekly_until - 1, -repeat)
    if monthly:
        since = weekly_until + monthly
        while True:
            yield -since
            since += monthly


def next_reminder(
    *,
    expires_on: dt.date | None,
    today: dt.date,
    handled_step: int | None,
    first_step_on: dt.date | None = None,
    served: bool = True,
) -> PlannedStep | None:
    """The next reminder the daily run will send for a key, from the schedule (REMINDER_* settings).

    The step due now when it has not been handled yet (and is not due before
    `first_step_on`, days.first_step_day: before we had the key, or in its
    first quiet day), else the next threshold to come. None without a key,
    for an institution we do not serve, and once the reminders have ended
    (days.reminders_end_on).
    """
    if expires_on is None or not served:
        return None
    ends_on = reminders_end_on(expires_on)
    if today > ends_on:
        return None
    days_left = (expires_on - today).days
    largest = (expires_on - first_step_on).days if first_step_on else None

    def allowed(threshold: int) -> bool:
        return largest is None or threshold <= largest

    current = reminder_step(days_left=days_left)
    if current is not None and (handled_step is None or current < handled_step) and allowed(current):
        return PlannedStep(threshold=current, on=today)
    before = [t for t in reminder_days_before() if t < days_left and allowed(t)]
    if before:
        threshold = before[-1]
        return PlannedStep(threshold=threshold, on=expires_on - dt.timedelta(days=threshold))
    for threshold in _after_expiry_thresholds():
        on = expires_on - dt.timedelta(days=threshold)
        if on > ends_on:
            return None
        if on > today and allowed(threshold):
            return PlannedStep(threshold=threshold, on=on)
    return None


def institution_next_reminder(institution: Institution, *, now: dt.datetime) -> PlannedStep | None:
    """next_reminder of an institution read through institutions_with_key_status, on its own day at `now`."""
    zone = institution_zone(institution)
    expires_on, accepted = institution.active_expires_on, institution.active_accepted_at
    first = None
    if expires_on is not None and accepted is not None:
        first = expires_on - dt.timedelta(
            days=largest_step_allowed(expires_on=expires_on, accepted_at=accepted, zone=zone)
        )
    return next_reminder(
        expires_on=expires_on,
        today=now.astimezone(zone).date(),
        handled_step=institution.last_handled_step,
        first_step_on=first,
        served=institution.is_served(),
    )


def step_allowed(credential: CD2Credential, *, threshold: int) -> bool:
    """The step may be sent for this active key: not due before we had it, nor in its first quiet day (days.py)."""
    largest = largest_step_allowed(
        expires_on=credential.expires_on,
        accepted_at=credential.status_changed_at,
        zone=institution_zone(credential.institution),
    )
    return threshold <= largest


def _step_expression(today: dt.date) -> Case:
    """reminder_step in SQL, over expires_on ranges (the index on status, expires_on serves it)."""
    before = reminder_days_before()
    repeat, weekly_until, monthly = reminder_cadence_after_expiry()
    days_since = DaysBetween(Value(today), "expires_on")  # days since expiry, positive after it
    whens = []

    def integer(expression):
        return models.ExpressionWrapper(expression, output_field=models.IntegerField())

    if repeat:
        # Integer division of non-negative numbers: the last step reached.
        if monthly:
            whens.append(
                When(
                    expires_on__lte=today - dt.timedelta(days=weekly_until + monthly),
                    then=integer(
                        Value(-weekly_until) - (days_since - Value(weekly_until)) / Value(monthly) * Value(monthly)
                    ),
                )
            )
        whens.append(When(expires_on__lte=today - dt.timedelta(days=weekly_until), then=Value(-weekly_until)))
        whens.append(
            When(
                expires_on__lte=today - dt.timedelta(days=repeat),
                then=integer(Value(0) - days_since / Value(repeat) * Value(repeat)),
            )
        )
    if before:
        whens.append(When(expires_on__lt=today, then=Value(before[0])))
    for threshold in before:
        whens.append(When(expires_on__lte=today + dt.timedelta(days=threshold), then=Value(threshold)))
    return Case(*whens, default=Value(None), output_field=models.IntegerField())


def due_credentials(*, today: dt.date, now: dt.datetime):
    """Active keys of served institutions whose current step has not been handled.

    One query: the step is computed in SQL and a NOT EXISTS drops keys whose
    step already has a row (claimed steps have their notice in the outbox,
    written with the claim, which delivers or retries them). Steps that came
    due before the key was submitted are not due.
    """
    before = reminder_days_before()
    horizon = today + dt.timedelta(days=before[-1] if before else 0)
    handled = ReminderLog.objects.filter(credential=OuterRef("pk"), threshold=OuterRef("step"))
    return (
        CD2Credential.objects.without_secrets()
        .filter(
            status=CD2Credential.Status.ACTIVE,
            institution__status__in=Institution.SERVED_STATUSES,
            expires_on__lte=horizon,
            # Reminders end REMINDER_STOP_AFTER_EXPIRY_MONTHS after expiry.
            expires_on__gte=earliest_expiry_still_reminded(today),
        )
        # A key accepted within the quiet period is not reminded, unless it
        # expires within it (by tomorrow at the latest; step_allowed says exactly).
        .exclude(
            status_changed_at__gt=now - settings.REMINDER_QUIET_AFTER_ACCEPTANCE,
            expires_on__gt=today + dt.timedelta(days=2),
        )
        .annotate(
            step=_step_expression(today),
            days_left_on_arrival=DaysBetween("expires_on", TruncDate("status_changed_at")),
        )
        # A step that passed before we had the key is not sent: the customer
        # just handed it over, so the next step is the first reminder. The
        # database's date of acceptance is UTC's, a day off the institution's
        # at most: the caller asks step_allowed() to decide exactly.
        .filter(step__isnull=False, step__lte=F("days_left_on_arrival") + 1)
        .filter(~Exists(handled))
        .filter(~newer_key_pending())
    )


def audit_events_by(*, user) -> int:
    """How many audit events name `user` as the actor (a user with any is kept for ever, deactivated not deleted)."""
    return AuditEvent.objects.filter(actor=user).count()


# --------------------------------------------------------------------------
# An institution's timeline
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class TimelineEntry:
    """One thing that happened to an institution, for its page: when, what, by or to whom, and the detail."""

    at: dt.datetime
    kind: str  # link, submission, check, reminder, staff, audit
    title: str
    who: str = ""
    detail: str = ""
    key_id: int | None = None


# Audit kinds already shown by the row they describe (the link, the key).
_AUDIT_SHOWN_ELSEWHERE = (AuditEvent.Kind.LINK_CREATED, AuditEvent.Kind.SUBMISSION)


def institution_timeline(*, institution: Institution, limit: int = 200) -> list[TimelineEntry]:
    """Links sent, keys handed in, checks, reminders and audit events of one institution, newest first.

    Five queries, each capped at `limit`, none reading an encrypted column.
    """
    entries: list[TimelineEntry] = []
    for link in institution.submission_links.select_related("created_by").order_by("-created_at")[:limit]:
        who = link.created_by.get_username() if link.created_by else f"system ({link.reason})"
        sent_to = f"to {link.sent_to}" if link.sent_to else "not mailed"
        entries.append(
            TimelineEntry(link.created_at, "link", "Submission link made", who, f"{sent_to}; {link.state()}")
        )
    keys = (
        CD2Credential.objects.without_secrets()
        .select_related("created_by")
        .filter(institution=institution)
        .order_by("-submitted_at")[:limit]
    )
    for key in keys:
        who = key.submitted_by_email or key.submitted_by or (key.created_by.get_username() if key.created_by else "")
        entries.append(
            TimelineEntry(
                key.submitted_at,
                "submission",
                f"Key {key.hint} handed in ({key.get_source_display().lower()})",
                who,
                f"expires {format_day(key.expires_on)}; now {key.get_status_display().lower()}",
                key.pk,
            )
        )
        if key.last_verified_at and key.last_verdict:
            entries.append(
                TimelineEntry(
                    key.last_verified_at,
                    "check",
                    f"Key {key.hint} checked: {key.get_last_verdict_display()}",
                    "",
                    key.last_verification,
                    key.pk,
                )
            )
    reminders = (
        ReminderLog.objects.filter(credential__institution=institution)
        .select_related("credential", "notice")
        .defer(*secret_fields_of("credential"))
        .order_by("-claimed_at")[:limit]
    )
    for log in reminders:
        recipients = log.recipients()
        entries.append(
            TimelineEntry(
                log.delivered_at(),
                "reminder",
                f"Reminder {log.step_label()} for key {log.credential.hint}: {log.delivery()}",
                "",
                f"to {recipients}" if recipients else "no recipients",
                log.credential_id,
            )
        )
    events = (
        AuditEvent.objects.filter(institution=institution)
        .exclude(kind__in=_AUDIT_SHOWN_ELSEWHERE)
        .order_by("-created_at")[:limit]
    )
    for event in events:
        entries.append(
            TimelineEntry(
                event.created_at,
                "staff" if event.actor_username else "audit",
                event.get_kind_display(),
                event.actor_username or event.actor_label or "system",
                event.reason,
                event.credential_id,
            )
        )
    entries.sort(key=lambda entry: entry.at, reverse=True)
    return entries[:limit]


# --------------------------------------------------------------------------
# Submitters not on file (the "add as a contact" button)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class SubmitterNotOnFile:
    credential_id: int
    name: str
    email: str


def submitters_not_on_file(*, institution: Institution) -> list[SubmitterNotOnFile]:
    """People who handed over a key for the institution and are not its contacts, newest first, one per address.

    Addresses compare by email_key (the one comparison form), so a contact
    typed in another case or with look-alike characters counts as on file.
    """
    on_file = {email_key(address) for address in institution.contacts.values_list("email", flat=True)}
    found: dict[str, SubmitterNotOnFile] = {}
    rows = (
        CD2Credential.objects.filter(institution=institution)
        .exclude(submitted_by_email="")
        .order_by("-submitted_at", "-pk")
        .values_list("pk", "submitted_by", "submitted_by_email")
    )
    for pk, name, address in rows:
        key = email_key(address)
        if key and key not in on_file and key not in found:
            found[key] = SubmitterNotOnFile(credential_id=pk, name=name, email=address)
    return list(found.values())


def staff_time_zone(*, user) -> str:
    """The zone the staff site writes times in for `user`: their own (StaffSettings), else TIME_ZONE."""
    zone = StaffSettings.objects.filter(user_id=user.pk).values_list("time_zone", flat=True).first()
    return zone or settings.TIME_ZONE


def staff_alert_events(*, user) -> list[str]:
    """The staff alerts (models.StaffAlert values) `user` chose to be mailed about on "My settings"."""
    events = StaffSettings.objects.filter(user_id=user.pk).values_list("alert_events", flat=True).first()
    return list(events or [])
