"""Every door that sets a password passes it through AUTH_PASSWORD_VALIDATORS: "a" is refused at each.

createsuperuser with --noinput (Django checks only the prompted password;
edpotential/management/commands/createsuperuser.py checks this one too),
changepassword, the admin's "change password" of a user, and a staff
member's own password change. Each door is the real one, through
call_command or the admin's pages.
"""

from __future__ import annotations

import getpass

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError

pytestmark = pytest.mark.django_db

STRONG = "correct horse battery staple 42"


def test_createsuperuser_noinput_refuses_the_password_a(monkeypatch):
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "a")
    with pytest.raises(CommandError, match="DJANGO_SUPERUSER_PASSWORD is refused: This password is too short"):
        call_command("createsuperuser", interactive=False, username="root", email="root@example.com")
    assert not get_user_model().objects.filter(username="root").exists()


def test_createsuperuser_noinput_refuses_a_password_like_the_username(monkeypatch):
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "margaret.hamilton1")
    monkeypatch.setenv("DJANGO_SUPERUSER_USERNAME", "margaret.hamilton")
    with pytest.raises(CommandError, match="too similar to the username"):
        call_command("createsuperuser", interactive=False, email="margaret@example.com")
    assert not get_user_model().objects.exists()


def test_createsuperuser_noinput_accepts_a_strong_password(monkeypatch):
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", STRONG)
    call_command("createsuperuser", interactive=False, username="root", email="root@example.com", verbosity=0)
    assert get_user_model().objects.get(username="root").check_password(STRONG)


def test_changepassword_refuses_the_password_a(monkeypatch, django_user_model):
    user = django_user_model.objects.create_user("ops", "ops@example.com", STRONG)
    monkeypatch.setattr(getpass, "getpass", lambda prompt="": "a")
    with pytest.raises(CommandError, match="Aborting password change"):
        call_command("changepassword", "ops", stdout=None)
    user.refresh_from_db()
    assert user.check_password(STRONG)


def test_the_admin_refuses_a_to_change_a_users_password(admin_client, django_user_model):
    user = django_user_model.objects.create_user("ops", "ops@example.com", STRONG)
    response = admin_client.post(
        f"/admin/auth/user/{user.pk}/password/", {"password1": "a", "password2": "a", "usable_password": "true"}
    )
    assert response.status_code == 200
    assert "This password is too short" in response.content.decode()
    user.refresh_from_db()
    assert user.check_password(STRONG)


def test_a_staff_member_cannot_change_their_own_password_to_a(admin_client, admin_user):
    response = admin_client.post(
        "/admin/password_change/", {"old_password": "password", "new_password1": "a", "new_password2": "a"}
    )
    assert response.status_code == 200
    assert "This password is too short" in response.content.decode()
    admin_user.refresh_from_db()
    assert not admin_user.check_password("a")
