"""The index groups what staff use; security housekeeping is one section, for superusers only."""

from __future__ import annotations

import pytest
from django.urls import reverse

pytestmark = pytest.mark.django_db


def sections(client) -> dict[str, list[str]]:
    response = client.get(reverse("admin:index"))
    assert response.status_code == 200
    return {app["name"]: [m["name"] for m in app["models"]] for app in response.context["app_list"]}


def test_a_superuser_sees_the_work_first_and_security_last(client, make_staff, verified_login):
    verified_login(client, make_staff(None, is_superuser=True))

    found = sections(client)

    assert list(found) == ["Institutions", "Keys", "Notices and reminders", "Audit", "Data pipeline API", "Security"]
    assert found["Keys"] == ["CD2 keys", "Submission links"]
    assert set(found["Security"]) >= {"Access attempts", "Groups", "Users", "TOTP devices", "Static devices"}
    body = client.get(reverse("admin:index")).content.decode()
    for raw in ("AXES", "OTP_STATIC", "OTP_TOTP", "Otp_Totp"):
        assert raw not in body


@pytest.mark.parametrize("role", ["Viewer", "Customer success", "Data engineer"])
def test_staff_without_superuser_see_no_security_section(client, make_staff, verified_login, role):
    verified_login(client, make_staff(role))

    found = sections(client)

    assert "Security" not in found and "Other" not in found
    assert found["Institutions"] == ["Institutions"]


def test_an_app_page_still_lists_its_own_models(admin_client):
    response = admin_client.get(reverse("admin:app_list", args=["credentials"]))
    assert response.status_code == 200
    assert [app["app_label"] for app in response.context["app_list"]] == ["credentials"]
