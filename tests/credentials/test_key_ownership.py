"""A key belongs to one institution; pending is a state of its own; links go only to people on file.

Against the real fake CD2 gateway, through the page and through the service.
"""

from __future__ import annotations

import datetime as dt

import pytest
import time_machine
from django.contrib.auth import get_user_model
from django.core import mail
from django.db import IntegrityError, transaction
from django.urls import reverse
from django.utils import timezone

from credentials.models import AuditEvent, CD2Credential, Notice, PendingReason, ReminderLog, SubmissionLink
from credentials.selectors import institutions_with_key_status, pending_credentials_due
from credentials.services.links import submission_link_create
from credentials.services.pending import VerifyResult, credential_verify_pending
from credentials.services.staff import institutions_export
from credentials.services.submission import Door, Result, credential_submit
from institutions.models import Contact, KeyState
from tests.conftest import PLANTED_CLIENT_ID, PLANTED_SECRET, delivered, reminders_run


@pytest.fixture
def owners(db):
    make = get_user_model().objects.create_user
    return make(username="nora", email="nora@registry.example"), make(username="paul", email="paul@registry.example")


@pytest.fixture
def north(make_institution, owners):
    institution = make_institution(name="Northfield University", slug="northfield", account_owner=owners[0])
    Contact.objects.create(institution=institution, name="Ada Admin", email="ada@northfield.example.edu")
    return institution


@pytest.fixture
def prairie(make_institution, owners):
    institution = make_institution(name="Prairie State Tech", slug="prairie-state-tech", account_owner=owners[1])
    Contact.objects.create(institution=institution, name="Pat Admin", email="pat@prairie.example.edu")
    return institution


def form(**overrides) -> dict:
    data = {
        "client_id": PLANTED_CLIENT_ID,
        "secret": PLANTED_SECRET,
        "expires_on": (timezone.localdate() + dt.timedelta(days=365)).isoformat(),
        "submitted_by": "Ada Admin",
        "submitted_by_email": "ada@northfield.example.edu",
    }
    data.update(overrides)
    return data


@pytest.fixture
def post(client, django_capture_on_commit_callbacks, isolated_cache, celery_messages):
    def send(institution, **overrides):
        new_link = submission_link_create(institution=institution)
        with django_capture_on_commit_callbacks(execute=True):
            response = client.post(
                reverse("credentials:submit", kwargs={"token": new_link.token}), data=form(**overrides)
            )
        new_link.link.refresh_from_db()
        return response, new_link.link

    return send


def text_of(response) -> str:
    return " ".join(response.content.decode().split())


# --------------------------------------------------------------------------
# One key, one institution
# --------------------------------------------------------------------------


def test_a_key_on_file_for_another_institution_is_refused_on_the_link_and_both_owners_are_told(
    cd2_gateway, post, north, prairie
):
    first, _ = post(north)
    assert first.status_code == 302
    kept = CD2Credential.objects.get()
    assert len(delivered()) == 1  # Northfield's receipt
    mail.outbox.clear()
    logins = cd2_gateway.login_count

    response, link = post(prairie, submitted_by_email="pat@prairie.example.edu")

    page = text_of(response)
    assert response.status_code == 200
    assert "This key is already on file with us" in page  # the error box's title names the cause
    assert "already on file with us for another institution" in page
    assert "create a new key" in page and "Prairie State Tech" in page
    assert "Northfield" not in page  # never which institution has it
    assert link.used_at is None  # the link still works
    assert not CD2Credential.objects.filter(institution=prairie).exists()
    assert CD2Credential.objects.get() == kept and kept.institution == north
    assert cd2_gateway.login_count == logins + 1  # proved first: CD2 accepted it (no oracle, test_client_id_oracle.py)
    assert mail.outbox == []  # the outbox sends it, not the request
    (notice,) = delivered()
    assert sorted(notice.to) == ["nora@registry.example", "paul@registry.example"]
    assert "Possible mix-up" in notice.subject
    assert "Northfield University" in notice.body and "Prairie State Tech" in notice.body
    assert "pat@prairie.example.edu" in notice.body  # who handed it over, kept in the notice's payload
    assert PLANTED_CLIENT_ID not in notice.message().as_string()
    refusal = AuditEvent.objects.filter(institution=prairie, kind=AuditEvent.Kind.SUBMISSION).get()
    assert refusal.detail["outcome"] == "taken"

    # The customer tries the same key again: refused and audited again, the owners not mailed again.
    again, _ = post(prairie, submitted_by_email="pat@prairie.example.edu")
    assert "already on file with us for another institution" in text_of(again)
    assert AuditEvent.objects.filter(institution=prairie, kind=AuditEvent.Kind.SUBMISSION).count() == 2
    assert len(delivered()) == 1
    assert Notice.objects.filter(kind=Notice.Kind.KEY_CONFLICT).count() == 1


def test_the_refusal_on_the_page_writes_the_institutions_name_escaped_once(
    cd2_gateway, post, north, make_institution, owners
):
    # The message comes from a template with autoescaping off; the page escapes it.
    odd = make_institution(name="Prairie <b>State</b> & Tech", slug="prairie-odd", account_owner=owners[1])
    post(north)

    response, _ = post(odd, submitted_by_email="pat@prairie.example.edu")

    content = response.content.decode()
    assert "accept it for Prairie &lt;b&gt;State&lt;/b&gt; &amp; Tech:" in content
    assert "<b>State</b>" not in content and "&amp;lt;" not in content


def test_the_same_key_again_for_the_same_institution_is_already_on_file_and_changes_nothing(cd2_gateway, post, north):
    post(north)
    kept = CD2Credential.objects.get()
    assert len(delivered()) == 1  # the receipt
    mail.outbox.clear()

    response, link = post(north)

    assert "We already have this key for Northfield University" in text_of(response)
    assert link.used_at is None
    assert list(CD2Credential.objects.all()) == [kept]
    kept.refresh_from_db()
    assert kept.status == CD2Credential.Status.ACTIVE
    assert delivered() == []


def test_staff_entering_another_institutions_key_are_refused_the_same_way(cd2_gateway, north, prairie, make_staff):
    staff = make_staff("Customer success")
    key = {
        "client_id": PLANTED_CLIENT_ID,
        "secret": PLANTED_SECRET,
        "expires_on": timezone.localdate() + dt.timedelta(days=365),
    }
    assert credential_submit(door=Door.staff(institution=north, user=staff), **key).result is Result.ACCEPTED

    outcome = credential_submit(door=Door.staff(institution=prairie, user=staff), **key)

    assert outcome.result is Result.TAKEN and not outcome.stored
    assert CD2Credential.objects.filter(institution=prairie).count() == 0


def test_the_database_refuses_a_second_row_for_one_client_id_whatever_its_status(north, prairie, make_credential):
    make_credential(north, status=CD2Credential.Status.ACTIVE, client_id=PLANTED_CLIENT_ID)
    CD2Credential.objects.update(status=CD2Credential.Status.REVOKED)
    with pytest.raises(IntegrityError), transaction.atomic():
        make_credential(prairie, client_id=PLANTED_CLIENT_ID)


def test_a_race_lost_at_the_constraint_is_answered_as_on_file_and_leaves_the_link_unused(
    cd2_gateway, north, prairie, make_credential, monkeypatch
):
    # The other door stores the key between our lookup and our insert.
    from credentials.services import submission

    real_store = submission._store

    def store_after_the_other_door(**kwargs):
        make_credential(north, client_id=PLANTED_CLIENT_ID)
        return real_store(**kwargs)

    monkeypatch.setattr(submission, "_store", store_after_the_other_door)
    link = submission_link_create(institution=prairie).link
    outcome = credential_submit(
        door=Door.customer(link=link, submitted_by="Pat", submitted_by_email="pat@prairie.example.edu"),
        client_id=PLANTED_CLIENT_ID,
        secret=PLANTED_SECRET,
        expires_on=timezone.localdate() + dt.timedelta(days=365),
    )

    assert outcome.result is Result.TAKEN
    link.refresh_from_db()
    assert link.used_at is None
    assert not CD2Credential.objects.filter(institution=prairie).exists()


# --------------------------------------------------------------------------
# Pending: 403, then 200
# --------------------------------------------------------------------------


@pytest.fixture
def clock():
    with time_machine.travel(dt.datetime(2027, 3, 1, 9, 0, tzinfo=dt.UTC), tick=False) as traveller:
        yield traveller


def test_a_403_keeps_the_key_pending_pauses_reminders_and_a_later_200_clears_pending_everywhere(
    clock,
    cd2_gateway,
    post,
    north,
    make_credential,
    admin_client,
    admin_user,
    verified_login,
    django_capture_on_commit_callbacks,
):
    old = make_credential(north, days=14)  # the 14-day reminder is due today
    assert reminders_run(dry_run=True).due == 1
    clock.shift(dt.timedelta(minutes=5))
    cd2_gateway.set_mode("forbidden")

    response, _ = post(north)

    assert response.status_code == 302
    pending = CD2Credential.objects.get(status=CD2Credential.Status.PENDING_VERIFICATION)
    assert (pending.pending_reason, pending.last_verdict) == (PendingReason.NOT_ENABLED, "forbidden")
    received = text_of(admin_client.get(reverse("credentials:received")))
    (receipt,) = delivered()
    for told in (received, " ".join(receipt.body.split())):
        assert "You do not need a new key" in told
        assert "ask your Instructure Customer Success Manager" in told
    # Pending everywhere staff look: the state, the filter, the dashboard count, the CSV, the key box.
    row = institutions_with_key_status().get(pk=north.pk)
    assert (row.key_state, row.days_left, row.pending_key_id) == (KeyState.PENDING, 14, pending.pk)
    listing = text_of(admin_client.get(reverse("admin:institutions_institution_changelist") + "?check=pending"))
    assert "Northfield University" in listing
    assert "Pending check" in listing
    dashboard = text_of(admin_client.get(reverse("admin:index")))
    assert '<span class="dash-count__n">1</span> <span class="key-badge key-badge--pending">' in dashboard
    page = text_of(admin_client.get(reverse("admin:institutions_institution_change", args=[north.pk])))
    assert pending.hint in page and "waits for its check" in page and old.hint in page
    csv = institutions_export(queryset=institutions_with_key_status(), actor=admin_user)
    assert ",pending," in csv
    # Reminders pause: the old key's 14-day step is not sent, not spent.
    mail.outbox.clear()
    assert reminders_run().sent == 0
    assert not ReminderLog.objects.exists()
    # Checked daily by the sweep (no backoff chain for "not enabled").
    assert pending_credentials_due() == []
    clock.shift(dt.timedelta(days=1))
    assert pending_credentials_due() == [pending.pk]

    cd2_gateway.set_mode(None)
    with django_capture_on_commit_callbacks(execute=True):
        assert credential_verify_pending(credential_id=pending.pk) == VerifyResult.ACTIVE

    verified_login(admin_client, admin_user)  # a day later: a fresh staff session
    pending.refresh_from_db()
    old.refresh_from_db()
    assert (pending.status, pending.pending_reason) == (CD2Credential.Status.ACTIVE, "")
    assert old.status == CD2Credential.Status.SUPERSEDED
    row = institutions_with_key_status().get(pk=north.pk)
    assert (row.key_state, row.pending_key_id, row.active_key_id) == (KeyState.OK, None, pending.pk)
    assert "Northfield" not in text_of(
        admin_client.get(reverse("admin:institutions_institution_changelist") + "?check=pending")
    )
    assert "is active" in delivered()[-1].subject


def test_a_403_recheck_stays_pending_and_the_sweep_stops_after_30_days_for_staff_to_decide(
    clock, cd2_gateway, north, make_credential
):
    cd2_gateway.set_mode("forbidden")
    outcome = credential_submit(
        door=Door.staff(institution=north, user=None),
        client_id=PLANTED_CLIENT_ID,
        secret=PLANTED_SECRET,
        expires_on=timezone.localdate() + dt.timedelta(days=365),
    )
    key = outcome.credential
    clock.shift(dt.timedelta(days=1))
    assert credential_verify_pending(credential_id=key.pk) == VerifyResult.WAITING
    key.refresh_from_db()
    assert key.status == CD2Credential.Status.PENDING_VERIFICATION and key.verification_attempts == 1
    clock.shift(dt.timedelta(days=30))
    assert pending_credentials_due() == []
    assert institutions_with_key_status().get(pk=north.pk).key_state == KeyState.PENDING


def test_when_the_recheck_finds_the_key_invalid_reminders_resume_at_once(
    clock, cd2_gateway, north, make_credential, django_capture_on_commit_callbacks
):
    make_credential(north, days=14)
    clock.shift(dt.timedelta(hours=1))
    cd2_gateway.set_mode("down")
    pending = credential_submit(
        door=Door.staff(institution=north, user=None),
        client_id="us-east-1#0a1b2c3d-0000-4000-8000-00000000dead",  # not a key the gateway knows
        secret="whatever-Zz9",
        expires_on=timezone.localdate() + dt.timedelta(days=365),
    ).credential
    assert reminders_run().sent == 0
    cd2_gateway.set_mode(None)

    assert credential_verify_pending(credential_id=pending.pk) == VerifyResult.INVALID

    assert "does not work" in delivered()[-1].subject
    mail.outbox.clear()
    assert reminders_run().sent == 1
    assert mail.outbox[0].to == ["ada@northfield.example.edu"]


# --------------------------------------------------------------------------
# Links only to people on file
# --------------------------------------------------------------------------


def test_the_link_laundering_sequence_mails_no_link_to_the_typed_address(cd2_gateway, post, north):
    cd2_gateway.set_mode("down")
    response, _ = post(
        north,
        client_id="us-east-1#0a1b2c3d-0000-4000-8000-00000000f00d",
        secret="not-a-real-secret-1",
        submitted_by_email="mallory@evil.example",
    )
    assert response.status_code == 302
    pending = CD2Credential.objects.get()
    cd2_gateway.set_mode(None)
    assert [m.to for m in delivered()] == [["mallory@evil.example"]]  # the "being checked" receipt, no link
    mail.outbox.clear()

    assert credential_verify_pending(credential_id=pending.pk) == VerifyResult.INVALID

    to_typed = [m for m in delivered() if "mallory@evil.example" in m.to + m.cc + m.bcc]
    on_file = [m for m in mail.outbox if "mallory@evil.example" not in m.to + m.cc + m.bcc]
    (notice,) = to_typed
    (new_link,) = SubmissionLink.objects.filter(reason="rejected")
    assert "/k/" not in notice.body and "/k/" not in notice.alternatives[0][0]
    assert "contacts of Northfield University on file" in " ".join(notice.body.split())
    (with_link,) = on_file
    assert sorted(with_link.to) == ["ada@northfield.example.edu", "nora@registry.example"]
    assert "/k/" in with_link.body
    assert "mallory" not in new_link.sent_to


# --------------------------------------------------------------------------
# Short expiry
# --------------------------------------------------------------------------


def test_a_short_expiry_needs_the_checkbox_and_staff_see_it_on_the_key(cd2_gateway, post, north):
    week = (timezone.localdate() + dt.timedelta(days=7)).isoformat()
    refused, link = post(north, expires_on=week)

    assert refused.status_code == 200
    page = text_of(refused)
    assert "expires in less than 6 months" in page
    assert 'name="confirm_short_expiry"' in refused.content.decode()
    assert link.used_at is None and not CD2Credential.objects.exists()

    accepted, _ = post(north, expires_on=week, confirm_short_expiry="on")
    assert accepted.status_code == 302
    assert CD2Credential.objects.get().is_short_expiry()
    assert CD2Credential.objects.get().status == CD2Credential.Status.ACTIVE


def test_a_year_long_key_needs_no_confirmation_and_is_not_short(cd2_gateway, post, north):
    response, _ = post(north)
    assert response.status_code == 302
    assert not CD2Credential.objects.get().is_short_expiry()
