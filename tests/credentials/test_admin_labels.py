"""Labels say what happened and who did it: expired keys, staff checks, a wrong password on re-entry."""

from __future__ import annotations

import pytest
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone

from credentials.models import AuditEvent, CD2Credential, Notice, ReminderLog
from devtools.fake_gateway import FakeGateway
from tests.conftest import PLANTED_SECRET

pytestmark = pytest.mark.django_db


def test_the_keys_list_calls_a_key_past_its_date_expired_whatever_its_status(
    admin_client, make_institution, make_credential
):
    active = make_credential(make_institution(name="Old Active"), days=-3)
    revoked = make_credential(make_institution(name="Old Revoked"), days=-3)
    CD2Credential.objects.filter(pk=revoked.pk).update(status=CD2Credential.Status.REVOKED)
    make_credential(make_institution(name="Fresh"), days=30)

    response = admin_client.get(reverse("admin:credentials_cd2credential_changelist"))

    rows = {row.institution.name: row for row in response.context["cl"].result_list}
    admin_obj = response.context["cl"].model_admin
    today = timezone.localdate()
    assert admin_obj.state(rows["Old Active"]) == "Expired" == active.state_label(today)
    assert admin_obj.state(rows["Old Revoked"]) == "Expired (revoked)"
    assert admin_obj.state(rows["Fresh"]) == "Active"
    assert '<td class="field-state">Expired</td>' in response.content.decode()


def test_check_key_now_is_audited_as_the_staff_member_who_pressed_it(
    client, make_staff, verified_login, institution, make_credential
):
    make_credential(institution, client_id="us-east-1#check-me-2", secret=PLANTED_SECRET)
    user = make_staff("Customer success")
    verified_login(client, user)
    with (
        FakeGateway(keys={"us-east-1#check-me-2": PLANTED_SECRET}) as gateway,
        override_settings(CD2_API_URL=gateway.url),
    ):
        client.post(reverse("admin:institutions_institution_check_key", args=[institution.pk]))

    event = AuditEvent.objects.get(kind=AuditEvent.Kind.KEY_CHECKED)
    assert (event.actor, event.actor_label, event.get_kind_display()) == (user, "", "Key checked by staff")


def test_check_key_now_on_a_pending_key_names_the_staff_member_not_the_system(
    client, make_staff, verified_login, institution, make_credential
):
    make_credential(institution, client_id="us-east-1#unknown-pending", status="pending_verification")
    user = make_staff("Customer success")
    verified_login(client, user)
    with FakeGateway() as gateway, override_settings(CD2_API_URL=gateway.url):
        client.post(reverse("admin:institutions_institution_check_key", args=[institution.pk]))

    event = AuditEvent.objects.get(kind=AuditEvent.Kind.KEY_INVALID)
    assert (event.actor, event.actor_label) == (user, "")
    assert "system" not in str(event)


def test_a_wrong_password_on_the_reveal_form_is_not_a_failed_sign_in(
    client, make_staff, verified_login, institution, make_credential
):
    key = make_credential(institution)
    verified_login(client, make_staff("Data engineer"))
    client.post(
        reverse("admin:credentials_cd2credential_reveal", args=[key.pk]), {"reason": "checking", "password": "x"}
    )

    event = AuditEvent.objects.get()
    assert event.kind == AuditEvent.Kind.REAUTH_FAILED
    assert event.get_kind_display().startswith("Wrong password on re-entry")


def test_a_reminder_says_its_delivery_in_words():
    def step(threshold: int, **notice) -> ReminderLog:
        log = ReminderLog(threshold=threshold)
        log.notice = Notice(**notice)
        return log

    log = step(7, state=Notice.State.FAILED, attempts=3, last_error="550 mailbox unavailable")
    assert (log.step_label(), log.delivery(), log.attempts()) == ("7 days before", "Failed: 550 mailbox unavailable", 3)
    assert step(7, state=Notice.State.FAILED).delivery() == "Failed"
    assert step(-7, state=Notice.State.SUPERSEDED).delivery() == "Skipped"
    assert step(0, state=Notice.State.SENT, sent_at=timezone.now()).delivery() == "Sent"
    assert step(0, state=Notice.State.PENDING, attempts=1, last_error="451 later").delivery() == "Being sent"
    assert ReminderLog(threshold=3).delivery() == "Being sent"  # its notice not written yet
    assert ReminderLog(threshold=0).step_label() == "on the day"
