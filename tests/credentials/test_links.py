"""Submission links: made, mailed, opened, expired, revoked, used; and "lost the link?"."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import re

import pytest
import time_machine
from django.contrib.auth import get_user_model
from django.core import mail
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from credentials.models import AuditEvent, CD2Credential, Notice, SubmissionLink
from credentials.services import outbox
from credentials.services.links import (
    link_request_answers,
    link_request_record,
    submission_link_create,
    submission_link_revoke,
    submission_link_send,
)
from credentials.tasks import request_submission_link
from institutions.models import Contact, Institution
from tests.conftest import PLANTED_CLIENT_ID, PLANTED_SECRET


@pytest.fixture(autouse=True)
def fresh_rate_limits(celery_messages, isolated_cache):
    """Rate-limit counters start at zero; tasks go to an in-memory broker."""


@pytest.fixture
def owner(db):
    return get_user_model().objects.create_user(username="owen", email="owen@registry.example", first_name="Owen")


@pytest.fixture
def served(institution, owner):
    institution.account_owner = owner
    institution.save()
    Contact.objects.create(institution=institution, name="Ivy IT", email="ivy@northfield.example.edu")
    Contact.objects.create(
        institution=institution, name="Quiet Quinn", email="quinn@northfield.example.edu", receives_reminders=False
    )
    return institution


def submit_url(token: str) -> str:
    return reverse("credentials:submit", kwargs={"token": token})


def submit(client: Client, token: str, **overrides):
    data = {
        "client_id": PLANTED_CLIENT_ID,
        "secret": PLANTED_SECRET,
        "expires_on": (dt.date.today() + dt.timedelta(days=365)).isoformat(),
        "submitted_by": "Ada Admin",
        "submitted_by_email": "ada@northfield.example.edu",
    }
    data.update(overrides)
    return client.post(submit_url(token), data=data)


# --------------------------------------------------------------------------
# The link page
# --------------------------------------------------------------------------


def test_a_link_keeps_only_the_hash_of_its_token(institution):
    new_link = submission_link_create(institution=institution)

    assert len(new_link.token) >= 43
    assert new_link.link.token_hash == hashlib.sha256(new_link.token.encode()).hexdigest()
    assert not SubmissionLink.objects.filter(token_hash__contains=new_link.token).exists()
    assert new_link.url.endswith(submit_url(new_link.token))


def test_opening_a_link_shows_the_steps_and_never_uses_it_up(client, institution, settings):
    settings.CD2_KEY_NAME = "EdPotential-Test"
    settings.CD2_RECOMMENDED_EXPIRY = "2 years"
    new_link = submission_link_create(institution=institution)

    for _ in range(3):  # a mail scanner, a preview, the customer
        response = client.get(submit_url(new_link.token))
        assert response.status_code == 200
    head = client.head(submit_url(new_link.token))

    html = response.content.decode()
    assert head.status_code == 200
    assert institution.name in html
    assert "EdPotential-Test" in html and "at least 2 years" in html
    assert "Institutional Use" in html and "six-digit code" in html and "Reveal OAuth Credentials" in html
    assert institution.canvas_domain in html
    for label in ("Client ID", "Secret", "Expiry date", "Your name", "Your work email"):
        assert f">{label}</label>" in html
    assert 'type="password"' in html
    new_link.link.refresh_from_db()
    assert new_link.link.used_at is None and new_link.link.is_usable()


def _unusable_links(institution) -> dict[str, str]:
    # Each on an institution of its own: a newer link of the same institution would replace the older
    # (test_a_replaced_links_page_names_the_newer_link_masked covers that page).
    def another(name: str) -> Institution:
        return Institution.objects.create(name=name, slug=name.lower(), canvas_domain=f"{name.lower()}.example.edu")

    expired = submission_link_create(institution=institution, days=1)
    SubmissionLink.objects.filter(pk=expired.link.pk).update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    revoked = submission_link_create(institution=another("Revoked"))
    submission_link_revoke(link=revoked.link)
    used = submission_link_create(institution=another("Used"))
    SubmissionLink.objects.filter(pk=used.link.pk).update(used_at=timezone.now())
    return {
        "unknown": "x" * 43,
        "expired": expired.token,
        "revoked": revoked.token,
        "used": used.token,
    }


def test_unknown_expired_revoked_and_used_links_get_one_identical_page(client, institution):
    answers = {}
    for kind, token in _unusable_links(institution).items():
        response = client.get(submit_url(token))
        # The language switcher sends the reader back to the address they opened: their own token,
        # echoed, says nothing about the link's state.
        body = response.content.replace(token.encode(), b"<token>")
        answers[kind] = (response.status_code, body, response["Cache-Control"])

    assert len(set(answers.values())) == 1, answers.keys()
    status, body, _ = answers["used"]
    assert status == 404
    assert b"This link no longer works" in body
    assert reverse("credentials:request_link").encode() in body


def test_unusable_links_refuse_a_submission_without_asking_cd2(client, institution, cd2_gateway):
    for token in _unusable_links(institution).values():
        response = submit(client, token)
        assert response.status_code == 404

    assert cd2_gateway.login_count == 0
    assert not CD2Credential.objects.exists()


def test_a_link_expires_after_the_configured_days(client, institution, settings, cd2_gateway):
    settings.SUBMISSION_LINK_DAYS = 14
    new_link = submission_link_create(institution=institution)

    with time_machine.travel(timezone.now() + dt.timedelta(days=13, hours=23)):
        assert client.get(submit_url(new_link.token)).status_code == 200
    with time_machine.travel(timezone.now() + dt.timedelta(days=14, seconds=1)):
        assert client.get(submit_url(new_link.token)).status_code == 404
        assert submit(client, new_link.token).status_code == 404
    assert not CD2Credential.objects.exists()


def test_a_link_is_used_up_by_one_successful_submission(client, institution, cd2_gateway):
    new_link = submission_link_create(institution=institution)

    first = submit(client, new_link.token)
    second = submit(client, new_link.token)

    assert first.status_code == 302
    assert second.status_code == 404
    assert CD2Credential.objects.count() == 1
    assert cd2_gateway.login_count == 1


def test_revoking_a_link_works_once_and_is_audited(institution, owner):
    new_link = submission_link_create(institution=institution)

    assert submission_link_revoke(link=new_link.link, actor=owner) is True
    assert submission_link_revoke(link=new_link.link, actor=owner) is False

    new_link.link.refresh_from_db()
    assert new_link.link.state() == "revoked"
    assert AuditEvent.objects.filter(kind="link_revoked", actor=owner).count() == 1


def test_a_used_link_cannot_be_revoked(institution):
    new_link = submission_link_create(institution=institution)
    SubmissionLink.objects.filter(pk=new_link.link.pk).update(used_at=timezone.now())

    assert submission_link_revoke(link=new_link.link) is False


# --------------------------------------------------------------------------
# Sending links
# --------------------------------------------------------------------------


def _url_in(body: str) -> str:
    (url,) = re.findall(r"https?://\S+/k/[A-Za-z0-9_-]+/", body)
    return url


def test_a_link_is_mailed_to_the_contacts_who_receive_reminders_with_reply_to_the_owner(served, client, settings):
    notice = submission_link_send(institution=served, ip_address="192.0.2.7")
    assert mail.outbox == [] and not SubmissionLink.objects.exists()  # written, not sent yet

    assert outbox.notice_deliver(notice_id=notice.pk) is True

    (message,) = mail.outbox
    assert sorted(message.to) == ["ada@northfield.example.edu", "ivy@northfield.example.edu"]
    assert message.reply_to == ["owen@registry.example"]
    url = _url_in(message.body)
    assert url in message.alternatives[0][0]
    assert client.get(url.removeprefix(settings.SITE_URL)).status_code == 200  # the mailed link works
    assert "EdPotential" in message.body and "Institutional Use" in message.body
    link = SubmissionLink.objects.get()
    assert link.sent_to == "ada@northfield.example.edu, ivy@northfield.example.edu"
    assert link.token_hash == hashlib.sha256(url.rstrip("/").rsplit("/", 1)[1].encode()).hexdigest()
    event = AuditEvent.objects.get(kind="link_created")
    assert event.ip_address == "192.0.2.7"
    notice.refresh_from_db()
    assert (notice.kind, notice.state) == (Notice.Kind.SUBMISSION_LINK, Notice.State.SENT)


def test_the_token_is_stored_nowhere_in_plain_text(served):
    notice = submission_link_send(institution=served)
    outbox.notice_deliver(notice_id=notice.pk)
    token = _url_in(mail.outbox[0].body).rstrip("/").rsplit("/", 1)[1]

    notice.refresh_from_db()
    stored = [str(v) for v in Notice.objects.values().get(pk=notice.pk).values()]
    stored += [str(v) for v in SubmissionLink.objects.values().get().values()]
    stored += [str(v) for v in AuditEvent.objects.values("detail")]
    assert not [v for v in stored if token in v]


def test_sending_a_link_without_anyone_to_send_to_says_so_and_makes_no_link(make_institution):
    lonely = make_institution(name="Lonely College")
    Contact.objects.create(institution=lonely, name="Muted", email="m@lonely.edu", receives_reminders=False)

    with pytest.raises(ValueError, match="no contact who receives reminders"):
        submission_link_send(institution=lonely)

    assert not SubmissionLink.objects.exists() and not Notice.objects.exists()
    assert mail.outbox == []


def test_a_mail_failure_leaves_no_link_behind_and_the_notice_waits_for_its_retry(served, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", 9, 2  # nothing listens on 9
    notice = submission_link_send(institution=served)

    assert outbox.notice_deliver(notice_id=notice.pk) is False

    assert not SubmissionLink.objects.exists()
    assert not AuditEvent.objects.filter(kind="link_created").exists()
    notice.refresh_from_db()
    assert notice.state == Notice.State.PENDING and notice.attempts == 1
    assert notice.next_attempt_at > timezone.now() and notice.last_error.startswith("ConnectionRefusedError")


def test_a_link_notice_for_an_institution_that_lost_its_contacts_is_cancelled_and_makes_no_link(served):
    notice = submission_link_send(institution=served)
    Contact.objects.filter(institution=served).update(receives_reminders=False)

    assert outbox.notice_deliver(notice_id=notice.pk) is False

    notice.refresh_from_db()
    assert notice.state == Notice.State.CANCELLED and "nobody to mail" in notice.last_error
    assert not SubmissionLink.objects.exists() and mail.outbox == []


def test_the_command_prints_a_url_that_opens_the_page(institution, client, settings):
    out, err = io.StringIO(), io.StringIO()

    call_command("create_submission_link", institution.slug, "--days", "3", stdout=out, stderr=err)

    url = out.getvalue().strip()
    path = url.removeprefix(settings.SITE_URL)
    assert url.startswith("http") and "/k/" in url
    assert client.get(path).status_code == 200
    link = SubmissionLink.objects.get()
    assert dt.timedelta(days=2, hours=23) < link.expires_at - timezone.now() <= dt.timedelta(days=3)
    assert "single use" in err.getvalue()
    assert mail.outbox == []


def test_the_command_mails_the_link_with_email_and_prints_no_url(served, client, settings):
    out = io.StringIO()

    call_command("create_submission_link", served.slug, "--email", stdout=out, stderr=io.StringIO())

    (message,) = mail.outbox
    assert "/k/" not in out.getvalue() and "mailed to ada@northfield.example.edu" in out.getvalue()
    assert client.get(_url_in(message.body).removeprefix(settings.SITE_URL)).status_code == 200


def test_the_command_explains_an_unknown_slug(institution):
    with pytest.raises(CommandError, match=r"No institution has the slug 'nope'\. Known slugs: northfield"):
        call_command("create_submission_link", "nope", stdout=io.StringIO(), stderr=io.StringIO())


# --------------------------------------------------------------------------
# Lost the link?
# --------------------------------------------------------------------------


def _ask(client, email, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("credentials:request_link"), data={"email": email})
    return response


def test_the_request_page_answers_identically_for_known_and_unknown_addresses(
    served, client, celery_messages, django_capture_on_commit_callbacks
):
    known = _ask(client, "ADA@northfield.example.edu", django_capture_on_commit_callbacks)
    unknown = _ask(client, "nobody@nowhere.example", django_capture_on_commit_callbacks)

    assert (
        (known.status_code, known["Location"])
        == (unknown.status_code, unknown["Location"])
        == (
            302,
            reverse("credentials:request_link_sent"),
        )
    )
    assert known.content == unknown.content
    sent_page = client.get(known["Location"])
    assert b"Check your email" in sent_page.content
    # Both requests are stored alike before the answer (the lookup happens at delivery) ...
    requests = list(Notice.objects.order_by("pk").values_list("kind", "institution", "recipients", "payload"))
    assert requests == [
        (Notice.Kind.LINK_REQUEST, None, "", {"email": "ADA@northfield.example.edu", "ip_address": "127.0.0.1"}),
        (Notice.Kind.LINK_REQUEST, None, "", {"email": "nobody@nowhere.example", "ip_address": "127.0.0.1"}),
    ]
    # ... and both queue the same delivery task.
    assert [m["task"] for m in celery_messages] == ["credentials.tasks.deliver_notice"] * 2
    assert mail.outbox == []
    assert not SubmissionLink.objects.exists()


def test_a_known_address_gets_a_fresh_link_and_nobody_else_does(served):
    request_id = link_request_record(email="Ivy@Northfield.example.edu", ip_address="192.0.2.9")
    for _ in range(3):  # the request is answered, its link notice delivered, then nothing is due
        outbox.outbox_deliver_due()

    (message,) = mail.outbox
    assert message.to == ["ivy@northfield.example.edu"]
    link = SubmissionLink.objects.get()
    assert (link.reason, link.sent_to) == ("request", "ivy@northfield.example.edu")
    assert link.is_usable()
    request = Notice.objects.get(pk=request_id)
    assert (request.state, request.last_error) == (
        Notice.State.SUPERSEDED,
        "Answered: a submission link for 1 institution (a notice of its own each).",
    )
    (answer_id,) = link_request_answers(request_notice_id=request_id)
    assert Notice.objects.get(pk=answer_id).state == Notice.State.SENT


def test_a_request_queued_by_an_older_release_is_answered_once_however_often_it_is_delivered(served):
    request_submission_link("Ivy@Northfield.example.edu", "192.0.2.9", "req-1")
    request_submission_link("Ivy@Northfield.example.edu", "192.0.2.9", "req-1")  # the task delivered twice

    (message,) = mail.outbox
    assert message.to == ["ivy@northfield.example.edu"]
    assert Notice.objects.filter(kind=Notice.Kind.LINK_REQUEST).count() == 1


def test_an_address_at_two_institutions_gets_a_link_for_each(served, make_institution):
    other = make_institution(name="Lakeside College")
    Contact.objects.create(institution=other, name="Ivy Again", email="IVY@northfield.example.edu")

    request_id = link_request_record(email="ivy@northfield.example.edu", ip_address=None)
    outbox.outbox_deliver_due()  # the request: a link notice per institution
    outbox.outbox_deliver_due()  # the links

    assert sorted(m.to[0] for m in mail.outbox) == ["IVY@northfield.example.edu", "ivy@northfield.example.edu"]
    assert {link.institution_id for link in SubmissionLink.objects.all()} == {served.pk, other.pk}
    assert len(link_request_answers(request_notice_id=request_id)) == 2


def test_an_unknown_address_or_a_paused_institution_gets_nothing(served):
    unknown = link_request_record(email="nobody@nowhere.example", ip_address=None)
    Institution.objects.filter(pk=served.pk).update(status=Institution.Status.OFFBOARDED)
    offboarded = link_request_record(email="ada@northfield.example.edu", ip_address=None)
    outbox.outbox_deliver_due()

    assert mail.outbox == []
    assert not SubmissionLink.objects.exists()
    assert set(Notice.objects.values_list("pk", "kind", "state")) == {
        (unknown, Notice.Kind.LINK_REQUEST, Notice.State.CANCELLED),
        (offboarded, Notice.Kind.LINK_REQUEST, Notice.State.CANCELLED),
    }


def test_a_request_waiting_for_its_retry_is_superseded_when_the_institution_is_paused(served, settings):
    settings.EMAIL_BACKEND = "tests.credentials.test_links.RefusingBackend"
    request_id = link_request_record(email="ada@northfield.example.edu", ip_address=None)
    outbox.outbox_deliver_due()  # the request is answered; its link notice is refused by the mail server
    (notice_id,) = link_request_answers(request_notice_id=request_id)
    assert Notice.objects.get(pk=notice_id).state == Notice.State.PENDING
    Institution.objects.filter(pk=served.pk).update(status=Institution.Status.PAUSED)
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"

    Notice.objects.filter(pk=notice_id).update(next_attempt_at=timezone.now())
    outbox.outbox_deliver_due()

    assert Notice.objects.get(pk=notice_id).state == Notice.State.SUPERSEDED
    assert mail.outbox == [] and not SubmissionLink.objects.exists()


class RefusingBackend:
    """A mail backend whose server refuses every message (451), as a mail server that is down for a while."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def send_messages(self, messages) -> int:
        import smtplib

        raise smtplib.SMTPDataError(451, b"try again later")


def test_a_malformed_address_is_pointed_out_on_the_form(client):
    response = client.post(reverse("credentials:request_link"), data={"email": "not an address"})

    assert response.status_code == 200
    assert b"Enter an email address" in response.content
    assert b'aria-invalid="true"' in response.content


@pytest.mark.usefixtures("held_clock")
def test_the_request_page_is_rate_limited_per_address(client, served, django_capture_on_commit_callbacks):
    statuses = [
        _ask(client, "ada@northfield.example.edu", django_capture_on_commit_callbacks).status_code for _ in range(4)
    ]

    assert statuses == [302, 302, 302, 429]
    assert b"Too many tries" in _ask(client, "ADA@northfield.example.edu", django_capture_on_commit_callbacks).content
