"""One "today" per institution (credentials/days.py): the same day count at every door, in every zone.

The rule itself, its SQL twin against Python for every zone, the receipt's
moment, the doors agreeing under Hypothesis, reminders that stop, a fresh
key left alone for a day, DST changes, readers' zones and one owner mail a
day through a mail server outage across midnight.
"""

from __future__ import annotations

import datetime as dt
import smtplib
from collections import Counter

import icalendar
import pytest
import time_machine
from django.contrib.auth import get_user_model
from django.core import mail
from django.core.mail.backends.locmem import EmailBackend as LocmemBackend
from django.db import transaction
from django.utils import timezone
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from api.models import ServiceAccount
from api.serializers import KeySummarySerializer
from api.services import account_keys
from credentials import days
from credentials.admin.institutions import days_left_display
from credentials.formatting import format_day, format_moment, format_weekday
from credentials.models import CD2Credential, Notice, ReminderLog, StaffSettings
from credentials.selectors import institutions_with_key_status, reminders_ended
from credentials.services import digest, outbox, owners
from credentials.services.keys import credential_create
from credentials.services.reminders import reminder_send_now, reminders_send_due
from credentials.services.staff import institutions_export
from credentials.services.submission import receipt_write
from credentials.validators import CleanKey
from institutions.models import Contact, Institution
from tests.conftest import PASSED_CHECK

pytestmark = pytest.mark.django_db

# The zones the issue names: +14 to -11, half hours, both hemispheres.
ZONES = (
    "Pacific/Kiritimati",
    "Pacific/Auckland",
    "Australia/Perth",
    "UTC",
    "America/St_Johns",
    "America/Los_Angeles",
    "Pacific/Pago_Pago",
)

_n = iter(range(1, 10**6))


def customer(*, zone: str, expires_on: dt.date, owner=None, accepted_at: dt.datetime | None = None, name: str = ""):
    """An active institution in `zone` with one contact and an active key accepted at `accepted_at` (default: now)."""
    n = next(_n)
    institution = Institution.objects.create(
        name=name or f"College {n}",
        slug=f"college-{n}",
        canvas_domain=f"c{n}.instructure.com",
        status=Institution.Status.ACTIVE,
        timezone=zone,
        account_owner=owner,
    )
    Contact.objects.create(institution=institution, name="Ada Admin", email=f"ada{n}@c{n}.example.edu")
    key = credential_create(
        institution=institution,
        key=CleanKey(
            client_id=f"us-east-1#0a1b2c3d-0000-4000-8000-{n:012d}", secret="secret-Xy9", expires_on=expires_on
        ),
        source=CD2Credential.Source.ADMIN,
        status=CD2Credential.Status.ACTIVE,
        check=PASSED_CHECK,
        submitted_by_email=f"ada{n}@c{n}.example.edu",
        now=accepted_at,
    )
    return institution, key


def make_owner(name: str = "olivia", zone: str = ""):
    user = get_user_model().objects.create_user(
        username=name, email=f"{name}@edpotential.example", first_name=name.title(), is_staff=True
    )
    if zone:
        StaffSettings.objects.create(user=user, time_zone=zone)
    return user


# --------------------------------------------------------------------------
# The rule
# --------------------------------------------------------------------------


def test_a_key_counts_its_days_on_its_institutions_date():
    instant = dt.datetime(2026, 12, 7, 16, 0, tzinfo=dt.UTC)  # 8 Dec in Auckland and Perth, 7 Dec in Los Angeles
    expires_on = dt.date(2026, 12, 14)

    assert days.key_days(expires_on=expires_on, zone="Pacific/Auckland", now=instant).phrase == "expires in 6 days"
    assert days.key_days(expires_on=expires_on, zone="Australia/Perth", now=instant).days_left == 6
    assert days.key_days(expires_on=expires_on, zone="America/Los_Angeles", now=instant).phrase == "expires in 7 days"
    assert days.key_days(expires_on=expires_on, zone="No/Such_Zone", now=instant).today == dt.date(2026, 12, 7)


def test_reminders_end_six_calendar_months_after_expiry_even_at_a_month_end(settings):
    settings.REMINDER_STOP_AFTER_EXPIRY_MONTHS = 6
    assert days.reminders_end_on(dt.date(2027, 8, 31)) == dt.date(2028, 2, 29)
    for today in (dt.date(2028, 2, 29), dt.date(2028, 3, 1), dt.date(2027, 3, 31), dt.date(2027, 1, 1)):
        earliest = days.earliest_expiry_still_reminded(today)
        assert days.reminders_end_on(earliest) >= today > days.reminders_end_on(earliest - dt.timedelta(days=1))


def test_a_moment_is_dated_in_the_zone_its_time_is_written_in():
    moment = dt.datetime(2026, 12, 7, 16, 0, tzinfo=dt.UTC)
    with timezone.override("America/Los_Angeles"):  # the server's (or a staff member's) zone differs
        assert format_moment(moment, "Pacific/Auckland", with_zone=True) == "8 Dec 2026, 05:00 NZDT"
        assert format_moment(moment, "Australia/Perth", with_zone=True) == "8 Dec 2026, 00:00 AWST"
        assert format_day(moment, "Pacific/Auckland") == "8 Dec 2026"


@pytest.mark.parametrize(
    "instant",
    [
        dt.datetime(2027, 1, 1, 0, 30, tzinfo=dt.UTC),
        dt.datetime(2028, 2, 29, 12, 0, tzinfo=dt.UTC),
        dt.datetime(2027, 3, 14, 7, 30, tzinfo=dt.UTC),
        dt.datetime(2027, 12, 31, 10, 15, tzinfo=dt.UTC),
    ],
)
def test_the_sql_today_of_every_zone_is_the_python_one(instant):
    zones = sorted(days.known_zones())
    Institution.objects.bulk_create(
        [Institution(name=z, slug=f"z{n}", canvas_domain="z.instructure.com", timezone=z) for n, z in enumerate(zones)]
        + [Institution(name="Unknown", slug="unknown", canvas_domain="z.instructure.com", timezone="Mars/Olympus")]
    )
    rows = Institution.objects.annotate(today=days.institution_today_sql(instant)).values_list("timezone", "today")
    assert {zone: today for zone, today in rows} == {
        zone: days.day_in(zone, instant) for zone in [*zones, "Mars/Olympus"]
    }
    assert len(days.zone_days(instant)) in (2, 3)


# --------------------------------------------------------------------------
# The receipt
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "reads"),
    [
        ("Pacific/Auckland", "Received: 8 Dec 2026, 05:00 NZDT"),
        ("Australia/Perth", "Received: 8 Dec 2026, 00:00 AWST"),
        ("America/Los_Angeles", "Received: 7 Dec 2026, 08:00 PST"),
    ],
)
def test_a_key_handed_in_at_16_utc_has_a_receipt_dated_in_the_institutions_zone(zone, reads):
    handed_in = dt.datetime(2026, 12, 7, 16, 0, tzinfo=dt.UTC)
    with time_machine.travel(handed_in, tick=False):
        _, key = customer(zone=zone, expires_on=dt.date(2027, 12, 1))
        receipt_write(credential=key, now=handed_in)
        outbox.outbox_deliver_due(now=handed_in)

    (receipt,) = [m for m in mail.outbox if m.subject.startswith("Receipt")]
    assert reads in receipt.body
    assert reads.removeprefix("Received: ") in receipt.alternatives[0][0]


# --------------------------------------------------------------------------
# Every door, the same days (Hypothesis)
# --------------------------------------------------------------------------


def _ics_dates(message) -> list[dt.date]:
    return [
        icalendar.Calendar.from_ical(content).walk("VEVENT")[0].decoded("dtstart")
        for name, content, _ in message.attachments
        if name.endswith(".ics")
    ]


def _doors_at(instant: dt.datetime, zone: str, offset: int, reader_zone: str) -> None:
    """Every door's day count and date for one key, against days.key_days."""
    mail.outbox.clear()
    owner = make_owner(f"owner{next(_n)}", zone=reader_zone)
    expires_on = days.day_in(zone, instant) + dt.timedelta(days=offset)
    institution, key = customer(
        zone=zone, expires_on=expires_on, owner=owner, accepted_at=instant - dt.timedelta(days=3)
    )
    expected = days.key_days(expires_on=expires_on, zone=zone, now=instant)
    day = format_day(expires_on)

    # The customer's reminder (the admin's "Send reminder now": a mail at this instant) and its .ics.
    reminder_send_now(credential=key, now=instant)
    (reminder,) = [m for m in mail.outbox if m.to == [institution.contacts.get().email]]
    assert reminder.subject.endswith(f"Canvas Data 2 key for {institution.name} {expected.phrase}")
    assert f"Expiry date: {day}" in reminder.body
    assert _ics_dates(reminder) == ([] if expected.lapsed else [expires_on])
    if expected.lapsed:
        assert "has lapsed" in reminder.body and "create a new key" in reminder.body

    # The owner's summary, in the owner's zone: the key's count is the institution's.
    owners.owner_summaries_decide(now=instant)
    outbox.outbox_deliver_due(now=instant)
    (summary,) = [m for m in mail.outbox if m.to == [owner.email]]
    assert f"reminded: key {key.hint} {expected.phrase} ({day})" in summary.body
    reader_day = format_weekday(days.day_in(reader_zone, instant))
    assert f"Your institutions that need attention on {reader_day}" in summary.body

    # The staff digest: the expiring and expired sections count each key on its own day.
    built = digest.staff_digest_build(now=instant, zone=reader_zone)
    expiring = {row.pk: row for row in built.sections["expiring"].rows}
    expired = {row.pk: row for row in built.sections["expired"].rows}
    assert (institution.pk in expiring) == (0 <= expected.days_left <= digest.EXPIRING_WITHIN_DAYS)
    assert (institution.pk in expired) == expected.lapsed
    for row in (expiring.get(institution.pk), expired.get(institution.pk)):
        if row is not None:
            assert (row.days_left, row.active_expires_on) == (expected.days_left, expires_on)
    assert built.today == days.day_in(reader_zone, instant)

    # The admin list (its column and the state badge's word), and the CSV export.
    row = institutions_with_key_status(queryset=Institution.objects.filter(pk=institution.pk)).get()
    shown = days_left_display(row)
    assert shown == (f"{expected.days_ago} overdue" if expected.lapsed else str(expected.days_left))
    assert (row.key_state == "expired") == expected.lapsed
    exported = institutions_export(
        queryset=institutions_with_key_status(queryset=Institution.objects.filter(pk=institution.pk)),
        actor=get_user_model().objects.create_superuser(f"admin{next(_n)}", "a@example.com", "x"),
    )
    cell = str(expected.days_left)  # a number, negative too (issue 25: no "'-1"); text cells stay guarded
    assert f"{expires_on.isoformat()},{cell}," in exported

    # The API's list of keys.
    account = ServiceAccount.objects.create(name=f"airflow-{next(_n)}", all_institutions=True)
    (data,) = KeySummarySerializer(account_keys(account=account).filter(pk=institution.pk), many=True).data
    assert (data["days_left"], data["expires_on"]) == (expected.days_left, expires_on.isoformat())
    assert (data["key_state"] == "expired") == expected.lapsed


@hypothesis_settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    instant=st.datetimes(
        min_value=dt.datetime(2026, 1, 1), max_value=dt.datetime(2029, 12, 31), timezones=st.just(dt.UTC)
    ),
    zone=st.sampled_from(ZONES),
    reader_zone=st.sampled_from(ZONES),
    offset=st.integers(min_value=-200, max_value=120),
)
def test_every_door_gives_the_same_day_count_and_dates_in_every_zone(instant, zone, reader_zone, offset):
    with time_machine.travel(instant, tick=False), transaction.atomic():
        _doors_at(instant, zone, offset, reader_zone)
        transaction.set_rollback(True)


# --------------------------------------------------------------------------
# Reminders that stop, and a fresh key left alone
# --------------------------------------------------------------------------


def _reminded(key) -> dict[int, str]:
    return dict(ReminderLog.objects.filter(credential=key).values_list("threshold", "notice__state"))


def test_a_lapsed_key_is_reminded_weekly_then_monthly_and_never_past_the_horizon(settings):
    settings.REMINDER_STOP_AFTER_EXPIRY_MONTHS = 6
    start = dt.datetime(2027, 1, 4, 9, 0, tzinfo=dt.UTC)
    with time_machine.travel(start, tick=False) as clock:
        _, key = customer(zone="UTC", expires_on=dt.date(2027, 1, 10), accepted_at=start - dt.timedelta(days=300))
        sent_on: dict[int, dt.date] = {}
        for day in range(5, 220):  # from the day before expiry to well past the horizon
            clock.move_to(start + dt.timedelta(days=day))
            run = reminders_send_due()
            if run.notice_ids:
                outbox.outbox_deliver_due(now=run.now)
            for threshold in set(_reminded(key)) - set(sent_on):
                sent_on[threshold] = timezone.localdate()

    after = sorted(-t for t in sent_on if t < 0)
    assert after == [7, 14, 21, 28, 35, 42, 72, 102, 132, 162]
    assert sent_on[-162] == key.expires_on + dt.timedelta(days=162)
    assert max(sent_on.values()) <= days.reminders_end_on(key.expires_on) == dt.date(2027, 7, 10)
    assert {state for threshold, state in _reminded(key).items() if threshold < 0} == {Notice.State.SENT}


def test_a_lapsed_keys_mail_says_it_has_lapsed_and_carries_no_calendar_file(settings):
    now = dt.datetime(2027, 5, 3, 9, 0, tzinfo=dt.UTC)
    with time_machine.travel(now, tick=False):
        customer(zone="UTC", expires_on=dt.date(2027, 4, 26), accepted_at=now - dt.timedelta(days=200))
        reminders_send_due()
        outbox.outbox_deliver_due(now=now)

    (message,) = mail.outbox
    assert "has lapsed" in message.body and "please create a new key" in message.body
    assert "expired 7 days ago" in message.subject
    assert message.attachments == [] and ".ics" not in message.body


def test_a_key_expiring_within_a_week_has_a_calendar_file_without_an_alarm_already_past():
    now = dt.datetime(2027, 5, 3, 9, 0, tzinfo=dt.UTC)
    with time_machine.travel(now, tick=False):
        customer(zone="UTC", expires_on=dt.date(2027, 5, 6), accepted_at=now - dt.timedelta(days=90))
        customer(zone="UTC", expires_on=dt.date(2027, 5, 17), accepted_at=now - dt.timedelta(days=90))
        reminders_send_due()
        outbox.outbox_deliver_due(now=now)

    calendars = {m.subject: icalendar.Calendar.from_ical(m.attachments[0][1]).walk("VEVENT")[0] for m in mail.outbox}
    alarms = {subject: len(event.walk("VALARM")) for subject, event in calendars.items()}
    assert sorted(alarms.values()) == [0, 1]  # 3 days ahead: no alarm a week before; 14 days ahead: one


def test_the_owner_hears_once_that_a_keys_reminders_ended_and_staff_see_it_on_the_list_and_the_page(
    settings, client, admin_user, verified_login
):
    settings.REMINDER_STOP_AFTER_EXPIRY_MONTHS = 6
    owner = make_owner()
    start = dt.datetime(2027, 7, 8, 9, 0, tzinfo=dt.UTC)
    with time_machine.travel(start, tick=False) as clock:
        lapsed, _ = customer(
            zone="UTC",
            expires_on=dt.date(2027, 1, 10),
            owner=owner,
            accepted_at=start - dt.timedelta(days=300),
            name="Lapsed Long Ago",
        )
        customer(zone="UTC", expires_on=dt.date(2027, 6, 1), owner=owner, name="Lapsed Lately")
        ended_notes = []
        for day in range(6):  # the horizon (10 Jul) passes on the third day
            clock.move_to(start + dt.timedelta(days=day))
            run = reminders_send_due()
            outbox.outbox_deliver_due(now=run.now)
            ended_notes += [m for m in mail.outbox if m.to == [owner.email] and "reminders ended" in m.body]
            mail.outbox.clear()

        assert len(ended_notes) == 1
        assert "Lapsed Long Ago: key" in ended_notes[0].body and "reminders ended on 10 Jul 2027" in ended_notes[0].body
        assert list(Institution.objects.filter(reminders_ended()).values_list("name", flat=True)) == ["Lapsed Long Ago"]
        verified_login(client, admin_user)
        listed = client.get("/admin/institutions/institution/?reminders=ended")
        page = client.get(f"/admin/institutions/institution/{lapsed.pk}/change/")

    assert listed.status_code == 200 and "Lapsed Long Ago" in listed.text and "Lapsed Lately" not in listed.text
    assert "Reminders ended" in page.text and "10 Jul 2027" in page.text


@pytest.mark.parametrize("zone", ["Pacific/Auckland", "America/Los_Angeles"])
def test_a_fresh_key_is_not_reminded_for_a_day_and_its_first_reminder_is_the_next_step_after(zone):
    accepted = dt.datetime(2027, 5, 3, 10, 0, tzinfo=dt.UTC)
    with time_machine.travel(accepted, tick=False) as clock:
        today = days.day_in(zone, accepted)
        _, week = customer(zone=zone, expires_on=today + dt.timedelta(days=7), accepted_at=accepted)
        _, tomorrow = customer(zone=zone, expires_on=today + dt.timedelta(days=1), accepted_at=accepted)
        first_mail: dict[int, dt.datetime] = {}
        for hour in range(24 * 5):
            clock.move_to(accepted + dt.timedelta(minutes=1, hours=hour))
            run = reminders_send_due(scheduled=True)
            if run.notice_ids:
                outbox.outbox_deliver_due(now=run.now)
            for key in (week, tomorrow):
                if key.pk not in first_mail and _reminded(key):
                    first_mail[key.pk] = timezone.now()

    # The week's key: its 7-day step fell in its first day; the 3-day step is its first reminder.
    assert 7 not in _reminded(week) and _reminded(week)[3] == Notice.State.SENT
    assert first_mail[week.pk] - accepted > dt.timedelta(hours=24)
    assert days.day_in(zone, first_mail[week.pk]) == week.expires_on - dt.timedelta(days=3)
    # A key that expires within that day is reminded all the same, the morning after.
    assert first_mail[tomorrow.pk] - accepted < dt.timedelta(hours=24)


# --------------------------------------------------------------------------
# DST changes: each step once, on the right local day, in the local morning
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "change"),
    [
        ("America/New_York", dt.date(2027, 3, 14)),
        ("America/New_York", dt.date(2027, 11, 7)),
        ("Europe/London", dt.date(2027, 3, 28)),
        ("Europe/London", dt.date(2027, 10, 31)),
    ],
)
def test_through_a_dst_change_each_step_is_sent_once_on_its_local_day(zone, change, settings):
    """Hourly runs, as beat makes them, from the day before a 23- or 25-hour day to the day after it."""
    settings.REMINDER_DAYS_BEFORE = [1, 0]
    start = dt.datetime.combine(change - dt.timedelta(days=1), dt.time(0, 0), tzinfo=dt.UTC)
    with time_machine.travel(start, tick=False) as clock:
        keys = [
            customer(zone=zone, expires_on=change + dt.timedelta(days=d), accepted_at=start - dt.timedelta(days=30))[1]
            for d in (0, 1)
        ]
        for hour in range(24 * 3):
            clock.move_to(start + dt.timedelta(hours=hour, minutes=settings.REMINDERS_MINUTE))
            run = reminders_send_due(scheduled=True)
            if run.notice_ids:
                outbox.outbox_deliver_due(now=run.now)

    sent = list(
        Notice.objects.filter(kind=Notice.Kind.REMINDER, state=Notice.State.SENT).values_list(
            "credential_id", "reminder__threshold", "created_at"
        )
    )
    assert len(sent) == len(mail.outbox) == 4  # two steps of two keys, each once
    assert max(Counter((key, threshold) for key, threshold, _ in sent).values()) == 1
    expires = {key.pk: key.expires_on for key in keys}
    for key_id, threshold, created_at in sent:
        local = created_at.astimezone(days.zone_named(zone))
        assert local.date() == expires[key_id] - dt.timedelta(days=threshold)
        assert local.time() >= dt.time(settings.REMINDERS_HOUR, settings.REMINDERS_MINUTE)
        assert local.time() < dt.time(settings.REMINDERS_HOUR + 1, settings.REMINDERS_MINUTE)
    assert any(created_at.astimezone(days.zone_named(zone)).date() == change for _, _, created_at in sent)


# --------------------------------------------------------------------------
# Readers' zones: the owner's summary and the digest
# --------------------------------------------------------------------------


def test_a_summary_over_several_zones_dates_each_key_in_its_own_and_the_day_in_the_owners():
    instant = dt.datetime(2026, 12, 7, 16, 0, tzinfo=dt.UTC)  # Tue 8 Dec in Auckland, Mon 7 Dec in New York
    owner = make_owner(zone="America/New_York")
    with time_machine.travel(instant, tick=False):
        keys = {
            zone: customer(
                zone=zone, expires_on=dt.date(2026, 12, 14), owner=owner, accepted_at=instant - dt.timedelta(days=9)
            )[1]
            for zone in ("Pacific/Auckland", "America/Los_Angeles")
        }
        reminders_send_due()
        outbox.outbox_deliver_due(now=instant)

    (summary,) = [m for m in mail.outbox if m.to == [owner.email]]
    assert "need attention on Monday 7 Dec 2026" in summary.body
    assert f"key {keys['Pacific/Auckland'].hint} expires in 6 days" in summary.body
    assert f"key {keys['America/Los_Angeles'].hint} expires in 7 days" in summary.body
    customers = {m.subject for m in mail.outbox if m.to != [owner.email]}
    assert any(s.endswith("expires in 6 days") for s in customers) and any(s.endswith("in 7 days") for s in customers)


def test_each_reader_gets_the_digest_dated_in_their_own_zone(settings):
    settings.STAFF_DIGEST_RECIPIENTS = []
    make_owner("kiri", zone="Pacific/Kiritimati")
    make_owner("sam", zone="Pacific/Pago_Pago")
    make_owner("una")  # the site's zone (UTC)
    instant = dt.datetime(2027, 5, 3, 10, 30, tzinfo=dt.UTC)  # 4 May at +14, 2 May at -11
    with time_machine.travel(instant, tick=False):
        customer(zone="Pacific/Kiritimati", expires_on=dt.date(2027, 5, 14))
        digest.staff_digest_send()

    subjects = {m.to[0].split("@")[0]: m.subject for m in mail.outbox}
    assert subjects["kiri"].startswith("CD2 keys, week of 4 May 2027")
    assert subjects["sam"].startswith("CD2 keys, week of 2 May 2027")
    assert subjects["una"].startswith("CD2 keys, week of 3 May 2027")
    assert all("in 10 days" in m.body for m in mail.outbox)  # the key's count is its institution's, for everyone


def test_the_expiry_month_filter_is_the_readers_month(client, admin_user, verified_login):
    instant = dt.datetime(2027, 5, 31, 20, 0, tzinfo=dt.UTC)  # 1 Jun at +14, still 31 May in UTC
    StaffSettings.objects.create(user=admin_user, time_zone="Pacific/Kiritimati")
    with time_machine.travel(instant, tick=False):
        customer(zone="UTC", expires_on=dt.date(2027, 6, 20), name="June Expiry")
        customer(zone="UTC", expires_on=dt.date(2027, 5, 31), name="May Expiry")
        verified_login(client, admin_user)  # the zone is read at sign-in
        page = client.get("/admin/institutions/institution/?expiry=this-month")

    assert page.status_code == 200
    assert "June Expiry" in page.text and "May Expiry" not in page.text


# --------------------------------------------------------------------------
# One owner mail a day: the mail server down for 30 hours across midnight
# --------------------------------------------------------------------------


class DownBackend(LocmemBackend):
    down = False

    def send_messages(self, messages):
        if DownBackend.down:
            raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
        return super().send_messages(messages)


def test_after_30_hours_without_a_mail_server_each_owner_gets_one_summary_a_day_and_loses_nothing(settings):
    settings.EMAIL_BACKEND = "tests.credentials.test_days.DownBackend"
    start = dt.datetime(2027, 9, 1, 8, 0, tzinfo=dt.UTC)
    olivia, paul = make_owner("olivia"), make_owner("paul", zone="America/New_York")
    with time_machine.travel(start, tick=False) as clock:
        accepted = start - dt.timedelta(days=60)
        for n, owner in enumerate((olivia, paul, olivia, paul)):
            # Steps due on 1, 2 and 3 Sep: news for each owner every day.
            customer(zone="UTC", expires_on=dt.date(2027, 9, 15 + n % 2), owner=owner, accepted_at=accepted)
            customer(zone="UTC", expires_on=dt.date(2027, 9, 9 + n % 2), owner=owner, accepted_at=accepted)
        DownBackend.down = True
        for hour in range(24 * 4):  # hourly runs and drains, as beat and the sweep do
            clock.move_to(start + dt.timedelta(hours=hour))
            DownBackend.down = hour < 30  # down from 08:00 on 1 Sep to 14:00 on 2 Sep
            run = reminders_send_due(scheduled=True)
            outbox.outbox_deliver_due(now=run.now)
            # Retries are jittered backoffs: let every retry that is due by now go.
            outbox.outbox_deliver_due(now=timezone.now() + dt.timedelta(hours=2))

    summaries = Notice.objects.filter(kind=Notice.Kind.OWNER_SUMMARY)
    sent = list(summaries.filter(state=Notice.State.SENT).order_by("sent_at"))
    # Each owner: exactly one summary mail per day of theirs once the server was back, none twice a day.
    per_owner_day = Counter((n.user_id, n.sent_at.astimezone(owners.owner_zone(n.user)).date()) for n in sent)
    assert max(per_owner_day.values()) == 1
    mails = Counter(m.to[0] for m in mail.outbox if "of your institutions" in m.subject)
    assert mails == {olivia.email: len([n for n in sent if n.user_id == olivia.pk]), paul.email: mails[paul.email]}
    # The day of the outage: its summary was superseded into the next day's, which says everything.
    assert summaries.filter(state=Notice.State.SUPERSEDED, last_error__contains="carried into").count() == 2
    assert set(summaries.values_list("state", flat=True)) == {Notice.State.SENT, Notice.State.SUPERSEDED}
    told = {}
    for notice in sent:
        body = next(
            m.body for m in mail.outbox if m.to == [notice.user.email] and notice.day.strftime("%-d %b") in m.body
        )
        told.setdefault(notice.user_id, []).append(body)
    for reminder in Notice.objects.filter(kind=Notice.Kind.REMINDER, state=Notice.State.SENT).select_related(
        "credential", "institution"
    ):
        owner_id = reminder.institution.account_owner_id
        assert any(f"key {reminder.credential.hint}" in body for body in told[owner_id]), reminder
