"""A year of the registry in one test: 200 institutions, days with no run, days with the mail server down.

Runs the daily reminder run at 09:00 (except on the days with no run) and
the outbox's drain every four hours (the sweep's stand-in), moving time with
time-machine. At the end: zero lost notices, zero duplicates, every lapse
preceded by its reminder series, every owner told (one summary a day at
most), no reminder past the horizon after a lapse, none within 24 hours of
a key's acceptance unless it expires within them.
"""

from __future__ import annotations

import datetime as dt
import random
import smtplib
from collections import Counter

import pytest
import time_machine
from django.contrib.auth import get_user_model
from django.core import mail
from django.core.mail.backends.locmem import EmailBackend as LocmemBackend
from django.utils import timezone

from credentials import days
from credentials.models import CD2Credential, Notice, ReminderLog
from credentials.services import outbox
from credentials.services.keys import credential_create
from credentials.validators import CleanKey
from institutions.models import Contact, Institution
from tests.conftest import PASSED_CHECK, reminders_run

START = dt.datetime(2027, 1, 4, 6, 0, tzinfo=dt.UTC)
INSTITUTIONS = 200
NO_RUN_DAYS = {50, 51, 52, 120, 121}
# Days the mail server refuses everything from 09:00 until (hour) that day.
SMTP_DOWN = {80: 24, 81: 11, 200: 19, 290: 23}
# Days a customer hands in a short key at 10:00, after that day's run: one of a week, one that expires tomorrow.
FRESH_KEY_DAYS = (30, 151, 262)


class SwitchedBackend(LocmemBackend):
    down = False

    def send_messages(self, messages):
        if SwitchedBackend.down:
            raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
        return super().send_messages(messages)


def add_key(institution, *, expires_on: dt.date, n: int) -> CD2Credential:
    return credential_create(
        institution=institution,
        key=CleanKey(
            client_id=f"us-east-1#0a1b2c3d-0000-4000-8000-{n:012d}", secret="secret-Xy9", expires_on=expires_on
        ),
        source=CD2Credential.Source.ADMIN,
        status=CD2Credential.Status.ACTIVE,
        check=PASSED_CHECK,
    )


@pytest.mark.django_db
def test_a_simulated_year_loses_no_notice_and_duplicates_none(settings):
    settings.EMAIL_BACKEND = "tests.credentials.test_outbox_year.SwitchedBackend"
    rng = random.Random(11)
    renew_on: dict[int, int] = {}  # institution id -> day it hands over a new key
    first_keys: list[int] = []
    fresh_keys: dict[int, int] = {}  # key id -> days it ran for when handed in
    with time_machine.travel(START, tick=False) as clock:
        today = timezone.localdate()
        owners = [
            get_user_model().objects.create_user(username=f"owner{n}", email=f"owner{n}@edpotential.example")
            for n in range(5)
        ]
        for n in range(INSTITUTIONS):
            institution = Institution.objects.create(
                name=f"College {n}", slug=f"c{n}", canvas_domain=f"c{n}.instructure.com", account_owner=owners[n % 5]
            )
            Contact.objects.create(institution=institution, name="A", email=f"admin@c{n}.example.edu")
            expires_in = rng.randint(70, 300)
            first_keys.append(add_key(institution, expires_on=today + dt.timedelta(days=expires_in), n=n + 1).pk)
            plan = n % 4
            if plan == 0:
                renew_on[institution.pk] = expires_in - rng.randint(2, 20)  # in time
            elif plan == 1:
                renew_on[institution.pk] = expires_in + rng.randint(1, 30)  # after the lapse
            # plans 2 and 3: never answer

        for day in range(365):
            for institution_id, renewal_day in renew_on.items():
                if renewal_day == day:
                    add_key(
                        Institution.objects.get(pk=institution_id),
                        expires_on=timezone.localdate() + dt.timedelta(days=365),
                        n=1000 + institution_id,
                    )
            clock.move_to(START + dt.timedelta(days=day, hours=3))  # 09:00 UTC
            SwitchedBackend.down = day in SMTP_DOWN
            if day not in NO_RUN_DAYS:
                reminders_run()
            if day in FRESH_KEY_DAYS:
                clock.move_to(START + dt.timedelta(days=day, hours=4))  # 10:00 UTC
                for run_for in (7, 1):
                    n = len(fresh_keys)
                    fresh = Institution.objects.create(
                        name=f"Fresh {n}", slug=f"f{n}", canvas_domain=f"f{n}.instructure.com", account_owner=owners[0]
                    )
                    Contact.objects.create(institution=fresh, name="A", email=f"admin@f{n}.example.edu")
                    expires_on = timezone.localdate() + dt.timedelta(days=run_for)
                    fresh_keys[add_key(fresh, expires_on=expires_on, n=5000 + n).pk] = run_for
            for hour in range(11, 24, 4):
                clock.move_to(START + dt.timedelta(days=day, hours=hour - 6))
                SwitchedBackend.down = day in SMTP_DOWN and hour < SMTP_DOWN[day]
                outbox.outbox_deliver_due()
        SwitchedBackend.down = False
        clock.shift(dt.timedelta(days=1))
        outbox.outbox_deliver_due()

    # Zero lost: every notice was delivered or deliberately superseded.
    states = Counter(Notice.objects.values_list("state", flat=True))
    assert set(states) <= {Notice.State.SENT, Notice.State.SUPERSEDED}, states
    assert states[Notice.State.SENT] > 1000
    # Zero duplicates: one mail per notice sent, one notice per (key, step).
    reminder_mails = [m for m in mail.outbox if "Canvas Data 2 key for" in m.subject]
    assert len(reminder_mails) == Notice.objects.filter(kind="reminder", state="sent").count()
    per_step = Counter(ReminderLog.objects.values_list("credential_id", "threshold"))
    assert max(per_step.values()) == 1
    # Every lapse was preceded by the reminder series (each step sent, or skipped on a day with no run).
    end = (START + dt.timedelta(days=365)).date()
    lapsed = [  # first keys that ran out: their institution did not renew in time (plans 1 to 3)
        key
        for key in CD2Credential.objects.filter(expires_on__lt=end, pk__in=first_keys).select_related("institution")
        if int(key.institution.slug[1:]) % 4 != 0
    ]
    assert len(lapsed) > 50
    for key in lapsed:
        steps = dict(key.reminders.values_list("threshold", "notice__state"))
        for threshold in (60, 30, 14, 7, 3, 1, 0):
            assert threshold in steps, (key.institution.name, steps)
        assert sum(1 for t, s in steps.items() if t >= 0 and s == "sent") >= 5
        # After the lapse: weekly for six weeks, then monthly; never more often.
        after = sorted(-t for t in steps if t < 0)
        assert all((t <= 42 and t % 7 == 0) or (t - 42) % 30 == 0 for t in after), after
    # The owner was told: every reminder sent falls in the window of a summary sent to its owner
    # (a day whose summary could not go out is carried into the next day's).
    windows: dict[int, list[tuple[dt.datetime, dt.datetime]]] = {}
    for summary in Notice.objects.filter(kind="owner_summary", state="sent"):
        windows.setdefault(summary.user_id, []).append(
            (dt.datetime.fromisoformat(summary.payload["since"]), summary.as_of)
        )
    untold = [
        (owner_id, created_at)
        for owner_id, created_at in Notice.objects.filter(kind="reminder", state="sent").values_list(
            "institution__account_owner_id", "created_at"
        )
        if not any(since < created_at <= until for since, until in windows.get(owner_id, []))
    ]
    assert untold == []
    summaries_per_owner_day = Counter(Notice.objects.filter(kind="owner_summary").values_list("user_id", "day"))
    assert max(summaries_per_owner_day.values()) == 1
    summary_mails = Counter(
        (user_id, sent_at.date())
        for user_id, sent_at in Notice.objects.filter(kind="owner_summary", state="sent").values_list(
            "user_id", "sent_at"
        )
    )
    assert summary_mails and max(summary_mails.values()) == 1
    assert Notice.objects.filter(kind="owner_summary", state="superseded").exists()  # the day of the outage

    # No reminder beyond the horizon after a lapse; some keys did reach it.
    sent = Notice.objects.filter(kind="reminder", state="sent").select_related("credential__institution")
    for notice in sent:
        key = notice.credential
        assert days.institution_today(key.institution, notice.created_at) <= days.reminders_end_on(key.expires_on)
    ended = [key for key in lapsed if days.reminders_end_on(key.expires_on) < end]
    assert len(ended) > 20
    for key in ended:
        last = max(key.reminders.filter(notice__state="sent").values_list("notice__created_at", flat=True))
        assert last.date() <= days.reminders_end_on(key.expires_on)

    # None within 24 hours of a key's acceptance, unless it expires within them.
    for notice in sent:
        key = notice.credential
        quiet_until = key.submitted_at + dt.timedelta(hours=24)  # every key here was active when handed in
        if notice.created_at < quiet_until:
            assert key.expires_on <= days.institution_today(key.institution, quiet_until), key
    assert len(fresh_keys) == 2 * len(FRESH_KEY_DAYS)
    for key_id, ran_for in fresh_keys.items():
        steps = dict(ReminderLog.objects.filter(credential_id=key_id).values_list("threshold", "notice__state"))
        if ran_for == 7:
            # Handed in at 10:00, the 7-day step was due that day (in the quiet day): the 3-day step comes first.
            assert 7 not in steps and steps.get(3) == "sent", steps
        else:
            # It expires the next day, inside the quiet day: the next morning's run reminds (on its last day).
            assert steps.get(0) == "sent", steps
