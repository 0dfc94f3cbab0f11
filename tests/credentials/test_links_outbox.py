"""Submission links through the outbox, with a real SMTP server on loopback that refuses, then accepts.

A bulk send caught by an outage, a "lost the link?" asked while the mail
server is down, a staff click while it is down, a sender killed after the
server took the message: every institution ends with exactly one working
link (the killed sender: one duplicate at most, and the link that works is
the one mailed last). Time is moved with time-machine, never waited. On
PostgreSQL (CI, or DATABASE_URL) these run against it.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from unittest import mock

import pytest
from django.urls import reverse
from django.utils import timezone

from credentials import tasks
from credentials.models import AuditEvent, LinkBatchItem, Notice, SubmissionLink
from credentials.services import notices, outbox
from credentials.services.links import (
    link_batch_create,
    link_batch_progress,
    link_request_answers,
    link_request_record,
    submission_link_get,
)
from institutions.models import Contact, Institution
from tests.credentials.test_outbox import broker, clock, smtp  # noqa: F401  (fixtures)

TOKEN = re.compile(r"/k/([A-Za-z0-9_-]+)/")


@pytest.fixture
def mails(smtp):  # noqa: F811  (the imported fixture)
    """The smtp fixture's server, also keeping each accepted message: (recipients, text)."""
    kept: list[tuple[tuple[str, ...], str]] = []
    original = smtp.handle_DATA

    async def handle_DATA(server, session, envelope):  # aiosmtpd looks the handler's method up by this name
        answer = await original(server, session, envelope)
        if answer.startswith("250"):
            kept.append((tuple(envelope.rcpt_tos), envelope.original_content.decode(errors="replace")))
        return answer

    smtp.handle_DATA = handle_DATA
    smtp.kept = kept
    return smtp


def tokens_in(text: str) -> set[str]:
    # Quoted-printable may wrap a long line with "=\n"; the text part is short enough not to.
    return set(TOKEN.findall(text.replace("=\r\n", "").replace("=\n", "")))


def make_colleges(n: int) -> list[Institution]:
    colleges = Institution.objects.bulk_create(
        Institution(name=f"College {i:02d}", slug=f"college-{i:02d}", canvas_domain=f"c{i:02d}.instructure.com")
        for i in range(n)
    )
    Contact.objects.bulk_create(
        Contact(institution=inst, name="Admin", email=f"admin@{inst.slug}.example.edu") for inst in colleges
    )
    return colleges


def sweep(broker) -> None:  # noqa: F811
    tasks.sweep_notices.apply()
    broker.drain()


def assert_one_working_link_each(mails, colleges) -> None:
    """Each college's contact received exactly one mail, and its link opens the college's page."""
    per_address = Counter(address for rcpt, _ in mails.kept for address in rcpt)
    assert per_address == {f"admin@{c.slug}.example.edu": 1 for c in colleges}
    for (address,), text in mails.kept:
        (token,) = tokens_in(text)
        link = submission_link_get(token=token)
        assert link is not None and address == f"admin@{link.institution.slug}.example.edu"


@pytest.mark.django_db(transaction=True)
def test_a_bulk_send_caught_by_an_smtp_outage_ends_with_one_working_link_per_institution(
    mails,
    clock,  # noqa: F811
    broker,  # noqa: F811
    client,
    make_staff,
    verified_login,
):
    colleges = make_colleges(50)
    staff = make_staff(None, is_superuser=True)  # the roles are data the transactional flush removes
    verified_login(client, staff)
    batch = link_batch_create(institution_ids=[c.pk for c in colleges], created_by=staff)
    progress_url = reverse("admin:institutions_institution_link_batch", args=[batch.pk])
    assert len(broker.messages) == 50  # one delivery task per institution, queued at commit

    clock.shift(dt.timedelta(seconds=10))  # 50 at 5 a second: all due
    for position, (_, args) in enumerate(list(broker.messages)):
        if position == 20:
            mails.down = True  # the mail server starts refusing mid-batch
        tasks.deliver_notice.apply(args=args)
    broker.messages.clear()
    assert len(mails.kept) == 20
    progress = link_batch_progress(batch=batch)
    assert (progress["sent"], progress["pending"]) == (20, 30)
    assert SubmissionLink.objects.count() == 20  # a refused send leaves no link behind
    assert Notice.objects.filter(state=Notice.State.PENDING, attempts=1).exclude(last_error="").count() == 30
    page = client.get(progress_url).content.decode()
    assert "Submission links: 20 of 50 done" in page
    assert page.count("waiting to retry (1 attempt;") == 30 and "the mail server had a local error" in page

    for _ in range(24):  # two hours down, the sweep every five minutes
        clock.shift(dt.timedelta(minutes=5))
        sweep(broker)
    assert len(mails.kept) == 20
    mails.down = False
    # Up again: within NOTICE_RETRY_MAX (4 h) of the last refusal every backed-off notice has had its turn.
    for _ in range(54):  # four and a half hours, the sweep every five minutes
        clock.shift(dt.timedelta(minutes=5))
        sweep(broker)

    assert_one_working_link_each(mails, colleges)
    assert SubmissionLink.objects.count() == 50
    assert link_batch_progress(batch=batch) == {
        "pending": 0,
        "sending": 0,
        "sent": 50,
        "cancelled": 0,
        "superseded": 0,
        "failed": 0,
    }
    assert AuditEvent.objects.filter(kind=AuditEvent.Kind.LINK_CREATED, actor=staff).count() == 50
    verified_login(client, staff)  # hours later: the admin session has timed out
    page = client.get(progress_url).content.decode()
    assert "Submission links: 50 of 50 done" in page and "waiting to retry (" not in page and "Not sent" not in page


@pytest.mark.django_db(transaction=True)
def test_a_bulk_send_skips_those_without_a_contact_and_those_paused_before_delivery(mails, clock, broker):  # noqa: F811
    colleges = make_colleges(3)
    Contact.objects.filter(institution=colleges[1]).delete()
    batch = link_batch_create(institution_ids=[c.pk for c in colleges])
    Institution.objects.filter(pk=colleges[2].pk).update(status=Institution.Status.PAUSED)

    clock.shift(dt.timedelta(seconds=1))
    broker.drain()

    assert [rcpt for rcpt, _ in mails.kept] == [("admin@college-00.example.edu",)]
    by_college = dict(LinkBatchItem.objects.values_list("institution_id", "notice__state"))
    assert by_college == {colleges[0].pk: "sent", colleges[1].pk: "cancelled", colleges[2].pk: "superseded"}
    assert SubmissionLink.objects.count() == 1
    progress = link_batch_progress(batch=batch)
    assert (progress["sent"], progress["cancelled"], progress["superseded"]) == (1, 1, 1)


@pytest.mark.django_db(transaction=True)
def test_a_link_requested_while_smtp_is_down_arrives_later_and_works(mails, clock, broker, client, settings):  # noqa: F811
    (college,) = make_colleges(1)
    mails.down = True

    request_id = link_request_record(email="Admin@College-00.example.edu", ip_address="192.0.2.9")
    broker.drain()  # the request is answered: a link notice, whose send the mail server refuses

    notice = Notice.objects.get(kind=Notice.Kind.SUBMISSION_LINK)
    assert notice.pk in link_request_answers(request_notice_id=request_id)
    assert (notice.state, notice.attempts) == (Notice.State.PENDING, 1)
    assert notice.payload == {
        "reason": "request",
        "days": settings.SUBMISSION_LINK_DAYS,
        "created_by": None,
        "ip_address": "192.0.2.9",
        "to": "admin@college-00.example.edu",
    }
    assert not SubmissionLink.objects.exists() and mails.kept == []

    clock.shift(dt.timedelta(minutes=45))
    sweep(broker)
    assert mails.kept == []
    mails.down = False
    for _ in range(12):
        clock.shift(dt.timedelta(minutes=5))
        sweep(broker)

    assert_one_working_link_each(mails, [college])
    (token,) = tokens_in(mails.kept[0][1])
    link = SubmissionLink.objects.get()
    # Made when the mail went out, so it is valid for its full term from then.
    assert link.expires_at - link.created_at == dt.timedelta(days=settings.SUBMISSION_LINK_DAYS)
    assert link.created_at > notice.created_at + dt.timedelta(minutes=45)
    assert client.get(reverse("credentials:submit", kwargs={"token": token})).status_code == 200
    assert AuditEvent.objects.get(kind=AuditEvent.Kind.LINK_CREATED).ip_address == "192.0.2.9"


@pytest.mark.django_db(transaction=True)
def test_a_staff_send_while_smtp_is_down_says_it_will_be_retried_and_arrives(
    mails,
    clock,  # noqa: F811
    broker,  # noqa: F811
    client,
    make_staff,
    verified_login,
):
    (college,) = make_colleges(1)
    staff = make_staff(None, is_superuser=True)  # the roles are data the transactional flush removes
    verified_login(client, staff)
    mails.down = True

    response = client.post(
        reverse("admin:institutions_institution_send_link", args=[college.pk]), {"confirm": "yes"}, follow=True
    )

    assert "retried automatically" in response.content.decode()
    assert not SubmissionLink.objects.exists()
    mails.down = False
    clock.shift(dt.timedelta(minutes=5))
    sweep(broker)
    assert_one_working_link_each(mails, [college])
    assert SubmissionLink.objects.get().created_by == staff


@pytest.mark.django_db(transaction=True)
def test_a_sender_killed_after_the_server_took_the_link_sends_once_more_and_the_last_link_works(
    mails,
    clock,  # noqa: F811
    broker,  # noqa: F811
    settings,
):
    (college,) = make_colleges(1)
    batch = link_batch_create(institution_ids=[college.pk])
    (notice_id,) = batch.items.values_list("notice_id", flat=True)
    broker.messages.clear()
    # Killed after the mail server took the message, before the outbox recorded it.
    with mock.patch.object(notices, "notice_mark_sent", side_effect=SystemExit("kill -9")):
        with pytest.raises(SystemExit):
            tasks.deliver_notice.apply(args=[notice_id], throw=True)
    assert len(mails.kept) == 1 and Notice.objects.get(pk=notice_id).state == Notice.State.SENDING

    clock.shift(settings.NOTICE_LEASE + dt.timedelta(minutes=1))
    sweep(broker)
    sweep(broker)

    assert len(mails.kept) == 2  # the one in flight again, and no more
    first, second = (tokens_in(text).pop() for _, text in mails.kept)
    # The killed sender's transaction never committed: its link does not exist; the resent one works.
    assert submission_link_get(token=first) is None and submission_link_get(token=second) is not None
    assert SubmissionLink.objects.count() == 1
    assert Notice.objects.get(pk=notice_id).state == Notice.State.SENT


@pytest.mark.django_db
def test_a_sweep_after_an_outage_paces_the_links_it_requeues_at_the_bulk_rate(
    clock,  # noqa: F811
    broker,  # noqa: F811
    settings,
    django_capture_on_commit_callbacks,
):
    settings.LINK_BULK_PER_SECOND = 4
    colleges = make_colleges(12)
    link_batch_create(institution_ids=[c.pk for c in colleges])
    broker.messages.clear()
    broker.countdowns.clear()
    # The outage is over: every link's retry falls due at the same moment.
    Notice.objects.update(attempts=1, last_error="SMTPServerDisconnected", next_attempt_at=timezone.now())

    with django_capture_on_commit_callbacks(execute=True):
        assert outbox.outbox_enqueue_due() == 12

    ids = Notice.objects.order_by("next_attempt_at", "pk").values_list("pk", flat=True)
    assert [broker.countdowns[(pk,)] for pk in ids] == [n / 4 for n in range(12)]  # 4 a second, as the first send
