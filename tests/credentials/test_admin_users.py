"""Who did it is kept for ever: audit events keep the actor's username, and staff with history are only deactivated."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.db.models import ProtectedError

from credentials.models import AuditEvent
from credentials.services.audit import audit_record

User = get_user_model()


@pytest.fixture
def superuser(make_staff):
    return make_staff(None, is_superuser=True)


def test_an_audit_event_stores_the_actors_username(make_staff):
    ada = make_staff("Data engineer", username="ada")
    event = audit_record(kind=AuditEvent.Kind.REVEAL, actor=ada, reason="support ticket 42")
    event.refresh_from_db()
    assert event.actor_username == "ada"
    # Renaming the account later does not rewrite history.
    User.objects.filter(pk=ada.pk).update(username="ada-renamed")
    event.refresh_from_db()
    assert event.actor_username == "ada" and str(event).startswith("Secret revealed by ada at")


def test_a_user_named_by_the_audit_log_cannot_be_deleted_by_any_code_path(make_staff):
    ada = make_staff("Data engineer")
    audit_record(kind=AuditEvent.Kind.REVEAL, actor=ada)
    with pytest.raises(ProtectedError):
        ada.delete()
    assert AuditEvent.objects.get().actor == ada


def test_the_admin_refuses_to_delete_a_user_with_audit_history_and_says_to_deactivate(
    client, verified_login, superuser, make_staff
):
    ada = make_staff("Data engineer", username="ada")
    audit_record(kind=AuditEvent.Kind.HANDOFF, actor=ada)
    verified_login(client, superuser)
    for response in (
        client.get(f"/admin/auth/user/{ada.pk}/delete/", follow=True),
        client.post(f"/admin/auth/user/{ada.pk}/delete/", {"post": "yes"}, follow=True),
    ):
        assert response.redirect_chain[-1][0] == f"/admin/auth/user/{ada.pk}/change/"
        body = response.content.decode()
        assert "Cannot delete ada: 1 audit event(s) name them" in body
        assert "Deactivate the account instead" in body
    bulk = client.post(
        "/admin/auth/user/", {"action": "delete_selected", "_selected_action": [ada.pk], "post": "yes"}, follow=True
    )
    assert bulk.status_code == 200
    assert User.objects.filter(pk=ada.pk).exists()


def test_a_user_without_audit_history_can_still_be_deleted(client, verified_login, superuser, make_staff):
    newcomer = make_staff("Viewer")
    verified_login(client, superuser)
    response = client.post(f"/admin/auth/user/{newcomer.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not User.objects.filter(pk=newcomer.pk).exists()


def test_a_deactivated_users_events_still_name_them_in_the_audit_log(client, verified_login, superuser, make_staff):
    ada = make_staff("Data engineer", username="ada-the-engineer")
    audit_record(kind=AuditEvent.Kind.REVEAL, actor=ada, reason="support ticket 42")
    User.objects.filter(pk=ada.pk).update(is_active=False)
    verified_login(client, superuser)
    page = client.get("/admin/credentials/auditevent/").content.decode()
    assert "ada-the-engineer" in page


def test_the_audit_list_names_the_actor_from_the_event_itself(client, verified_login, superuser):
    # A row whose account link is gone (deleted before migration 0005) still has its username.
    AuditEvent.objects.create(kind=AuditEvent.Kind.REVEAL, actor=None, actor_username="long-gone-engineer")
    verified_login(client, superuser)
    page = client.get("/admin/credentials/auditevent/").content.decode()
    assert "long-gone-engineer" in page
    assert client.get("/admin/credentials/auditevent/", {"q": "long-gone"}).context["cl"].result_count == 1
