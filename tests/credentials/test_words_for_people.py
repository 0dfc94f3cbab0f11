"""Issue 25, item 5: what staff read is words, counted one way, sorted by urgency, refused in words."""

from __future__ import annotations

import csv
import io

import pytest
from django.core import mail
from django.core.management import CommandError, call_command
from django.test import override_settings
from django.urls import reverse

from credentials.admin.dashboard import dashboard_context
from credentials.formatting import send_error_words
from credentials.models import AuditEvent, CD2Credential
from credentials.services.digest import staff_digest_build
from credentials.services.keys import credential_set_status
from devtools.fake_gateway import FakeGateway
from institutions.models import Institution
from tests.conftest import PLANTED_SECRET

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:institutions_institution_changelist")


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (
            "SMTPRecipientsRefused: {'ada@x.example': (550, b'5.1.1 User unknown')}",
            "the address was refused: user unknown",
        ),
        (
            "SMTPRecipientsRefused: {'ada@x.example': (552, b'5.2.2 Mailbox full.')}",
            "the mailbox is full: mailbox full",
        ),
        ("SMTPServerDisconnected: Connection unexpectedly closed", "the mail server closed the connection"),
        ("ConnectionRefusedError: [Errno 111] Connection refused", "the mail server could not be reached"),
        (
            "SMTPAuthenticationError: (535, b'5.7.8 Bad credentials')",
            "the mail server refused our sign-in (check EMAIL_URL): bad credentials",
        ),
        ("Not sent: set STAFF_DIGEST_RECIPIENTS.", "Not sent: set STAFF_DIGEST_RECIPIENTS."),
        ("", ""),
    ],
)
def test_a_send_error_reads_as_words(raw, words):
    assert send_error_words(raw) == words


def _client(client, make_staff, verified_login, role):
    user = make_staff(role)
    verified_login(client, user)
    client.user = user
    return client


def test_the_csv_writes_days_left_as_a_number_and_still_defuses_formulas(
    client, make_staff, verified_login, make_institution, make_credential
):
    make_credential(make_institution(name="Lapsed College"), days=-9)
    make_institution(name="=HYPERLINK(1)")
    response = _client(client, make_staff, verified_login, "Customer success").post(
        CHANGELIST, {"action": "export_csv", "select_across": "1", "index": "0", "_selected_action": ["0"]}
    )
    rows = {row["name"]: row for row in csv.DictReader(io.StringIO(response.content.decode()))}
    assert rows["Lapsed College"]["days_left"] == "-9"
    assert "'=HYPERLINK(1)" in rows


def test_a_refused_reveal_says_which_permission_is_missing_and_who_has_it(
    client, make_staff, verified_login, institution, make_credential
):
    key = make_credential(institution)
    response = _client(client, make_staff, verified_login, "Customer success").get(
        reverse("admin:credentials_cd2credential_reveal", args=[key.pk])
    )
    body = response.content.decode()
    assert response.status_code == 403
    assert "Revealing a key&#x27;s Secret needs the permission “Can reveal a key&#x27;s Secret (audited)”" in body
    assert "Data engineer" in body and "Customer success" in body  # who has it; the person's own group


def test_a_bare_admin_refusal_names_the_model_permission(client, make_staff, verified_login):
    response = _client(client, make_staff, verified_login, "Viewer").get(reverse("admin:auth_group_add"))
    assert response.status_code == 403
    assert "the permission “Can add group”" in response.content.decode()


def test_a_failing_active_key_never_reads_active(institution, make_credential):
    key = make_credential(institution)
    key.last_verdict = "rejected"
    assert key.state_label(key.expires_on) == "Failing check"


def test_key_status_sorts_by_urgency_not_by_code(client, make_staff, verified_login, make_institution, make_credential):
    # By code these read expiring, failing, ok, pending; by urgency failing comes first and ok last.
    make_credential(make_institution(name="A ok"), days=300)
    make_credential(make_institution(name="B expiring"), days=10)
    make_credential(make_institution(name="C pending"), status=CD2Credential.Status.PENDING_VERIFICATION)
    failing = make_credential(make_institution(name="D failing"), days=300)
    credential_set_status(credential=failing, status=CD2Credential.Status.INVALID, reason="401")
    staff = _client(client, make_staff, verified_login, "Customer success")
    columns = [getattr(column, "__name__", column) for column in staff.get(CHANGELIST).context["cl"].list_display]
    response = staff.get(CHANGELIST, {"o": str(columns.index("key_status"))})
    names = [row.name for row in response.context["cl"].result_list]
    assert names == ["D failing", "B expiring", "C pending", "A ok"]


def test_check_key_now_on_a_failing_invalid_key_checks_it_again_as_the_staff_member(
    client, make_staff, verified_login, institution, make_credential
):
    key = make_credential(institution, client_id="us-east-1#back-again", secret=PLANTED_SECRET)
    credential_set_status(credential=key, status=CD2Credential.Status.INVALID, reason="401")
    staff = _client(client, make_staff, verified_login, "Customer success")
    page = staff.get(reverse("admin:institutions_institution_change", args=[institution.pk])).content.decode()
    assert "Check key now" in page
    with (
        FakeGateway(keys={"us-east-1#back-again": PLANTED_SECRET}) as gateway,
        override_settings(CD2_API_URL=gateway.url),
    ):
        response = staff.post(reverse("admin:institutions_institution_check_key", args=[institution.pk]), follow=True)
    assert "passes the check now" in response.content.decode()
    key.refresh_from_db()
    assert (key.status, key.last_verdict) == (CD2Credential.Status.INVALID, "ok")
    event = AuditEvent.objects.get(kind=AuditEvent.Kind.KEY_CHECKED)
    assert event.actor == staff.user


def test_the_dashboard_the_digest_and_the_list_count_no_working_key_one_way(
    client, make_staff, verified_login, make_institution, make_credential
):
    make_credential(make_institution(name="ok"), days=300)
    make_credential(make_institution(name="expiring"), days=10)
    make_credential(make_institution(name="expired"), days=-3)
    make_institution(name="missing")
    make_credential(make_institution(name="pending"), status=CD2Credential.Status.PENDING_VERIFICATION)
    failing = make_credential(make_institution(name="failing"))
    credential_set_status(credential=failing, status=CD2Credential.Status.INVALID, reason="401")
    make_institution(name="paused", status=Institution.Status.PAUSED)

    listed = _client(client, make_staff, verified_login, "Viewer").get(CHANGELIST, {"check": "missing", "served": "1"})
    names = sorted(row.name for row in listed.context["cl"].result_list)
    assert names == ["expired", "failing", "missing", "pending"]
    assert dashboard_context()["no_working_key"] == staff_digest_build().no_working_key == 4


def test_the_dashboard_names_jobs_in_words(client, make_staff, verified_login):
    body = _client(client, make_staff, verified_login, "Viewer").get(reverse("admin:index")).content.decode()
    assert "Expiry reminders (hourly)" in body and ">send-expiry-reminders<" not in body


def test_verify_credentials_as_a_person_is_audited_as_that_person(make_staff, institution, make_credential):
    make_credential(institution, client_id="us-east-1#gone-now", secret=PLANTED_SECRET)
    person = make_staff("Customer success", username="ada")
    with FakeGateway() as gateway, override_settings(CD2_API_URL=gateway.url):
        call_command("verify_credentials", "--as", "ada", stdout=io.StringIO())
    event = AuditEvent.objects.get(kind=AuditEvent.Kind.KEY_INVALID)
    assert (event.actor, event.actor_label) == (person, "")


def test_verify_credentials_refuses_a_name_that_may_not_check_keys(make_staff, institution, make_credential):
    make_credential(institution)
    make_staff("Viewer", username="val")
    for name in ("val", "nobody"):
        with pytest.raises(CommandError, match="not an active staff user allowed to check keys"):
            call_command("verify_credentials", "--as", name)
    assert not AuditEvent.objects.exists()


def test_verify_credentials_without_as_names_the_command_not_the_daily_run(institution, make_credential):
    make_credential(institution, client_id="us-east-1#gone-too", secret=PLANTED_SECRET)
    with FakeGateway() as gateway, override_settings(CD2_API_URL=gateway.url):
        call_command("verify_credentials", stdout=io.StringIO())
    event = AuditEvent.objects.get(kind=AuditEvent.Kind.KEY_INVALID)
    assert event.actor is None and "via manage.py verify_credentials" in event.actor_label


@override_settings(STAFF_DIGEST_RECIPIENTS=["cs@registry.example"])
def test_send_staff_digest_sends_it_once_a_day(make_institution):
    make_institution(name="Keyless")
    out = io.StringIO()
    call_command("send_staff_digest", stdout=out)
    assert "sent to cs@registry.example" in out.getvalue()
    assert len(mail.outbox) == 1 and "No working key: 1 served institution" in mail.outbox[0].body
    again = io.StringIO()
    call_command("send_staff_digest", stdout=again)
    assert "already written" in again.getvalue() and len(mail.outbox) == 1
