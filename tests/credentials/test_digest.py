from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.utils import timezone

from credentials.models import CD2Credential, ReminderLog
from credentials.services.digest import staff_digest_send
from credentials.services.keys import credential_set_status
from credentials.tasks import send_staff_digest
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
    ReminderLog.objects.create(
        credential=expiring,
        threshold=14,
        state=ReminderLog.State.FAILED,
        failed_at=timezone.now(),
        last_error="SMTPServerDisconnected: closed",
    )


def test_the_digest_lists_expiring_expired_failing_missing_and_failed_reminders(landscape, settings):
    settings.STAFF_DIGEST_RECIPIENTS = ["cs-team@edpotential.example"]

    digest = staff_digest_send()

    assert digest.sent
    [message] = mail.outbox
    assert message.to == ["cs-team@edpotential.example"]
    assert "1 expiring, 1 expired, 1 failing, 1 missing, 1 reminder failed" in message.subject
    sections = {key: [getattr(row, "name", None) for row in s.rows] for key, s in digest.sections.items()}
    assert sections["expiring"] == ["Expiring College"]
    assert sections["expired"] == ["Expired University"]
    assert sections["failing"] == ["Failing Academy"]
    assert sections["missing"] == ["Keyless School"]
    assert [log.credential.institution.name for log in digest.sections["failed_reminders"].rows] == ["Expiring College"]
    for part in (message.body, message.alternatives[0][0]):
        assert "Expiring College" in part and "Keyless School" in part
        assert "Healthy Institute" not in part and "Paused Polytechnic" not in part
        assert "SMTPServerDisconnected" in part


def test_without_configured_recipients_it_goes_to_staff_users_with_an_email(landscape, settings):
    settings.STAFF_DIGEST_RECIPIENTS = []
    users = get_user_model().objects
    users.create_user(username="cs", email="cs@edpotential.example", is_staff=True)
    users.create_user(username="gone", email="gone@edpotential.example", is_staff=True, is_active=False)
    users.create_user(username="customer", email="customer@example.edu")

    assert send_staff_digest.run() is True

    assert mail.outbox[0].to == ["cs@edpotential.example"]


def test_with_nobody_to_tell_it_sends_nothing(landscape, settings):
    settings.STAFF_DIGEST_RECIPIENTS = []

    assert staff_digest_send().sent is False
    assert mail.outbox == []
