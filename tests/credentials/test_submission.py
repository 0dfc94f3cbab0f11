"""The customer submission page and the services behind it, against the real fake CD2 gateway.

Every test here runs under `leak_guard`: after the test, the planted secret
(and its base64 Basic-auth form) must be in no response body, log record,
mail, Celery message or audit row.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging

import pytest
import time_machine
from django.contrib.auth import get_user_model
from django.core import mail
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django.views.debug import SafeExceptionReporterFilter

from credentials.formatting import format_day
from credentials.forms import SubmissionForm, add_period, period_end
from credentials.models import AuditEvent, CD2Credential, Notice, PendingReason, SubmissionLink
from credentials.selectors import PENDING_SWEEP_AFTER, pending_credentials_due
from credentials.services import jobs, outbox
from credentials.services.links import submission_link_create, submission_link_get
from credentials.services.pending import VerifyResult, credential_verify_pending
from credentials.services.submission import Door, Result, credential_submit
from credentials.tasks import CD2StillUnavailable, verify_pending_credential, verify_pending_credentials
from devtools import fake_gateway
from tests.conftest import PLANTED_CLIENT_ID, PLANTED_SECRET, delivered

REJECTED_CLIENT_ID = fake_gateway.DEMO_REJECTED_CLIENT_ID
CLIENT_IDS_USED = [
    PLANTED_CLIENT_ID,
    REJECTED_CLIENT_ID,
    fake_gateway.FORBIDDEN_NOT_ONBOARDED_CLIENT_ID,
    fake_gateway.FORBIDDEN_DISABLED_CLIENT_ID,
    fake_gateway.GATEWAY_DOWN_CLIENT_ID,
]


class RecordingClient(Client):
    """A test client that keeps every response, for the leak check."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.responses = []

    def request(self, **request):
        response = super().request(**request)
        self.responses.append(response)
        return response


@pytest.fixture
def web() -> RecordingClient:
    return RecordingClient()


@pytest.fixture(autouse=True)
def leak_guard(db, web, caplog, celery_messages, isolated_cache):
    caplog.set_level(logging.DEBUG)
    yield
    needles = [PLANTED_SECRET] + [
        base64.b64encode(f"{client_id}:{PLANTED_SECRET}".encode()).decode() for client_id in CLIENT_IDS_USED
    ]
    places = {
        **{f"response {i} ({r.status_code})": r.content.decode(errors="replace") for i, r in enumerate(web.responses)},
        "logs": "\n".join(
            record.getMessage() + (caplog.handler.formatter.formatException(record.exc_info) if record.exc_info else "")
            # caplog.records would only hold this teardown's records.
            for record in caplog.get_records("setup") + caplog.get_records("call") + caplog.records
        ),
        **{f"mail {i}": m.message().as_string() for i, m in enumerate(mail.outbox)},
        "celery messages": json.dumps(list(celery_messages), default=str)
        + "".join(body.decode(errors="replace") for body in celery_messages.raw_bodies()),
        "audit": json.dumps(list(AuditEvent.objects.values()), default=str),
    }
    for where, text in places.items():
        for needle in needles:
            assert needle not in text, f"the secret leaked into {where}"
    for i, message in enumerate(mail.outbox):
        assert PLANTED_CLIENT_ID not in message.message().as_string(), f"the full Client ID is in mail {i}"


@pytest.fixture
def owner(db):
    return get_user_model().objects.create_user(
        username="owen", email="owen@registry.example", first_name="Owen", last_name="Owner"
    )


@pytest.fixture
def link(institution, owner):
    institution.account_owner = owner
    institution.timezone = "America/Chicago"
    institution.save()
    return submission_link_create(institution=institution)


def form_data(**overrides) -> dict:
    data = {
        "client_id": PLANTED_CLIENT_ID,
        "secret": PLANTED_SECRET,
        "expiry_period": "",
        "expires_on": (dt.date.today() + dt.timedelta(days=365)).isoformat(),
        "submitted_by": "Ada Admin",
        "submitted_by_email": "ada@northfield.example.edu",
    }
    data.update(overrides)
    return data


@pytest.fixture
def post(web, link, django_capture_on_commit_callbacks):
    """POST the form on the link (after-commit work runs, as it would outside a test transaction)."""

    def send(token: str | None = None, **overrides):
        url = reverse("credentials:submit", kwargs={"token": token or link.token})
        with django_capture_on_commit_callbacks(execute=True):
            return web.post(url, data=form_data(**overrides))

    return send


def page_text(response) -> str:
    return " ".join(response.content.decode().split())


def other_than_deliveries(celery_messages) -> list:
    """The Celery messages besides the outbox's deliver_notice tasks (asserted on by the outbox's own tests)."""
    return [m for m in celery_messages if m["task"] != jobs.DELIVER_NOTICE]


# --------------------------------------------------------------------------
# Outcomes on the page
# --------------------------------------------------------------------------


def test_a_working_key_is_stored_active_the_link_is_used_up_and_a_receipt_is_mailed(
    cd2_gateway, post, link, web, institution, celery_messages
):
    response = post()

    assert response.status_code == 302
    assert response["Location"] == reverse("credentials:received")
    credential = CD2Credential.objects.get(institution=institution)
    assert credential.status == CD2Credential.Status.ACTIVE
    assert credential.source == CD2Credential.Source.LINK
    assert (credential.client_id, credential.secret) == (PLANTED_CLIENT_ID, PLANTED_SECRET)
    assert credential.submitted_by_email == "ada@northfield.example.edu"
    assert credential.last_verification.startswith("ok")
    link.link.refresh_from_db()
    assert link.link.used_at is not None
    assert credential.submission_link_id == link.link.pk
    # Nothing to re-check; the receipt's notice is queued for delivery.
    notice = Notice.objects.get(kind=Notice.Kind.RECEIPT, credential=credential)
    assert [(m["task"], list(m["args"])) for m in celery_messages] == [(jobs.DELIVER_NOTICE, [notice.pk])]

    confirmation = web.get(response["Location"])
    text = page_text(confirmation)
    assert confirmation.status_code == 200
    assert "the key works" in text
    assert institution.name in text
    assert credential.hint in text
    assert format_day(credential.expires_on) in text
    assert "remind you" in text

    assert mail.outbox == []  # the outbox sends it, not the request
    (receipt,) = delivered()
    assert receipt.to == ["ada@northfield.example.edu"]
    assert receipt.cc == ["owen@registry.example"]
    assert receipt.reply_to == ["owen@registry.example"]
    assert "is active" in receipt.subject
    assert credential.hint in receipt.body
    assert " CST " in receipt.body or " CDT " in receipt.body  # the institution's time zone
    assert {kind for kind in AuditEvent.objects.values_list("kind", flat=True)} >= {"submission", "link_used"}


def test_a_new_key_supersedes_the_previous_one_which_stays_as_history(cd2_gateway, post, institution, make_credential):
    old = make_credential(institution)

    post()

    old.refresh_from_db()
    assert old.status == CD2Credential.Status.SUPERSEDED
    assert CD2Credential.objects.filter(institution=institution).count() == 2
    assert CD2Credential.objects.get(institution=institution, status="active").secret == PLANTED_SECRET


def test_a_rejected_key_stores_nothing_keeps_the_client_id_clears_the_secret_and_the_link_still_works(
    cd2_gateway, post, link
):
    response = post(client_id=REJECTED_CLIENT_ID)

    text = page_text(response)
    assert response.status_code == 200
    assert "Instructure did not accept this Client ID and Secret" in text
    assert "whole Client ID" in text
    assert f'value="{REJECTED_CLIENT_ID}"' in response.content.decode()
    secret_input = response.content.decode().split('id="id_secret"')[0].rsplit("<input", 1)[1]
    assert "value=" not in secret_input
    assert not CD2Credential.objects.exists()
    link.link.refresh_from_db()
    assert link.link.is_usable()
    assert mail.outbox == []

    assert post().status_code == 302  # the same link, now with the right key
    assert CD2Credential.objects.get().status == CD2Credential.Status.ACTIVE


@pytest.mark.parametrize(
    ("client_id", "words"),
    [
        (fake_gateway.FORBIDDEN_NOT_ONBOARDED_CLIENT_ID, "not yet set up for Canvas Data 2"),
        (fake_gateway.FORBIDDEN_DISABLED_CLIENT_ID, "access is turned off"),
    ],
)
def test_a_forbidden_account_keeps_the_key_pending_and_asks_for_cd2_to_be_enabled_not_for_a_new_key(
    cd2_gateway, post, web, link, celery_messages, client_id, words
):
    response = post(client_id=client_id)

    assert response.status_code == 302
    credential = CD2Credential.objects.get()
    assert credential.status == CD2Credential.Status.PENDING_VERIFICATION
    assert credential.pending_reason == PendingReason.NOT_ENABLED
    assert credential.last_verdict == "forbidden"
    link.link.refresh_from_db()
    assert link.link.used_at is not None
    # No backoff chain: the hourly sweep checks it again daily.
    assert other_than_deliveries(celery_messages) == []
    page = page_text(web.get(reverse("credentials:received")))
    assert "Canvas Data 2 needs enabling" in page
    assert f"enable Canvas Data 2 for {link.link.institution.canvas_domain}" in page
    assert "You do not need a new key" in page
    assert "every day for 30 days" in page
    (receipt,) = delivered()
    assert words in receipt.body
    assert "You do not need a new key" in receipt.body


def test_maintenance_keeps_the_key_pending_asks_nothing_and_queues_a_recheck(cd2_gateway, post, web, celery_messages):
    assert post(client_id=fake_gateway.FORBIDDEN_MAINTENANCE_CLIENT_ID).status_code == 302

    credential = CD2Credential.objects.get()
    assert credential.pending_reason == PendingReason.MAINTENANCE
    assert [task["task"] for task in other_than_deliveries(celery_messages)] == [jobs.VERIFY_PENDING_CREDENTIAL]
    page = page_text(web.get(reverse("credentials:received")))
    assert "under maintenance" in page
    assert "nothing you need to do and no new key is needed" in page


@pytest.mark.parametrize("mode", ["down", "rate_limited", "hang"])
def test_when_cd2_cannot_answer_the_key_is_kept_pending_and_a_recheck_is_queued(
    cd2_gateway, post, web, link, celery_messages, settings, mode
):
    settings.CD2_READ_TIMEOUT = 0.5  # "hang" must end quickly
    cd2_gateway.set_mode(mode)

    response = post()

    assert response.status_code == 302
    credential = CD2Credential.objects.get()
    assert credential.status == CD2Credential.Status.PENDING_VERIFICATION
    assert credential.secret == PLANTED_SECRET
    assert credential.last_verification.startswith("unavailable")
    link.link.refresh_from_db()
    assert link.link.used_at is not None
    (task,) = other_than_deliveries(celery_messages)
    assert task["task"] == "credentials.tasks.verify_pending_credential"
    assert task["args"] == [credential.pk] or task["args"] == (credential.pk,)
    assert task["headers"]["eta"]  # not at once: the gateway just failed
    assert "will check it" in page_text(web.get(reverse("credentials:received")))
    assert "being checked" in delivered()[0].subject


def test_validation_errors_show_next_to_their_fields_and_cd2_is_not_asked(cd2_gateway, post):
    response = post(client_id="0a1b2c3d-no-region", secret="two words", expires_on="2001-01-01", submitted_by="")

    html = response.content.decode()
    assert response.status_code == 200
    assert 'id="id_client_id_error"' in html
    assert 'id="id_secret_error"' in html
    assert 'id="id_expires_on_error"' in html
    assert 'id="id_submitted_by_error"' in html
    assert 'aria-describedby="id_client_id_helptext id_client_id_error"' in html
    assert "including the part before the #" in html
    assert cd2_gateway.login_count == 0
    assert not CD2Credential.objects.exists()


def test_a_secret_equal_to_the_client_id_is_refused_by_the_shared_validators(cd2_gateway, post):
    response = post(secret=PLANTED_CLIENT_ID)

    assert "The Secret is the same as the Client ID" in page_text(response)
    assert cd2_gateway.login_count == 0


def test_the_expiry_period_fills_in_the_date_when_none_is_typed():
    today = dt.date(2026, 1, 31)
    form = SubmissionForm(data=form_data(expires_on="", expiry_period="1m", confirm_short_expiry="on"), today=today)

    assert form.is_valid(), form.errors
    assert form.cleaned_data["expires_on"] == dt.date(2026, 2, 28)
    assert period_end("1y", start=dt.date(2024, 2, 29)) == dt.date(2025, 2, 28)
    assert add_period(today, days=7) == dt.date(2026, 2, 7)


def test_a_typed_date_wins_over_the_period():
    form = SubmissionForm(data=form_data(expires_on="2026-12-01", expiry_period="1y"), today=dt.date(2026, 1, 10))

    assert form.is_valid(), form.errors
    assert form.cleaned_data["expires_on"] == dt.date(2026, 12, 1)


# --------------------------------------------------------------------------
# Later re-checks of pending keys
# --------------------------------------------------------------------------


@pytest.fixture
def pending(cd2_gateway, post):
    cd2_gateway.set_mode("down")
    post()
    cd2_gateway.set_mode(None)
    assert len(delivered()) == 1  # the "being checked" receipt
    mail.outbox.clear()
    return CD2Credential.objects.get(status=CD2Credential.Status.PENDING_VERIFICATION)


def test_a_pending_key_that_now_works_becomes_active_and_the_submitter_gets_a_receipt(
    pending, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        result = credential_verify_pending(credential_id=pending.pk)

    assert result == VerifyResult.ACTIVE
    pending.refresh_from_db()
    assert pending.status == CD2Credential.Status.ACTIVE
    assert pending.verification_attempts == 1
    (receipt,) = delivered()
    assert receipt.to == ["ada@northfield.example.edu"]
    assert "is active" in receipt.subject


def test_a_pending_key_now_rejected_becomes_invalid_and_mails_a_fresh_link(pending, cd2_gateway, institution):
    cd2_gateway.remove_key(PLANTED_CLIENT_ID)
    links_before = SubmissionLink.objects.count()

    result = credential_verify_pending(credential_id=pending.pk)

    assert result == VerifyResult.INVALID
    pending.refresh_from_db()
    assert pending.status == CD2Credential.Status.INVALID
    assert SubmissionLink.objects.count() == links_before  # the link is made when the mail goes out
    (message,) = delivered()
    assert sorted(message.to) == ["ada@northfield.example.edu", "owen@registry.example"]
    assert "does not work" in message.subject
    fresh = SubmissionLink.objects.order_by("-pk").first()
    assert SubmissionLink.objects.count() == links_before + 1
    assert fresh.is_usable() and fresh.reason == "rejected"
    url = next(word for word in message.body.split() if "/k/" in word)
    token = url.rstrip("/").rsplit("/", 1)[1]
    assert Client().get(reverse("credentials:submit", kwargs={"token": token})).status_code == 200
    assert AuditEvent.objects.filter(kind="key_invalid", credential=pending).count() == 1


def test_a_pending_key_checked_twice_is_acted_on_once(pending, cd2_gateway):
    cd2_gateway.remove_key(PLANTED_CLIENT_ID)

    assert credential_verify_pending(credential_id=pending.pk) == VerifyResult.INVALID
    assert credential_verify_pending(credential_id=pending.pk) == VerifyResult.SKIPPED
    assert len(delivered()) == 1
    assert len(delivered()) == 1  # a second delivery run sends nothing again


def test_while_cd2_is_still_unavailable_the_task_counts_the_attempt_and_asks_celery_to_retry(pending, cd2_gateway):
    cd2_gateway.set_mode("down")

    with pytest.raises(CD2StillUnavailable):
        verify_pending_credential(pending.pk)

    pending.refresh_from_db()
    assert pending.status == CD2Credential.Status.PENDING_VERIFICATION
    assert pending.verification_attempts == 1
    assert delivered() == []
    assert verify_pending_credential.max_retries == 12
    assert verify_pending_credential.autoretry_for == (CD2StillUnavailable,)


def test_the_recheck_task_returns_the_outcome_once_cd2_answers(pending):
    assert verify_pending_credential(pending.pk) == "active"


def test_a_pending_key_overtaken_by_a_newer_active_key_does_not_replace_it(pending, institution, make_credential):
    newer = make_credential(institution)

    assert credential_verify_pending(credential_id=pending.pk) == VerifyResult.SUPERSEDED
    newer.refresh_from_db()
    assert newer.status == CD2Credential.Status.ACTIVE


# --------------------------------------------------------------------------
# Staff entering a key
# --------------------------------------------------------------------------


def test_staff_can_add_a_key_with_the_same_validation_and_live_check(cd2_gateway, institution, owner, today):
    expires = today + dt.timedelta(days=300)

    door = Door.staff(institution=institution, user=owner)
    refused = credential_submit(door=door, client_id=REJECTED_CLIENT_ID, secret=PLANTED_SECRET, expires_on=expires)
    invalid = credential_submit(door=door, client_id="nonsense", secret=PLANTED_SECRET, expires_on=expires)
    stored = credential_submit(door=door, client_id=PLANTED_CLIENT_ID, secret=PLANTED_SECRET, expires_on=expires)

    assert refused.result is Result.REJECTED and not refused.stored
    assert invalid.result is Result.INVALID and "client_id" in invalid.errors
    assert stored.result is Result.ACCEPTED
    credential = stored.credential
    assert (credential.source, credential.status, credential.created_by) == ("admin", "active", owner)
    assert AuditEvent.objects.filter(kind="submission", actor=owner, credential=credential).exists()


def test_the_service_refuses_an_unusable_link_before_asking_cd2(cd2_gateway, today):
    door = Door.customer(link=submission_link_get(token="not-a-token"), submitted_by="x", submitted_by_email="x@e.edu")
    outcome = credential_submit(
        door=door, client_id=PLANTED_CLIENT_ID, secret=PLANTED_SECRET, expires_on=today + dt.timedelta(days=30)
    )

    assert outcome.result is Result.LINK_UNUSABLE
    assert cd2_gateway.login_count == 0


# --------------------------------------------------------------------------
# Abuse and leaks
# --------------------------------------------------------------------------


def test_link_pages_are_not_cached_not_indexed_and_never_send_the_token_as_referrer(cd2_gateway, web, link, post):
    forms = [
        web.get(reverse("credentials:submit", kwargs={"token": link.token})),
        post(client_id=REJECTED_CLIENT_ID),
        web.get(reverse("credentials:submit", kwargs={"token": "unknown"})),
        web.get(reverse("credentials:request_link")),
    ]
    post()
    others = [web.get(reverse("credentials:received")), web.get(reverse("credentials:request_link_sent"))]

    for response in forms + others:
        assert "no-store" in response["Cache-Control"]
        assert response["X-Robots-Tag"] == "noindex, nofollow"
    # The views with a form: origin only (never the path), so the browser's POST carries a real Origin for CSRF.
    assert {response["Referrer-Policy"] for response in forms} == {"strict-origin"}
    assert {response["Referrer-Policy"] for response in others} == {"no-referrer"}


def test_the_page_uses_no_outside_assets(web, link):
    html = web.get(reverse("credentials:submit", kwargs={"token": link.token})).content.decode()

    assert "<script>" not in html and "style=" not in html  # nothing inline: works under the CSP
    for attribute in ('src="', 'href="'):
        for chunk in html.split(attribute)[1:]:
            target = chunk.split('"', 1)[0]
            assert not target.startswith(("http:", "https:", "//")) or "identity.instructure.com" in target


def test_the_secret_is_hidden_from_error_reports(post, cd2_gateway):
    response = post(client_id=REJECTED_CLIENT_ID)

    parameters = SafeExceptionReporterFilter().get_post_parameters(response.wsgi_request)
    assert parameters["secret"] != PLANTED_SECRET
    assert parameters["client_id"] != REJECTED_CLIENT_ID


@pytest.mark.usefixtures("held_clock")
def test_ten_tries_an_hour_per_link_then_a_clear_429_page(cd2_gateway, post, link):
    for _ in range(10):
        assert post(client_id=REJECTED_CLIENT_ID).status_code == 200

    response = post()

    assert response.status_code == 429
    assert "Too many tries" in page_text(response)
    assert not CD2Credential.objects.exists()
    assert cd2_gateway.login_count == 10


@pytest.mark.usefixtures("held_clock")
def test_the_per_ip_limit_spans_links(cd2_gateway, post, institution, make_institution):
    # Four live links: one institution holds one live link at a time (a newer one ends the older).
    tokens = [
        submission_link_create(institution=inst).token
        for inst in (institution, *(make_institution() for _ in range(3)))
    ]
    statuses = [post(token, client_id=REJECTED_CLIENT_ID).status_code for token in tokens for _ in range(8)]

    assert statuses[:30] == [200] * 30
    assert statuses[30:] == [429, 429]


def test_a_body_larger_than_a_form_is_refused(web, link):
    url = reverse("credentials:submit", kwargs={"token": link.token})

    response = web.post(url, data=form_data(client_id="x" * 20_000))

    assert response.status_code == 413
    assert "Too much text" in page_text(response)


def test_a_post_without_the_csrf_token_is_refused(cd2_gateway, link):
    client = Client(enforce_csrf_checks=True)

    response = client.post(reverse("credentials:submit", kwargs={"token": link.token}), data=form_data())

    assert response.status_code == 403
    assert not CD2Credential.objects.exists()
    assert cd2_gateway.login_count == 0


def test_the_confirmation_page_without_a_submission_is_the_unusable_link_page(web):
    response = web.get(reverse("credentials:received"))

    assert response.status_code == 404
    assert "This link no longer works" in page_text(response)


def test_a_client_id_that_fails_validation_is_not_shown_back_in_case_it_is_the_secret(cd2_gateway, post):
    response = post(client_id=PLANTED_SECRET, secret=PLANTED_CLIENT_ID)

    assert "This is not a Canvas Data 2 Client ID" in page_text(response)
    assert PLANTED_SECRET not in response.content.decode()  # the leak guard checks it too


def test_a_broker_outage_still_shows_the_customer_their_receipt_and_the_sweep_queues_the_recheck_later(
    cd2_gateway, post, web, celery_messages, monkeypatch, django_capture_on_commit_callbacks
):
    def broker_down(*args, **kwargs):
        raise ConnectionRefusedError("broker down")

    monkeypatch.setattr(jobs, "job_enqueue", broker_down)
    cd2_gateway.set_mode("down")

    response = post()

    assert response.status_code == 302
    credential = CD2Credential.objects.get(status=CD2Credential.Status.PENDING_VERIFICATION)
    assert celery_messages == []
    # The receipt was not queued either, but waits in the outbox for the sweep.
    receipt = Notice.objects.get(kind=Notice.Kind.RECEIPT, credential=credential, state=Notice.State.PENDING)
    monkeypatch.undo()
    assert pending_credentials_due() == []  # too recent: its own re-check may still be coming
    later = timezone.now() + PENDING_SWEEP_AFTER + dt.timedelta(minutes=1)
    assert pending_credentials_due(now=later) == [credential.pk]

    with time_machine.travel(later):
        assert verify_pending_credentials() == 1
    assert [(m["task"], list(m["args"])) for m in celery_messages] == [
        ("credentials.tasks.verify_pending_credential", [credential.pk])
    ]
    with django_capture_on_commit_callbacks(execute=True):
        assert outbox.outbox_sweep() == 1
    assert [(m["task"], list(m["args"])) for m in celery_messages][-1] == (jobs.DELIVER_NOTICES, [[receipt.pk]])


# --------------------------------------------------------------------------
# The link is looked up once
# --------------------------------------------------------------------------


def test_the_page_looks_its_link_up_once_per_submission(cd2_gateway, post, institution):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        response = post()

    assert response.status_code == 302
    lookups = [q["sql"] for q in captured if "token_hash" in q["sql"] and q["sql"].lstrip().startswith("SELECT")]
    assert len(lookups) == 1, lookups
    assert CD2Credential.objects.filter(institution=institution).count() == 1


def test_a_link_passed_to_the_service_is_claimed_only_once(cd2_gateway, link, today):
    def submit(client_id, secret):
        return credential_submit(
            door=Door.customer(link=link.link, submitted_by="Ada", submitted_by_email="ada@northfield.example.edu"),
            client_id=client_id,
            secret=secret,
            expires_on=today + dt.timedelta(days=30),
            short_expiry_confirmed=True,
        )

    assert submit(PLANTED_CLIENT_ID, PLANTED_SECRET).result is Result.ACCEPTED
    # The same (now stale) link object again, with another good key: the conditional claim refuses it.
    assert (
        submit(fake_gateway.DEMO_ACCEPTED_CLIENT_ID, fake_gateway.DEMO_ACCEPTED_SECRET).result is Result.LINK_UNUSABLE
    )
    assert CD2Credential.objects.count() == 1


# --------------------------------------------------------------------------
# The same key again, when the one on file is no longer used
# --------------------------------------------------------------------------

NO_LONGER_USED = [
    (CD2Credential.Status.REVOKED, "this key was revoked, so it no longer works"),
    (CD2Credential.Status.INVALID, "this key stopped working: Instructure no longer accepts it"),
    (CD2Credential.Status.SUPERSEDED, "a newer key replaced it"),
]


def _on_file(institution, make_credential, status) -> CD2Credential:
    key = make_credential(institution, client_id=PLANTED_CLIENT_ID)
    CD2Credential.objects.filter(pk=key.pk).update(status=status)
    key.refresh_from_db()
    return key


@pytest.mark.parametrize(("status", "words"), NO_LONGER_USED)
def test_a_key_we_no_longer_use_handed_over_again_on_the_link_is_told_the_truth_and_the_link_still_works(
    cd2_gateway, post, link, institution, make_credential, status, words
):
    key = _on_file(institution, make_credential, status)

    response = post()

    text = page_text(response)
    assert response.status_code == 200
    assert words in text
    assert "create a new key at identity.instructure.com and submit that one with this link, which still works" in text
    assert "it is the key we use" not in text
    key.refresh_from_db()
    assert key.status == status and CD2Credential.objects.count() == 1
    link.link.refresh_from_db()
    assert link.link.is_usable()
    assert mail.outbox == []


@pytest.mark.parametrize(("status", "words"), NO_LONGER_USED)
def test_a_key_we_no_longer_use_entered_again_by_staff_is_refused_with_the_reason(
    cd2_gateway, institution, owner, make_credential, today, status, words
):
    key = _on_file(institution, make_credential, status)

    outcome = credential_submit(
        door=Door.staff(institution=institution, user=owner),
        client_id=PLANTED_CLIENT_ID,
        secret=PLANTED_SECRET,
        expires_on=today + dt.timedelta(days=300),
    )

    assert outcome.result is Result.ALREADY_HAVE and not outcome.stored
    message = outcome.errors["__all__"][0]
    assert words in message
    assert message.endswith("create a new key at identity.instructure.com and enter that one here.")
    key.refresh_from_db()
    assert key.status == status and CD2Credential.objects.count() == 1
