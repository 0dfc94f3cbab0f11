from __future__ import annotations

import datetime as dt

import pytest
import time_machine
from django.core import mail
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone

from credentials.models import AuditEvent, CD2Credential
from credentials.services.links import submission_link_create
from devtools.fake_gateway import FakeGateway
from tests.conftest import PLANTED_SECRET, STAFF_PASSWORD, reminder_step

pytestmark = pytest.mark.django_db

FULL_CLIENT_ID = "us-east-1#planted-client-id-7f3e9a"
ROLES = ("Viewer", "Customer success", "Data engineer", "superuser")


@pytest.fixture
def planted(institution, make_credential):
    """An institution whose active key holds PLANTED_SECRET, with history, a link, a reminder and audit events."""
    make_credential(institution, days=20)
    credential = make_credential(institution, days=300, secret=PLANTED_SECRET, client_id=FULL_CLIENT_ID)
    reminder_step(credential, 60, recipients="ada@northfield.example.edu")
    submission_link_create(institution=institution)
    AuditEvent.objects.create(kind=AuditEvent.Kind.SUBMISSION, institution=institution, credential=credential)
    return credential


def reveal_url(credential) -> str:
    return reverse("admin:credentials_cd2credential_reveal", args=[credential.pk])


def admin_pages(credential) -> dict[str, str]:
    institution = credential.institution
    event = AuditEvent.objects.filter(credential=credential).first()
    return {
        "index": reverse("admin:index"),
        "institution list": reverse("admin:institutions_institution_changelist"),
        "institution page": reverse("admin:institutions_institution_change", args=[institution.pk]),
        "institution add": reverse("admin:institutions_institution_add"),
        "key list": reverse("admin:credentials_cd2credential_changelist"),
        "key page": reverse("admin:credentials_cd2credential_change", args=[credential.pk]),
        "key history": reverse("admin:credentials_cd2credential_history", args=[credential.pk]),
        "link list": reverse("admin:credentials_submissionlink_changelist"),
        "reminder list": reverse("admin:credentials_reminderlog_changelist"),
        "audit list": reverse("admin:credentials_auditevent_changelist"),
        "audit page": reverse("admin:credentials_auditevent_change", args=[event.pk]),
        "add key": reverse("admin:institutions_institution_add_key", args=[institution.pk]),
        "revoke key": reverse("admin:institutions_institution_revoke_key", args=[institution.pk]),
        "reveal form": reveal_url(credential),
    }


# Pages a role may not open answer 403; everything else renders.
FORBIDDEN = {
    "Viewer": {"institution add", "add key", "revoke key", "reveal form"},
    "Customer success": {"reveal form"},
    "Data engineer": set(),
    "superuser": set(),
}
# The buttons each role sees (by their text), and those it must not see.
BUTTONS = {
    "Send submission link": {"Customer success", "Data engineer", "superuser"},
    "Send reminder now": {"Customer success", "Data engineer", "superuser"},
    "Check key now": {"Customer success", "Data engineer", "superuser"},
    "Add key by hand": {"Customer success", "Data engineer", "superuser"},
    "Revoke key": {"Customer success", "Data engineer", "superuser"},
    "Reveal Client ID and Secret": {"Data engineer", "superuser"},
    "Export selected institutions to CSV": {"Customer success", "Data engineer", "superuser"},
}


@pytest.mark.parametrize("role", ROLES)
def test_every_admin_page_renders_for_each_role_without_the_secret(staff_client, planted, role):
    client = staff_client(role)
    seen = ""
    for name, url in admin_pages(planted).items():
        response = client.get(url)
        expected = 403 if name in FORBIDDEN[role] else 200
        assert response.status_code == expected, f"{name} for {role}: {response.status_code}"
        body = response.content.decode()
        assert PLANTED_SECRET not in body, f"the Secret is on {name}"
        assert FULL_CLIENT_ID not in body, f"the full Client ID is on {name}"
        seen += body
    for button, roles in BUTTONS.items():
        assert (button in seen) == (role in roles), f"{button!r} for {role}"


@pytest.mark.parametrize("role", ROLES)
def test_no_role_can_add_change_or_delete_audit_events(staff_client, planted, role):
    client = staff_client(role)
    event = AuditEvent.objects.first()
    assert client.get(reverse("admin:credentials_auditevent_add")).status_code == 403
    assert client.get(reverse("admin:credentials_auditevent_delete", args=[event.pk])).status_code == 403
    client.post(reverse("admin:credentials_auditevent_change", args=[event.pk]), {"reason": "rewritten"})
    changelist = client.get(reverse("admin:credentials_auditevent_changelist"))
    client.post(
        reverse("admin:credentials_auditevent_changelist"),
        {"action": "delete_selected", "_selected_action": [event.pk], "post": "yes"},
    )
    event.refresh_from_db()
    assert event.reason == ""
    assert "delete_selected" not in changelist.content.decode()


def test_the_audit_list_filters_by_kind_person_institution_and_date(staff_client, planted, make_staff):
    AuditEvent.objects.create(kind=AuditEvent.Kind.EXPORT, actor=make_staff("Customer success"))
    response = staff_client("Viewer").get(reverse("admin:credentials_auditevent_changelist"))
    titles = {spec.title for spec in response.context["cl"].filter_specs}
    assert {"kind", "actor", "institution", "created at"} <= titles


# --------------------------------------------------------------------------
# Reveal
# --------------------------------------------------------------------------


def test_a_data_engineer_reveals_a_key_once_with_password_and_reason(staff_client, planted):
    client = staff_client("Data engineer")
    response = client.post(reveal_url(planted), {"reason": "Loading the backfill by hand", "password": STAFF_PASSWORD})
    body = response.content.decode()
    assert PLANTED_SECRET in body and FULL_CLIENT_ID in body
    assert "no-store" in response["Cache-Control"]
    event = AuditEvent.objects.get(kind=AuditEvent.Kind.REVEAL)
    assert (event.actor, event.credential, event.reason, event.ip_address) == (
        client.user,
        planted,
        "Loading the backfill by hand",
        "127.0.0.1",
    )


def test_the_reveal_form_itself_shows_no_secret_and_is_not_cached(staff_client, planted):
    response = staff_client("Data engineer").get(reveal_url(planted))
    assert PLANTED_SECRET not in response.content.decode()
    assert "no-store" in response["Cache-Control"]
    assert not AuditEvent.objects.filter(kind=AuditEvent.Kind.REVEAL).exists()


def test_reveal_is_refused_without_the_permission(staff_client, planted):
    response = staff_client("Customer success").post(
        reveal_url(planted), {"reason": "Just curious", "password": STAFF_PASSWORD}
    )
    assert response.status_code == 403
    assert PLANTED_SECRET not in response.content.decode()
    assert not AuditEvent.objects.filter(kind=AuditEvent.Kind.REVEAL).exists()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"reason": "Loading the backfill"}, "Enter your password"),
        ({"reason": "Loading the backfill", "password": "wrong-password"}, "That is not your password"),
        ({"reason": "", "password": STAFF_PASSWORD}, "This field is required"),
        ({"reason": "why", "password": STAFF_PASSWORD}, "at least 5 characters"),
    ],
)
def test_reveal_is_refused_without_password_or_reason(staff_client, planted, data, message):
    response = staff_client("Data engineer").post(reveal_url(planted), data)
    body = response.content.decode()
    assert message in body
    assert PLANTED_SECRET not in body
    assert not AuditEvent.objects.filter(kind=AuditEvent.Kind.REVEAL).exists()


def test_a_wrong_password_is_audited_and_five_in_a_row_sign_the_user_out(staff_client, planted):
    client = staff_client("Data engineer")
    for _ in range(4):
        assert client.post(reveal_url(planted), {"reason": "guessing", "password": "nope"}).status_code == 200
    response = client.post(reveal_url(planted), {"reason": "guessing", "password": "nope"})
    assert response.status_code == 302
    assert AuditEvent.objects.filter(kind=AuditEvent.Kind.REAUTH_FAILED).count() == 5
    # Signed out: the admin sends the next request to the login page.
    assert client.get(reveal_url(planted)).status_code == 302


def test_the_password_stays_fresh_for_five_minutes_only(staff_client, planted):
    client = staff_client("Data engineer")
    with time_machine.travel(timezone.now(), tick=False) as traveller:
        client.post(reveal_url(planted), {"reason": "first load", "password": STAFF_PASSWORD})
        traveller.shift(dt.timedelta(minutes=4))
        again = client.post(reveal_url(planted), {"reason": "second load"})
        assert PLANTED_SECRET in again.content.decode()
        traveller.shift(dt.timedelta(minutes=2))
        stale = client.post(reveal_url(planted), {"reason": "third load"})
        assert PLANTED_SECRET not in stale.content.decode()
        assert "Enter your password" in stale.content.decode()
    assert AuditEvent.objects.filter(kind=AuditEvent.Kind.REVEAL).count() == 2


# --------------------------------------------------------------------------
# Adding a key by hand
# --------------------------------------------------------------------------


def add_key_url(institution) -> str:
    return reverse("admin:institutions_institution_add_key", args=[institution.pk])


def test_staff_add_a_key_that_cd2_accepts_and_it_becomes_active(staff_client, institution, today):
    client = staff_client("Customer success")
    page = client.get(add_key_url(institution)).content.decode()
    assert 'type="password" name="secret"' in page and 'type="password" name="client_id"' in page
    expires = today + dt.timedelta(days=365)
    with FakeGateway(keys={FULL_CLIENT_ID: PLANTED_SECRET}) as gateway, override_settings(CD2_API_URL=gateway.url):
        response = client.post(
            add_key_url(institution),
            {"client_id": FULL_CLIENT_ID, "secret": PLANTED_SECRET, "expires_on": expires.isoformat()},
            follow=True,
        )
    credential = CD2Credential.objects.get(institution=institution)
    assert (credential.status, credential.source, credential.created_by) == ("active", "admin", client.user)
    assert credential.secret == PLANTED_SECRET
    body = response.content.decode()
    assert "passed the CD2 check" in body
    assert PLANTED_SECRET not in body and FULL_CLIENT_ID not in body


def test_a_key_cd2_rejects_is_not_stored_and_not_echoed(staff_client, institution, today):
    client = staff_client("Customer success")
    expires = today + dt.timedelta(days=365)
    with FakeGateway() as gateway, override_settings(CD2_API_URL=gateway.url):
        response = client.post(
            add_key_url(institution),
            {"client_id": FULL_CLIENT_ID, "secret": PLANTED_SECRET, "expires_on": expires.isoformat()},
        )
    body = response.content.decode()
    assert response.status_code == 200
    assert "errornote" in body
    assert PLANTED_SECRET not in body and FULL_CLIENT_ID not in body
    assert not CD2Credential.objects.exists()


def test_a_malformed_key_gets_the_same_messages_as_the_public_page(staff_client, institution, today):
    response = staff_client("Customer success").post(
        add_key_url(institution),
        {"client_id": "not-a-client-id", "secret": PLANTED_SECRET, "expires_on": today.isoformat()},
    )
    body = response.content.decode()
    assert "This is not a Canvas Data 2 Client ID" in body
    assert "not in the future" in body
    assert PLANTED_SECRET not in body
    assert not CD2Credential.objects.exists()


def test_a_viewer_cannot_add_a_key(staff_client, institution, today):
    response = staff_client("Viewer").post(
        add_key_url(institution),
        {"client_id": FULL_CLIENT_ID, "secret": PLANTED_SECRET, "expires_on": "2030-01-01"},
    )
    assert response.status_code == 403
    assert not CD2Credential.objects.exists()
    assert mail.outbox == []


@pytest.mark.parametrize(
    ("status", "words"),
    [
        ("revoked", "this key was revoked, so it no longer works"),
        ("invalid", "this key stopped working: Instructure no longer accepts it"),
        ("superseded", "a newer key replaced it"),
    ],
)
def test_staff_entering_a_key_we_no_longer_use_read_why_and_nothing_changes(
    staff_client, institution, make_credential, today, status, words
):
    key = make_credential(institution, client_id=FULL_CLIENT_ID)
    CD2Credential.objects.filter(pk=key.pk).update(status=status)
    client = staff_client("Customer success")
    with FakeGateway(keys={FULL_CLIENT_ID: PLANTED_SECRET}) as gateway, override_settings(CD2_API_URL=gateway.url):
        response = client.post(
            add_key_url(institution),
            {
                "client_id": FULL_CLIENT_ID,
                "secret": PLANTED_SECRET,
                "expires_on": (today + dt.timedelta(days=365)).isoformat(),
            },
        )
    body = " ".join(response.content.decode().split())
    assert response.status_code == 200
    assert words in body and "enter that one here" in body
    assert PLANTED_SECRET not in body and FULL_CLIENT_ID not in body
    assert list(CD2Credential.objects.values_list("status", flat=True)) == [status]
