"""The mails a decision makes go through the outbox: receipts, "your key stopped working", key-rejected, key-conflict.

Each is a notice written with the decision (a key stored, a key found
invalid) and delivered by the outbox, so a mail server that is down delays
them and loses none. The mail server is a real SMTP server on loopback
(aiosmtpd) that refuses while `down`, time is moved with time-machine and
the "beat path" drains a broker stand-in: the fixtures of test_outbox.py.
The keys are checked against the real fake CD2 gateway.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter

import pytest
from django.core import mail
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from credentials.cd2 import Verdict
from credentials.models import AuditEvent, CD2Credential, Notice, SubmissionLink
from credentials.services import outbox
from credentials.services.keys import credential_create
from credentials.services.links import submission_link_create
from credentials.services.pending import VerifyResult, credential_verify_pending
from credentials.services.submission import Door, Result, credential_submit, receipt_write
from credentials.services.verification import credential_verify
from credentials.validators import CleanKey
from institutions.models import Contact, Institution
from tests.conftest import PASSED_CHECK, PLANTED_CLIENT_ID, PLANTED_SECRET, reminders_run
from tests.credentials import test_outbox
from tests.credentials.test_outbox import add_key, beat_sweep, make_owner
from tests.credentials.test_submission_concurrency import RACERS, _post_at_once

# test_outbox.py's fixtures: the loopback SMTP server, the frozen clock, the broker stand-in.
smtp, clock, broker = test_outbox.smtp, test_outbox.clock, test_outbox.broker

DECIDED = (Notice.Kind.RECEIPT, Notice.Kind.KEY_INVALID, Notice.Kind.KEY_REJECTED, Notice.Kind.KEY_CONFLICT)


def make_institution(slug: str, *, owner, contact: str) -> Institution:
    institution = Institution.objects.create(
        name=slug.title(), slug=slug, canvas_domain=f"{slug}.instructure.com", account_owner=owner
    )
    Contact.objects.create(institution=institution, name="Admin", email=contact)
    return institution


def hand_over(link, *, email: str = "pat@prairie.example.edu"):
    return credential_submit(
        door=Door.customer(link=link, submitted_by="Pat", submitted_by_email=email),
        client_id=PLANTED_CLIENT_ID,
        secret=PLANTED_SECRET,
        expires_on=timezone.localdate() + dt.timedelta(days=365),
    )


def sweep_for(broker, clock, *, minutes: int) -> None:
    """The beat sweep every five minutes for `minutes`, time moved."""
    for _ in range(minutes // 5):
        clock.shift(dt.timedelta(minutes=5))
        beat_sweep(broker)


@pytest.fixture
def north(db):
    return make_institution("north", owner=make_owner("olivia"), contact="ada@north.example.edu")


@pytest.fixture
def prairie(db):
    return make_institution("prairie", owner=make_owner("paul"), contact="pat@prairie.example.edu")


# --------------------------------------------------------------------------
# The mail server down when the decisions are taken
# --------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_mail_server_down_when_a_receipt_and_a_key_invalid_mail_are_decided_loses_nothing_and_sends_each_once(
    smtp,
    clock,
    broker,
    cd2_gateway,
    north,
    prairie,
):
    dead = add_key(north, days=200)  # a key the gateway does not know: its daily check finds it deleted
    link = submission_link_create(institution=prairie).link
    smtp.down = True

    outcome = hand_over(link)
    result = credential_verify(credential_id=dead.pk)
    broker.drain()  # the deliver_notice tasks queued on commit: the mail server refuses both

    # What the customer handed over is stored and the link used up, mail server or not.
    assert outcome.result is Result.ACCEPTED
    stored = CD2Credential.objects.get(institution=prairie)
    assert (stored.status, stored.secret) == (CD2Credential.Status.ACTIVE, PLANTED_SECRET)
    link.refresh_from_db()
    assert link.used_at is not None
    assert result.verdict is Verdict.REJECTED
    dead.refresh_from_db()
    assert dead.status == CD2Credential.Status.INVALID
    # Nothing sent, both waiting for their retry, and the fresh link rolled back with the failed send.
    assert smtp.received == []
    waiting = Notice.objects.filter(kind__in=DECIDED).order_by("pk")
    assert [(n.kind, n.state, n.attempts) for n in waiting] == [
        (Notice.Kind.RECEIPT, Notice.State.PENDING, 1),
        (Notice.Kind.KEY_INVALID, Notice.State.PENDING, 1),
    ]
    assert all("451" in n.last_error and n.next_attempt_at > timezone.now() for n in waiting)
    assert not SubmissionLink.objects.filter(reason="key invalid").exists()
    # The same decisions again (a task delivered twice, a check run twice) write nothing new.
    assert credential_verify(credential_id=dead.pk) is None
    assert receipt_write(credential=stored, now=timezone.now()) is None
    assert Notice.objects.filter(kind__in=DECIDED).count() == 2

    sweep_for(broker, clock, minutes=120)  # two hours of refusals
    assert smtp.received == []
    assert Notice.objects.filter(kind__in=DECIDED, state=Notice.State.PENDING).count() == 2
    smtp.down = False
    sweep_for(broker, clock, minutes=300)  # the mail server is back

    per_address = Counter(address for rcpt in smtp.received for address in rcpt)
    assert per_address == {
        "pat@prairie.example.edu": 1,  # the receipt
        "paul@edpotential.example": 1,  # prairie's owner, in copy of the receipt
        "ada@north.example.edu": 1,  # "your key stopped working", the owner not copied
    }
    assert smtp.to("pat@prairie.example.edu") == ["Receipt: the Canvas Data 2 key for Prairie is active"]
    assert "no longer works" in smtp.to("ada@north.example.edu")[0]
    assert Counter(Notice.objects.filter(kind__in=DECIDED).values_list("state", flat=True)) == {Notice.State.SENT: 2}
    (new_link,) = SubmissionLink.objects.filter(reason="key invalid")
    assert new_link.institution == north and new_link.sent_to == "ada@north.example.edu"

    # Nothing is sent a second time, whoever asks.
    sweep_for(broker, clock, minutes=60)
    assert outbox.outbox_deliver_due().outcomes == Counter()
    assert len(smtp.received) == 2


@pytest.mark.django_db(transaction=True)
def test_a_receipt_whose_delivery_task_was_lost_goes_out_with_the_next_sweep_once(
    smtp,
    clock,
    broker,
    cd2_gateway,
    prairie,
):
    link = submission_link_create(institution=prairie).link
    assert hand_over(link).result is Result.ACCEPTED
    broker.messages.clear()  # the worker died before running deliver_notice (or the broker lost it)
    assert smtp.received == []

    sweep_for(broker, clock, minutes=5)  # the next sweep
    assert smtp.to("pat@prairie.example.edu") == ["Receipt: the Canvas Data 2 key for Prairie is active"]
    sweep_for(broker, clock, minutes=60)

    assert len(smtp.received) == 1
    assert Notice.objects.get(kind=Notice.Kind.RECEIPT).state == Notice.State.SENT


@pytest.mark.django_db(transaction=True)
def test_a_key_invalid_mail_waiting_for_a_retry_is_superseded_once_a_new_key_arrives(
    smtp,
    clock,
    broker,
    cd2_gateway,
    north,
):
    dead = add_key(north, days=200)
    smtp.down = True
    credential_verify(credential_id=dead.pk)
    broker.drain()
    waiting = Notice.objects.get(kind=Notice.Kind.KEY_INVALID)
    assert waiting.state == Notice.State.PENDING

    clock.shift(dt.timedelta(minutes=30))
    add_key(north, days=365)  # the customer made a new key before we could tell them
    smtp.down = False
    sweep_for(broker, clock, minutes=180)

    waiting.refresh_from_db()
    assert waiting.state == Notice.State.SUPERSEDED and waiting.sent_at is None
    assert "newer key" in waiting.last_error
    assert smtp.received == []
    assert not SubmissionLink.objects.filter(reason="key invalid").exists()


@pytest.mark.django_db(transaction=True)
def test_a_pending_receipt_not_yet_delivered_when_the_key_is_checked_gives_way_to_the_active_receipt(
    smtp,
    clock,
    broker,
    cd2_gateway,
    prairie,
):
    link = submission_link_create(institution=prairie).link
    smtp.down = True
    cd2_gateway.set_mode("down")
    assert hand_over(link).result is Result.PENDING  # stored, "being checked"
    broker.messages = [m for m in broker.messages if m[0] in outbox.jobs.DELIVERY_TASKS]  # the re-check runs below
    broker.drain()
    cd2_gateway.set_mode(None)
    clock.shift(dt.timedelta(minutes=10))
    key = CD2Credential.objects.get(institution=prairie)
    assert credential_verify_pending(credential_id=key.pk) == VerifyResult.ACTIVE
    smtp.down = False
    sweep_for(broker, clock, minutes=180)

    # One receipt, and it says what is true when it goes out.
    (subject,) = smtp.to("pat@prairie.example.edu")
    assert "is active" in subject
    states = dict(Notice.objects.filter(kind=Notice.Kind.RECEIPT).values_list("dedupe_key", "state"))
    assert states == {
        f"receipt:{key.pk}:pending_verification": Notice.State.SUPERSEDED,
        f"receipt:{key.pk}:active": Notice.State.SENT,
    }


@pytest.mark.django_db(transaction=True)
def test_a_key_refused_at_its_recheck_while_the_mail_server_is_down_reaches_both_audiences_once(
    smtp,
    clock,
    broker,
    cd2_gateway,
    prairie,
):
    link = submission_link_create(institution=prairie).link
    cd2_gateway.set_mode("down")
    hand_over(link, email="someone@else.example")  # an address not on file
    broker.messages = [m for m in broker.messages if m[0] in outbox.jobs.DELIVERY_TASKS]
    broker.drain()  # the "being checked" receipt goes out
    assert len(smtp.to("someone@else.example")) == 1
    cd2_gateway.set_mode(None)
    cd2_gateway.remove_key(PLANTED_CLIENT_ID)
    smtp.down = True
    key = CD2Credential.objects.get(institution=prairie)

    assert credential_verify_pending(credential_id=key.pk) == VerifyResult.INVALID
    assert credential_verify_pending(credential_id=key.pk) == VerifyResult.SKIPPED
    broker.drain()
    assert len(smtp.received) == 1
    sweep_for(broker, clock, minutes=60)
    smtp.down = False
    sweep_for(broker, clock, minutes=300)

    (with_link,) = smtp.to("pat@prairie.example.edu")  # the contact on file (the owner too, same message)
    assert "does not work" in with_link
    assert len(smtp.to("paul@edpotential.example")) == 2  # the receipt's copy, then the new-link mail
    (without_link,) = smtp.to("someone@else.example")[1:]
    assert "does not work" in without_link
    assert SubmissionLink.objects.filter(reason="rejected").count() == 1
    assert Counter(Notice.objects.filter(kind=Notice.Kind.KEY_REJECTED).values_list("state", flat=True)) == {
        Notice.State.SENT: 2
    }


@pytest.mark.django_db(transaction=True)
def test_one_key_handed_over_for_another_institution_eight_times_at_once_mails_the_owners_once(
    cd2_gateway, celery_messages, isolated_cache, north, prairie
):
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL's concurrent inserts on the notice's unique dedupe key (set DATABASE_URL)")
    credential_create(
        institution=north,
        key=CleanKey(
            client_id=PLANTED_CLIENT_ID,
            secret=PLANTED_SECRET,
            expires_on=timezone.localdate() + dt.timedelta(days=200),
        ),
        source=CD2Credential.Source.ADMIN,
        status=CD2Credential.Status.ACTIVE,
        check=PASSED_CHECK,
    )
    # One live link per institution: the eight race on it (a refused key leaves the link open).
    urls = [reverse("credentials:submit", kwargs={"token": submission_link_create(institution=prairie).token})] * RACERS

    statuses, errors = _post_at_once(urls)

    assert errors == [] and statuses == [200] * RACERS  # each refused: on file for another institution
    assert AuditEvent.objects.filter(institution=prairie, detail__outcome="taken").count() == RACERS
    assert Notice.objects.filter(kind=Notice.Kind.KEY_CONFLICT).count() == 1
    assert outbox.outbox_deliver_due().count(Notice.Kind.KEY_CONFLICT, "sent") == 1
    (message,) = mail.outbox
    assert sorted(message.to) == ["olivia@edpotential.example", "paul@edpotential.example"]


# --------------------------------------------------------------------------
# Who hears that a key stopped working
# --------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_owner_hears_of_a_key_that_stopped_working_in_their_daily_summary_not_by_a_copy(
    clock, cd2_gateway, north, django_capture_on_commit_callbacks
):
    dead = add_key(north, days=200)
    with django_capture_on_commit_callbacks(execute=True):
        credential_verify(credential_id=dead.pk)  # 09:00, the check
    outbox.outbox_deliver_due()
    (told,) = mail.outbox
    assert (told.to, told.cc, told.reply_to) == (["ada@north.example.edu"], [], ["olivia@edpotential.example"])

    clock.shift(dt.timedelta(hours=23))  # the next daily run, within the summary's day
    reminders_run()

    (summary,) = mail.outbox[1:]
    assert summary.to == ["olivia@edpotential.example"]
    assert "North" in summary.body and "CD2 refused the key at its check" in summary.body


@pytest.mark.django_db
def test_a_key_invalid_notice_with_nobody_to_tell_fails_for_staff_to_see(clock, cd2_gateway, make_institution):
    alone = make_institution(name="Alone College", slug="alone")
    dead = add_key(alone, days=200)

    credential_verify(credential_id=dead.pk)
    outbox.outbox_deliver_due()

    notice = Notice.objects.get(kind=Notice.Kind.KEY_INVALID)
    assert notice.state == Notice.State.FAILED and "Nobody to send to" in notice.last_error
    assert mail.outbox == []
    assert not SubmissionLink.objects.filter(institution=alone).exists()
