from __future__ import annotations

import datetime as dt
import email
import smtplib
import threading
from io import StringIO
from unittest import mock

import icalendar
import pytest
import time_machine
from django.contrib.auth import get_user_model
from django.core import mail
from django.core.mail.backends.locmem import EmailBackend as LocmemBackend
from django.core.management import call_command
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from api.models import ServiceAccount
from credentials import selectors
from credentials.days import zone_days
from credentials.models import CD2Credential, Notice, ReminderLog, SubmissionLink
from credentials.selectors import reminder_step
from credentials.services import digest, jobs, notices, outbox, reminders
from credentials.services.keys import credential_create
from credentials.services.links import submission_link_get
from credentials.services.reminders import reminder_send_now, reminders_decide
from credentials.tasks import deliver_notice, deliver_notices
from credentials.validators import CleanKey
from institutions.models import Contact, Institution
from tests.conftest import PASSED_CHECK, PLANTED_SECRET, accepted_earlier, reminders_run

START = dt.datetime(2027, 9, 1, 9, 0, tzinfo=dt.UTC)
PLANTED_CLIENT_ID = "us-east-1#0a1b2c3d-4e5f-4000-8000-00000000abcd"


@pytest.fixture
def clock():
    with time_machine.travel(START, tick=False) as traveller:
        yield traveller


@pytest.fixture
def owner(db):
    return get_user_model().objects.create_user(
        username="olivia", email="olivia@edpotential.example", first_name="Olivia", last_name="Owner", is_staff=True
    )


@pytest.fixture
def served(institution, owner):
    institution.account_owner = owner
    institution.save()
    Contact.objects.create(
        institution=institution, name="Quiet Person", email="quiet@northfield.example.edu", receives_reminders=False
    )
    return institution


def add_key(institution, *, days: int, client_id: str | None = None, secret: str | None = None) -> CD2Credential:
    return accepted_earlier(
        credential_create(
            institution=institution,
            key=CleanKey(
                client_id=client_id or f"us-east-1#0a1b2c3d-0000-4000-8000-{CD2Credential.objects.count() + 1:012d}",
                secret=secret or "secret-value-Xy9",
                expires_on=timezone.localdate() + dt.timedelta(days=days),
            ),
            source=CD2Credential.Source.ADMIN,
            status=CD2Credential.Status.ACTIVE,
            check=PASSED_CHECK,
        )
    )


def reminder_mails():
    return [m for m in mail.outbox if "Canvas Data 2 key for" in m.subject and not m.subject.startswith("Heads-up")]


def run_each_day(clock, days: int) -> dict[int, list[str]]:
    """Run the daily job for `days` days; {day index: subjects sent that day}."""
    sent = {}
    for day in range(days):
        before = len(reminder_mails())
        reminders_run()
        subjects = [m.subject for m in reminder_mails()[before:]]
        if subjects:
            sent[day] = subjects
        clock.shift(dt.timedelta(days=1))
    return sent


# --------------------------------------------------------------------------
# The schedule
# --------------------------------------------------------------------------


def test_it_sends_each_threshold_once_on_its_day_then_weekly_after_expiry(clock, served):
    add_key(served, days=65)

    sent = run_each_day(clock, 65 + 22)

    days_left_on_send = sorted((65 - day for day in sent), reverse=True)
    assert days_left_on_send == [60, 30, 14, 7, 3, 1, 0, -7, -14, -21]
    assert all(len(subjects) == 1 for subjects in sent.values())
    assert sent[65 - 14] == ["Canvas Data 2 key for Northfield University expires in 14 days"]
    assert sent[65 - 1] == ["Action needed: Canvas Data 2 key for Northfield University expires tomorrow"]


def test_the_day_of_expiry_reminder_says_today(clock, served):
    add_key(served, days=0)

    run = reminders_run()

    assert run.sent == 1
    [message] = reminder_mails()
    assert message.subject == "Action needed: Canvas Data 2 key for Northfield University expires today"
    assert "expires today, Wednesday 1 Sep 2027" in " ".join(message.body.split())


def test_after_expiry_it_repeats_weekly_and_stops_when_a_new_key_is_active(clock, served):
    add_key(served, days=-6)
    clock.shift(dt.timedelta(days=1))
    reminders_run()
    assert [m.subject for m in reminder_mails()] == [
        "Action needed: Canvas Data 2 key for Northfield University expired 7 days ago"
    ]

    add_key(served, days=365)  # the customer hands over a new key
    sent = run_each_day(clock, 30)

    assert sent == {}
    assert not CD2Credential.objects.filter(expires_on__lt=timezone.localdate(), status="active").exists()


def test_a_sent_reminder_marks_the_institution_reminded_until_a_new_key_arrives(clock, served):
    add_key(served, days=14)
    served.refresh_from_db()
    assert served.key_reminded_unanswered is False

    assert reminders_run().sent == 1
    served.refresh_from_db()
    assert served.key_reminded_unanswered is True
    assert list(Institution.objects.filter(selectors.reminded_without_answer())) == [served]

    clock.shift(dt.timedelta(days=1))
    add_key(served, days=365)  # the answer
    served.refresh_from_db()
    assert served.key_reminded_unanswered is False
    assert not Institution.objects.filter(selectors.reminded_without_answer()).exists()
    assert selectors.key_summary_drift().count() == 0


def test_a_new_key_supersedes_a_reminder_already_claimed_for_the_old_one(clock, served):
    old = add_key(served, days=14)
    with mock.patch.object(jobs, "job_enqueue"):
        reminders.reminders_send_due()
    notice = Notice.objects.get(credential=old)
    add_key(served, days=365)

    assert outbox.notice_deliver(notice_id=notice.pk) is False
    assert reminder_mails() == []
    notice.refresh_from_db()
    assert notice.state == Notice.State.SUPERSEDED and notice.sent_at is None
    assert ReminderLog.objects.get(credential=old).notice == notice  # the step is skipped: its notice says so


def test_python_and_sql_agree_on_the_current_step(clock, make_institution, settings):
    institution = make_institution()
    expected = {}
    for days_left in range(-40, 70):
        key = add_key(make_institution(), days=days_left)
        expected[key.pk] = reminder_step(days_left=days_left)
    assert institution  # a served institution without a key is never due

    annotated = dict(
        CD2Credential.objects.annotate(step=selectors._step_expression(timezone.localdate())).values_list("pk", "step")
    )
    assert annotated == expected
    assert reminder_step(days_left=61) is None
    assert reminder_step(days_left=-9) == -7
    assert reminder_step(days_left=-3) == 0


def test_a_step_that_passed_before_the_key_arrived_is_not_sent(clock, served):
    add_key(served, days=40)  # handed over 20 days after its 60-day step

    assert reminders_run().due == 0
    clock.shift(dt.timedelta(days=10))
    assert reminders_run().sent == 1
    assert ReminderLog.objects.get().threshold == 30


def test_paused_and_offboarded_institutions_get_nothing(clock, served, make_institution):
    add_key(make_institution(status=Institution.Status.PAUSED), days=14)
    add_key(make_institution(status=Institution.Status.OFFBOARDED), days=-7)
    add_key(served, days=14)

    run = reminders_run()

    assert run.due == 1
    assert [m.to for m in reminder_mails()] == [["ada@northfield.example.edu"]]


# --------------------------------------------------------------------------
# Exactly once
# --------------------------------------------------------------------------


def test_it_sends_one_reminder_when_run_twice(clock, served):
    add_key(served, days=14)

    first = reminders_run()
    second = reminders_run()

    assert (first.sent, second.due, second.sent) == (1, 0, 0)
    assert len(reminder_mails()) == 1
    assert ReminderLog.objects.get().notice.sent_at is not None


def test_a_sender_killed_mid_send_is_sent_again_once_its_lease_runs_out(clock, served, settings):
    add_key(served, days=14)
    with mock.patch.object(jobs, "job_enqueue"):
        reminders.reminders_send_due()
    notice = Notice.objects.get(kind=Notice.Kind.REMINDER)
    # What a worker killed after claiming the notice leaves behind.
    assert notices.notice_claim(notice_id=notice.pk, now=timezone.now())

    assert outbox.outbox_deliver_due().count(Notice.Kind.REMINDER, "sent") == 0  # its sender may still be working
    clock.shift(settings.NOTICE_LEASE + dt.timedelta(seconds=1))
    assert outbox.outbox_deliver_due().count(Notice.Kind.REMINDER, "sent") == 1
    assert outbox.outbox_deliver_due().count(Notice.Kind.REMINDER, "sent") == 0

    assert len(reminder_mails()) == 1
    notice.refresh_from_db()
    assert (notice.state, notice.attempts) == (Notice.State.SENT, 2)
    log = ReminderLog.objects.get()
    assert log.threshold == 14 and log.notice.sent_at is not None


def test_a_week_of_missed_runs_sends_one_catch_up_email(clock, served):
    key = add_key(served, days=14)
    reminders_run()  # the 14-day step
    clock.shift(dt.timedelta(days=12))  # worker down while the 7- and 3-day steps came due

    run = reminders_run()

    assert (run.sent, run.skipped) == (1, 1)
    subjects = [m.subject for m in reminder_mails()]
    assert subjects[-1] == "Action needed: Canvas Data 2 key for Northfield University expires in 2 days"
    assert len(subjects) == 2
    logs = {log.threshold: log for log in ReminderLog.objects.filter(credential=key)}
    assert sorted(logs) == [3, 7, 14]
    # Recorded as skipped: the skipped step's notice, superseded, says why (staff read it as the step's delivery).
    assert logs[7].notice.state == Notice.State.SUPERSEDED and logs[7].notice.sent_at is None
    assert logs[7].delivery().startswith("Skipped: Not sent on time;") and "sent the 3-day step" in logs[7].delivery()
    assert reminders_run().due == 0
    assert Notice.objects.filter(credential=key, state=Notice.State.PENDING).count() == 0


def at_once(run, *, runs: int = 4) -> tuple[list, list]:
    """Start `runs` calls of run() in threads at the same instant (each its own connection): (results, errors)."""
    barrier = threading.Barrier(runs)
    results, errors = [], []

    def one():
        try:
            barrier.wait()
            results.append(run())
        except Exception as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=one) for _ in range(runs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, errors


@pytest.mark.django_db(transaction=True)
def test_two_runs_at_once_send_one_email(served, settings):
    if connection.vendor != "postgresql":
        pytest.skip("SQLite serialises writers; the race needs PostgreSQL")
    add_key(served, days=14)
    runs, errors = at_once(reminders_run)

    assert errors == []
    # Read once all have finished: one run's notice may be delivered by another's sender.
    assert sum(reminders.reminders_report(r).sent for r in runs) == 1
    assert len(reminder_mails()) == 1
    assert ReminderLog.objects.count() == 1


def listening_account() -> ServiceAccount:
    """A service account that hears every institution's key events by webhook (nothing is delivered here)."""
    return ServiceAccount.objects.create(
        name="sees-all",
        all_institutions=True,
        webhook_url="https://hooks.example/cd2",
        webhook_secret="whsec_test",
        webhook_secret_set_at=timezone.now(),
    )


def expiring_webhooks() -> list[Notice]:
    return list(Notice.objects.filter(kind=Notice.Kind.WEBHOOK, payload__body__type="key.expiring"))


def test_a_step_another_run_claimed_after_our_scan_is_skipped_and_the_rest_of_the_chunk_claimed_once(
    clock, make_institution
):
    add_due_institutions(make_institution, 5)
    listening_account()
    keys = list(CD2Credential.objects.order_by("pk"))
    taken = keys[2]
    decide_chunk = reminders._decide_chunk

    def raced(chunk, **kwargs):
        # Another run claims one key's step between our scan and our decision.
        assert taken in chunk
        ReminderLog.objects.create(credential=taken, threshold=14, claimed_at=timezone.now())
        return decide_chunk(chunk, **kwargs)

    with mock.patch.object(reminders, "_decide_chunk", raced):
        run = reminders_decide(today=timezone.localdate(), now=timezone.now())

    # Counted as the per-key path always counted: every key scanned is due, the taken one has no notice of ours.
    assert (run.due, run.skipped, run.superseded) == (5, 0, 0)
    assert len(run.notice_ids) == 4
    claimed = Notice.objects.filter(kind=Notice.Kind.REMINDER)
    assert sorted(claimed.values_list("pk", flat=True)) == sorted(run.notice_ids)
    assert sorted(claimed.values_list("credential_id", flat=True)) == sorted(k.pk for k in keys if k != taken)
    assert ReminderLog.objects.count() == 5
    assert ReminderLog.objects.get(credential=taken).delivery_notice() is None  # the other run's, untouched
    assert sorted(n.credential_id for n in expiring_webhooks()) == sorted(k.pk for k in keys if k != taken)
    # The next run finds nothing left to decide.
    assert reminders_decide(today=timezone.localdate(), now=timezone.now()).due == 0


@pytest.mark.django_db(transaction=True)
def test_four_runs_deciding_the_same_chunk_at_once_claim_each_step_once(make_institution):
    if connection.vendor != "postgresql":
        pytest.skip("SQLite serialises writers; the race needs PostgreSQL")
    add_due_institutions(make_institution, 20)
    listening_account()
    runs, errors = at_once(lambda: reminders_decide(today=timezone.localdate(), now=timezone.now()))

    assert errors == []
    assert sum(len(r.notice_ids) for r in runs) == 20
    assert ReminderLog.objects.count() == 20
    assert Notice.objects.filter(kind=Notice.Kind.REMINDER).count() == 20
    assert len(expiring_webhooks()) == 20


# --------------------------------------------------------------------------
# Retries through the task
# --------------------------------------------------------------------------


class FlakyBackend(LocmemBackend):
    """Fails the first `failures` sends like a mail server that hangs up, then delivers."""

    failures = 0
    calls = 0

    def send_messages(self, messages):
        FlakyBackend.calls += 1
        if FlakyBackend.calls <= FlakyBackend.failures:
            raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
        return super().send_messages(messages)


@pytest.fixture
def flaky(settings):
    settings.EMAIL_BACKEND = "tests.credentials.test_reminders.FlakyBackend"
    FlakyBackend.calls = 0
    return FlakyBackend


def claim_one(served, days=14) -> Notice:
    add_key(served, days=days)
    with mock.patch.object(jobs, "job_enqueue_on_commit") as queued:
        run = reminders.reminders_send_due()
    assert run.queued == 2  # the reminder and the owner's summary
    notice = Notice.objects.get(kind=Notice.Kind.REMINDER)
    assert any(notice.pk in c.kwargs["args"][0] for c in queued.call_args_list)
    # These tests follow the reminder alone through the flaky server.
    Notice.objects.filter(kind=Notice.Kind.OWNER_SUMMARY).delete()
    return notice


def sweep_and_deliver(queued) -> None:
    """What beat and the worker do: the sweep queues due notices, the worker delivers each."""
    queued.reset_mock()
    outbox.outbox_sweep()
    for call in queued.call_args_list:
        assert call.args == (jobs.DELIVER_NOTICES,)
        deliver_notices.apply(args=call.kwargs["args"])


def test_smtp_failing_twice_then_working_delivers_one_email(clock, served, flaky):
    flaky.failures = 2
    notice = claim_one(served)

    with mock.patch.object(jobs, "job_enqueue_on_commit") as queued:
        assert deliver_notice.apply(args=[notice.pk]).result is False
        for _ in range(3):
            clock.shift(dt.timedelta(minutes=5))
            sweep_and_deliver(queued)

    assert flaky.calls == 3
    assert len(reminder_mails()) == 1
    notice.refresh_from_db()
    assert notice.state == Notice.State.SENT and notice.attempts == 3
    log = ReminderLog.objects.get()
    assert log.notice == notice and log.delivery() == "Sent" and log.attempts() == 3
    # The two failed attempts rolled their links back: one link, the one mailed.
    assert SubmissionLink.objects.filter(reason="reminder").count() == 1


def test_a_reminder_that_never_gets_through_is_failed_for_staff_after_the_retry_window(clock, served, flaky, settings):
    flaky.failures = 10_000
    notice = claim_one(served)

    with mock.patch.object(jobs, "job_enqueue_on_commit") as queued:
        deliver_notice.apply(args=[notice.pk])
        for _ in range(60):  # 60 hours of a mail server refusing
            clock.shift(dt.timedelta(hours=1))
            sweep_and_deliver(queued)
        notice.refresh_from_db()
        assert notice.state == Notice.State.PENDING  # 48 hours and more: still retried
        for _ in range(16):
            clock.shift(dt.timedelta(hours=1))
            sweep_and_deliver(queued)

    notice.refresh_from_db()
    assert notice.state == Notice.State.FAILED and notice.sent_at is None
    assert "SMTPServerDisconnected" in notice.last_error
    assert flaky.calls == notice.attempts and 15 < notice.attempts < 40  # backoff: not one try a minute
    log = ReminderLog.objects.get()
    assert log.notice == notice and log.delivery().startswith("Failed: the mail server closed the connection")
    assert reminders_run().due == 0  # not retried behind staff's back
    assert reminder_mails() == []
    assert notices.notice_resend(notice_id=notice.pk)  # staff's one click
    flaky.failures = 0
    assert outbox.outbox_deliver_due().count(Notice.Kind.REMINDER, "sent") == 1
    assert len(reminder_mails()) == 1


def test_the_command_leaves_a_failed_send_in_the_outbox_for_its_retry_and_says_so(clock, served, flaky, inline_worker):
    flaky.failures = 1
    add_key(served, days=14)
    out, err = StringIO(), StringIO()

    call_command("send_expiry_reminders", "--wait", stdout=out, stderr=err)

    assert "1 due, 0 earlier step(s) skipped, 0 superseded; 1 owner summary(ies); 2 notice(s) queued" in out.getvalue()
    assert "Delivered: 0 reminder(s) sent, 1 failed, 0 superseded; 1 owner summary(ies) sent." in out.getvalue()
    assert "retried with backoff" in err.getvalue()
    notice = Notice.objects.get(kind=Notice.Kind.REMINDER)
    assert notice.state == Notice.State.PENDING and "SMTPServerDisconnected" in notice.last_error
    clock.shift(dt.timedelta(minutes=2))
    call_command("send_expiry_reminders", stdout=out, stderr=err)  # the next run queues the retry
    assert ReminderLog.objects.get().notice.state == Notice.State.SENT
    assert len(reminder_mails()) == 1


# --------------------------------------------------------------------------
# Recipients and the email
# --------------------------------------------------------------------------


def owner_mails():
    return [m for m in mail.outbox if m.subject.startswith("Canvas Data 2 keys today")]


def test_contacts_get_it_with_reply_to_the_owner_and_no_copy(clock, served):
    add_key(served, days=30)

    reminders_run()

    [message] = reminder_mails()
    assert message.to == ["ada@northfield.example.edu"]
    assert message.cc == []
    assert message.reply_to == ["olivia@edpotential.example"]


def test_the_owner_gets_one_summary_a_day_instead_of_copies(clock, served):
    add_key(served, days=7)

    reminders_run()
    reminders_run()

    [note] = owner_mails()
    assert note.to == ["olivia@edpotential.example"]
    assert note.subject == "Canvas Data 2 keys today: 1 of your institutions needs attention"
    assert "Northfield University: reminded: key" in note.body and "expires in 7 days" in note.body
    assert all("olivia@edpotential.example" not in m.cc for m in mail.outbox)


def test_without_contacts_the_owner_is_the_addressee(clock, make_institution, owner):
    lonely = make_institution(account_owner=owner)
    add_key(lonely, days=14)

    reminders_run()

    assert [(m.to, m.cc) for m in reminder_mails()] == [(["olivia@edpotential.example"], [])]


def test_the_email_has_the_date_steps_a_working_link_and_a_calendar_file(clock, served):
    served.timezone = "America/Chicago"
    served.save()
    key = add_key(served, days=14)

    reminders_run()

    [message] = reminder_mails()
    html = message.alternatives[0][0]
    for part in (message.body, html):
        assert "15 Sep 2027" in part
        assert key.hint in part
        assert "identity.instructure.com" in part
        assert "Institutional Use" in part
        assert "Olivia Owner" in part
    assert "09/15" not in message.body and "9/15/27" not in message.body
    token = message.body.split("/k/")[1].split("/")[0]
    link = submission_link_get(token=token)
    assert link is not None and link.institution == served and link.reason == "reminder"
    [(filename, content, mimetype)] = message.attachments
    assert (filename, mimetype) == ("cd2-key-expiry-northfield.ics", "text/calendar")
    event = icalendar.Calendar.from_ical(content).walk("VEVENT")[0]
    assert event.decoded("dtstart") == dt.date(2027, 9, 15)
    assert "Northfield University" in str(event.get("summary"))


def test_names_with_ampersands_are_not_html_escaped_in_the_text_parts(clock, make_institution):
    odd = make_institution(name="O'Neill & Sons College")
    Contact.objects.create(institution=odd, name="A", email="a@oneill.example.edu")
    add_key(odd, days=14)

    reminders_run()

    [message] = reminder_mails()
    assert message.subject == "Canvas Data 2 key for O'Neill & Sons College expires in 14 days"
    assert "O'Neill & Sons College gave EdPotential" in message.body
    assert "O&#x27;Neill &amp; Sons" in message.alternatives[0][0]


def test_the_secret_and_full_client_id_are_in_no_email_task_argument_or_log_line(
    clock, served, caplog, flaky, django_capture_on_commit_callbacks
):
    caplog.set_level("DEBUG")
    flaky.failures = 1
    add_key(served, days=7, client_id=PLANTED_CLIENT_ID, secret=PLANTED_SECRET)
    with (
        mock.patch("credentials.services.jobs.job_enqueue") as enqueue,
        django_capture_on_commit_callbacks(execute=True),
    ):
        reminders.reminders_send_due()
    task_args = [c.kwargs["args"] for c in enqueue.call_args_list if c.args == (jobs.DELIVER_NOTICES,)]
    assert [len(ids) for (ids,) in task_args] == [2]  # the reminder and the owner's summary, in one task
    for args in task_args:
        deliver_notices.apply(args=args)
    clock.shift(dt.timedelta(minutes=5))
    outbox.outbox_deliver_due()
    call_command("send_expiry_reminders", "--dry-run", stdout=StringIO())

    assert reminder_mails()
    raw = [m.message().as_bytes() for m in mail.outbox]
    for data in raw:
        text = data.decode()
        decoded = "".join(
            part.get_payload(decode=True).decode()
            for part in email.message_from_bytes(data).walk()
            if not part.is_multipart()
        )
        for secret in (PLANTED_SECRET, PLANTED_CLIENT_ID, "0a1b2c3d-4e5f-4000-8000"):
            assert secret not in text and secret not in decoded
    for secret in (PLANTED_SECRET, PLANTED_CLIENT_ID):
        assert secret not in repr(task_args)
        assert all(secret not in record.getMessage() for record in caplog.records)
    assert any("not sent yet" in record.getMessage() for record in caplog.records)  # the logs were captured


# --------------------------------------------------------------------------
# Doors: dry run, command, "send now"
# --------------------------------------------------------------------------


def test_a_dry_run_lists_who_would_get_what_and_sends_nothing(clock, served):
    add_key(served, days=14)
    out = StringIO()

    call_command("send_expiry_reminders", "--dry-run", stdout=out)

    key = CD2Credential.objects.get()
    assert (
        f"Northfield University: key {key.hint}, reminder 14 days before expiry -> ada@northfield.example.edu"
    ) in out.getvalue()
    assert "Owner's summary -> olivia@edpotential.example: 1 institution(s) reminded" in out.getvalue()
    assert "1 reminder(s) due, 1 owner summary(ies), nothing sent" in out.getvalue()
    assert mail.outbox == [] and ReminderLog.objects.count() == 0 and Notice.objects.count() == 0


def test_the_command_can_run_as_of_another_day(clock, served, inline_worker):
    add_key(served, days=40)
    out = StringIO()

    call_command("send_expiry_reminders", "--today", "2027-09-11", "--wait", stdout=out)

    assert "Reminders for 11 Sep 2027: 1 due" in out.getvalue()
    assert "Delivered: 1 reminder(s) sent, 0 failed" in out.getvalue()
    assert ReminderLog.objects.get().threshold == 30
    with pytest.raises(Exception, match="YYYY-MM-DD"):
        call_command("send_expiry_reminders", "--today", "11/10/2027")


def test_a_run_as_of_another_day_dates_the_link_the_wording_and_the_calendar_from_that_day(
    clock, served, settings, inline_worker
):
    # The real clock says 1 September 2027; the key expires 14 days after the simulated day.
    settings.SUBMISSION_LINK_DAYS = 10
    simulated = dt.date(2027, 12, 19)
    key = add_key(served, days=(simulated - START.date()).days + 14)

    call_command("send_expiry_reminders", "--today", simulated.isoformat(), stdout=StringIO())

    (message,) = reminder_mails()
    assert message.subject == "Canvas Data 2 key for Northfield University expires in 14 days"
    assert "until 29 Dec 2027" in message.body  # the link: 19 December + 10 days, not 11 September
    assert "11 September" not in message.body
    link = SubmissionLink.objects.get()
    assert timezone.localdate(link.created_at) == simulated
    assert timezone.localdate(link.expires_at) == dt.date(2027, 12, 29)
    assert timezone.localtime(link.created_at).time() == timezone.localtime().time()  # the wall clock, kept
    ((_, ics, _),) = message.attachments
    (event,) = icalendar.Calendar.from_ical(ics).walk("VEVENT")
    assert event.decoded("dtstamp").date() == simulated
    assert event.decoded("dtstart") == key.expires_on
    assert ReminderLog.objects.get(notice__state=Notice.State.SENT).threshold == 14


def test_a_dry_run_as_of_another_day_lists_what_that_day_sends(clock, served):
    add_key(served, days=(dt.date(2027, 12, 19) - START.date()).days + 7)
    out = StringIO()

    call_command("send_expiry_reminders", "--dry-run", "--today", "2027-12-19", stdout=out)

    assert "reminder 7 days before expiry" in out.getvalue()
    assert "Dry run for 19 Dec 2027: 1 reminder(s) due" in out.getvalue()
    assert mail.outbox == [] and SubmissionLink.objects.count() == 0


def test_send_now_sends_the_current_step_and_the_daily_run_does_not_repeat_it(clock, served, owner):
    key = add_key(served, days=14)

    result = reminder_send_now(credential=key, actor=owner)

    assert result.threshold == 14 and result.reminder is not None
    assert reminders_run().due == 0
    assert len(reminder_mails()) == 1
    assert SubmissionLink.objects.get().created_by == owner


def test_send_now_after_the_step_was_sent_sends_an_extra_one_and_keeps_the_schedule(clock, served):
    key = add_key(served, days=14)
    reminders_run()

    result = reminder_send_now(credential=key)

    assert result.threshold is None
    assert len(reminder_mails()) == 2
    assert ReminderLog.objects.count() == 1
    clock.shift(dt.timedelta(days=7))
    assert reminders_run().sent == 1  # the 7-day step still comes


def test_send_now_takes_over_a_step_whose_notice_gave_up_by_reopening_that_notice(clock, served):
    key = add_key(served, days=14)
    reminders.reminders_send_due()  # decided; the outbox gives it up (as after a day of refusals)
    notice = Notice.objects.get(reminder__credential=key)
    Notice.objects.filter(pk=notice.pk).update(
        state=Notice.State.FAILED, attempts=20, closed_at=timezone.now(), last_error="550 mailbox unavailable"
    )
    assert ReminderLog.objects.get().delivery() == "Failed: 550 mailbox unavailable"

    result = reminder_send_now(credential=key)

    notice.refresh_from_db()
    assert result.threshold == 14 and result.reminder == notice.reminder  # the step itself, not an extra one
    assert (notice.state, notice.attempts, notice.last_error) == (Notice.State.SENT, 21, "")
    assert ReminderLog.objects.get().delivery() == "Sent"
    assert Notice.objects.filter(kind=Notice.Kind.REMINDER).count() == 1
    assert len(reminder_mails()) == 1
    served.refresh_from_db()
    assert served.key_reminded_unanswered is True


def test_send_now_refuses_a_paused_institution(clock, served):
    key = add_key(served, days=14)
    served.status = Institution.Status.PAUSED
    served.save()

    with pytest.raises(ValueError, match="paused"):
        reminder_send_now(credential=key)


# --------------------------------------------------------------------------
# Scale
# --------------------------------------------------------------------------


def test_the_scan_query_count_does_not_grow_with_the_number_of_institutions(clock, make_institution):
    def queries_for_dry_run() -> int:
        with CaptureQueriesContext(connection) as captured:
            run = reminders_run(dry_run=True, chunk_size=50)
        return len(captured), run.due

    for _ in range(5):
        institution = make_institution()
        Contact.objects.create(institution=institution, name="C", email=f"c{institution.pk}@x.example.edu")
        add_key(institution, days=14)
        add_key(make_institution(), days=200)  # not due
    small = queries_for_dry_run()
    for _ in range(40):
        institution = make_institution()
        Contact.objects.create(institution=institution, name="C", email=f"c{institution.pk}@x.example.edu")
        add_key(institution, days=14)
        add_key(make_institution(), days=200)
    large = queries_for_dry_run()

    assert small[1] == 5 and large[1] == 45
    assert small[0] == large[0]


def test_a_reminder_run_and_the_digest_decrypt_no_secret(clock, served, monkeypatch, settings):
    add_key(served, days=14)
    decrypted = []

    def refuse(token, *, what="an encrypted value"):
        decrypted.append(what)
        raise AssertionError(f"decrypted {what}")

    from credentials import fields

    monkeypatch.setattr(fields, "decrypt_str", refuse)
    settings.STAFF_DIGEST_RECIPIENTS = ["staff@example.com"]

    assert reminders_run().sent == 1
    digest.staff_digest_send()
    assert Notice.objects.get(kind=Notice.Kind.STAFF_DIGEST).state == Notice.State.SENT
    assert decrypted == []
    assert len(reminder_mails()) == 1


# --------------------------------------------------------------------------
# Cost per reminder: queries and SMTP connections
# --------------------------------------------------------------------------


def add_due_institutions(make_institution, count: int, *, days: int = 14) -> None:
    for _ in range(count):
        institution = make_institution()
        Contact.objects.create(institution=institution, name="C", email=f"c{institution.pk}@x.example.edu")
        add_key(institution, days=days)


def test_each_reminder_sent_costs_a_fixed_small_number_of_queries(clock, make_institution):
    def queries_for_run(expected: int) -> int:
        with CaptureQueriesContext(connection) as captured:
            run = reminders_run()
        assert run.sent == expected
        return len(captured)

    add_due_institutions(make_institution, 3)
    three = queries_for_run(3)
    add_due_institutions(make_institution, 6)
    six = queries_for_run(6)
    per_reminder = (six - three) / 3

    # Deciding costs no query per reminder: a chunk's steps, notices and
    # key.expiring events are written in bulk (the test below). Delivering:
    # claim the notice, link (written with its recipients), its audit event,
    # notice sent, step sent, the institution's stored "reminded, no answer"
    # (6). The test's own transaction turns the send's atomic block into a
    # savepoint (2 more). Contacts and earlier steps come from the scan's
    # and the outbox page's prefetch, never queried again per reminder.
    assert per_reminder <= 6 + 2


def test_deciding_forty_due_keys_costs_the_same_queries_as_deciding_five(clock, make_institution):
    def queries_to_decide(expected: int) -> int:
        with CaptureQueriesContext(connection) as captured:
            run = reminders_decide(today=timezone.localdate(), now=timezone.now())
        assert run.due == len(run.notice_ids) == expected
        return len(captured)

    listening_account()  # the key.expiring events have a listener to write webhook notices for
    add_due_institutions(make_institution, 5)
    five = queries_to_decide(5)
    add_due_institutions(make_institution, 40)
    forty = queries_to_decide(40)

    # A chunk is decided in bulk: its steps, their notices, one look-up of
    # the listening accounts and their webhook notices, whatever its size
    # (key by key it was five queries a key: 36 and 246 here). The rest:
    # the scan's page and its two prefetches, the empty page that ends it,
    # the chunk's transaction and savepoint (4 under the test's transaction);
    # one empty scan for each other date the zones are on (days.zone_days).
    assert forty == five
    assert five <= 12 + len(zone_days(timezone.now())) - 1
    assert len(expiring_webhooks()) == 45


class CountingBackend(LocmemBackend):
    """A locmem backend that opens and closes like the SMTP one and counts connections.

    A send on a connection that is not open opens one just for that message
    and closes it again (django.core.mail.backends.smtp does the same).
    `breaks_on` lists send numbers (1-based) at which the server hangs up:
    that send fails and the connection stays dead until it is closed.
    """

    opened = 0
    sends = 0
    breaks_on: tuple[int, ...] = ()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.is_open = False
        self.dead = False

    def open(self):
        if self.is_open:
            return False
        CountingBackend.opened += 1
        self.is_open, self.dead = True, False
        return True

    def close(self):
        self.is_open = self.dead = False

    def send_messages(self, messages):
        created = self.open()
        try:
            CountingBackend.sends += 1
            if self.dead or CountingBackend.sends in CountingBackend.breaks_on:
                self.dead = True
                raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
            return super().send_messages(messages)
        finally:
            if created:
                self.close()


@pytest.fixture
def counting(settings):
    settings.EMAIL_BACKEND = "tests.credentials.test_reminders.CountingBackend"
    CountingBackend.opened = CountingBackend.sends = 0
    CountingBackend.breaks_on = ()
    return CountingBackend


def test_a_run_sends_a_page_of_reminders_over_one_smtp_connection(clock, make_institution, counting):
    add_due_institutions(make_institution, 3, days=14)
    add_due_institutions(make_institution, 2, days=7)  # these also send the owner a note (no owner here)

    run = reminders_run(chunk_size=50)

    assert run.sent == 5
    assert len(reminder_mails()) == 5
    assert counting.opened == 1


def test_a_connection_lost_mid_page_fails_that_reminder_and_the_rest_go_out_on_a_new_one(
    clock, make_institution, counting
):
    add_due_institutions(make_institution, 3, days=14)
    keys = list(CD2Credential.objects.order_by("pk"))
    counting.breaks_on = (2,)

    run = reminders_run(chunk_size=50)

    assert (run.sent, run.failed) == (2, 1)
    logs = {log.credential_id: log for log in ReminderLog.objects.all()}
    assert logs[keys[1].pk].delivery() == "Being sent"  # waits in the outbox for its retry
    assert "SMTPServerDisconnected" in logs[keys[1].pk].notice.last_error
    assert Notice.objects.get(credential=keys[1]).state == Notice.State.PENDING
    assert logs[keys[0].pk].notice.sent_at is not None and logs[keys[2].pk].notice.sent_at is not None
    assert {m.to[0] for m in reminder_mails()} == {
        f"c{keys[0].institution_id}@x.example.edu",
        f"c{keys[2].institution_id}@x.example.edu",
    }
    assert counting.opened == 2  # the dead connection was dropped, one new one for the rest
    # The failed send's link was rolled back with it: one link per reminder mailed.
    assert SubmissionLink.objects.filter(reason="reminder").count() == 2


def test_each_page_of_keys_opens_its_own_connection(clock, make_institution, counting):
    add_due_institutions(make_institution, 5, days=14)

    run = reminders_run(chunk_size=2)

    assert run.sent == 5
    assert counting.opened == 3
