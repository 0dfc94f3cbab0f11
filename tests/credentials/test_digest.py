from __future__ import annotations

import datetime as dt

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.utils import timezone

from credentials.models import CD2Credential, Notice
from credentials.services import digest
from credentials.services.keys import credential_set_status
from credentials.services.notices import notice_build
from institutions.models import Institution


@pytest.fixture
def landscape(make_institution, make_credential):
    """One institution in each state the digest reports, and one it must leave out."""
    expiring = make_credential(make_institution(name="Expiring College"), days=12)
    make_credential(make_institution(name="Expired University"), days=-3)
    make_credential(make_institution(name="Healthy Institute"), days=300)
    failing = make_credential(make_institution(name="Failing Academy"), days=200)
    credential_set_status(credential=failing, status=CD2Credential.Status.INVALID, reason="401")
    make_institution(name="Keyless School")
    make_credential(make_institution(name="Paused Polytechnic", status=Institution.Status.PAUSED), days=-30)
    gave_up = notice_build(
        kind=Notice.Kind.REMINDER,
        dedupe_key="reminder:test",
        day=timezone.localdate(),
        now=timezone.now(),
        institution_id=expiring.institution_id,
        credential_id=expiring.pk,
    )
    gave_up.state, gave_up.closed_at, gave_up.last_error = Notice.State.FAILED, timezone.now(), "SMTPServerDisconnected"
    gave_up.save()


def sent_digest():
    digest.staff_digest_send()
    return Notice.objects.get(kind=Notice.Kind.STAFF_DIGEST)


def test_the_digest_lists_expiring_expired_failing_missing_and_undelivered_notices(landscape, settings):
    settings.STAFF_DIGEST_RECIPIENTS = ["cs-team@edpotential.example"]

    notice = sent_digest()
    built = digest.staff_digest_build()

    assert notice.state == Notice.State.SENT
    [message] = mail.outbox
    assert message.to == ["cs-team@edpotential.example"]
    assert "1 expiring, 1 expired, 1 failing, 1 missing, 1 notice undelivered" in message.subject
    sections = {key: [getattr(row, "name", None) for row in s.rows] for key, s in built.sections.items()}
    assert sections["expiring"] == ["Expiring College"]
    assert sections["expired"] == ["Expired University"]
    assert sections["failing"] == ["Failing Academy"]
    assert sections["missing"] == ["Keyless School"]
    assert [n.institution.name for n in built.sections["failed_notices"].rows] == ["Expiring College"]
    for part in (message.body, message.alternatives[0][0]):
        assert "Expiring College" in part and "Keyless School" in part
        assert "Healthy Institute" not in part and "Paused Polytechnic" not in part
        assert "the mail server closed the connection" in part and "SMTPServerDisconnected" not in part


def test_the_digest_lists_the_newest_lapses_first_and_links_to_all_past_its_limit(
    make_institution, make_credential, settings, monkeypatch, admin_client
):
    settings.STAFF_DIGEST_RECIPIENTS = ["cs-team@edpotential.example"]
    monkeypatch.setattr(digest, "SECTION_LIMIT", 3)
    for days in range(-1, -6, -1):
        make_credential(make_institution(name=f"Lapsed {-days}"), days=days)
    make_credential(make_institution(name="Paused lapse", status=Institution.Status.PAUSED), days=-1)

    sent_digest()

    [message] = mail.outbox
    expired = digest.staff_digest_build().sections["expired"]
    assert [row.name for row in expired.rows] == ["Lapsed 1", "Lapsed 2", "Lapsed 3"]
    assert (expired.total, expired.more) == (5, 2)
    assert f"... and 2 more: {expired.more_url}" in message.body
    path = expired.more_url.removeprefix(settings.SITE_URL)
    assert path == "/admin/institutions/institution/?expiry=expired&served=1"


def test_without_configured_recipients_it_goes_to_staff_users_with_an_email(landscape, settings):
    settings.STAFF_DIGEST_RECIPIENTS = []
    users = get_user_model().objects
    users.create_user(username="cs", email="cs@edpotential.example", is_staff=True)
    users.create_user(username="gone", email="gone@edpotential.example", is_staff=True, is_active=False)
    users.create_user(username="customer", email="customer@example.edu")

    sent_digest()

    assert mail.outbox[0].to == ["cs@edpotential.example"]


def test_with_nobody_to_tell_it_sends_nothing_and_says_why(landscape, settings):
    settings.STAFF_DIGEST_RECIPIENTS = []

    notice = sent_digest()

    assert notice.state == Notice.State.CANCELLED and "STAFF_DIGEST_RECIPIENTS" in notice.last_error
    assert mail.outbox == []


def test_the_digest_is_written_once_a_day_however_often_beat_fires(landscape, settings):
    settings.STAFF_DIGEST_RECIPIENTS = ["cs-team@edpotential.example"]

    digest.staff_digest_send()
    digest.staff_digest_send()

    assert len(mail.outbox) == 1
    assert Notice.objects.filter(kind=Notice.Kind.STAFF_DIGEST).count() == 1
    assert digest.staff_digest_decide(today=timezone.localdate() + dt.timedelta(days=7)) is not None
