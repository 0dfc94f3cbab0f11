"""The institution admin is institutions' own: it stands without credentials' part, and takes an app's part through
one extension point (institutions.admin.InstitutionAdminExtension)."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.core import checks
from django.urls import reverse

import institutions.admin as institution_admin
from credentials.admin.institutions import KeysExtension
from institutions.admin import InstitutionAdminExtension, insert_after, institution_admin_extend
from institutions.models import Contact, Institution

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:institutions_institution_changelist")


@pytest.fixture
def without_extensions(monkeypatch):
    monkeypatch.setattr(institution_admin, "_extensions", [])


def test_without_an_extension_the_list_and_page_show_the_institutions_own_parts(
    admin_client, admin_user, make_institution, make_credential, without_extensions
):
    college = make_institution(name="Alpha College", account_owner=admin_user)
    Contact.objects.create(institution=college, name="Ada", email="ada@alpha.edu")
    make_credential(college, days=20)

    listing = admin_client.get(CHANGELIST)
    page = admin_client.get(reverse("admin:institutions_institution_change", args=[college.pk]))

    assert list(listing.context["cl"].list_display) == ["action_checkbox", "name", "canvas_domain", "account_owner"]
    assert [spec.title for spec in listing.context["cl"].filter_specs] == [
        "my institutions",
        "served",
        "status",
        "account owner",
    ]
    assert set(listing.context["cl"].model_admin.get_actions(listing.wsgi_request)) == {"delete_selected"}
    assert "Import" not in listing.content.decode()  # no resource, no button
    body = page.content.decode()
    assert "ada@alpha.edu" in body and "Key history" not in body and "Current key" not in body


def test_credentials_adds_its_part_once(admin_client):
    institution_admin_extend(KeysExtension())  # as a second ready() would

    assert [type(e) for e in institution_admin.institution_admin_extensions()] == [KeysExtension]


def test_an_extensions_hooks_reach_the_list(admin_client, make_institution, without_extensions):
    @admin.display(description="Slug backwards")
    def slug_backwards(obj: Institution) -> str:
        return obj.slug[::-1]

    class Backwards(InstitutionAdminExtension):
        def list_display(self, list_display):
            return insert_after(list_display, "name", slug_backwards)

    institution_admin_extend(Backwards())
    make_institution(name="Alpha College", slug="alpha")

    body = admin_client.get(CHANGELIST).content.decode()

    assert 'class="column-slug_backwards"' in body and ">ahpla<" in body


def test_insert_after_finds_an_item_or_a_tuples_first_element_and_refuses_a_missing_anchor():
    assert insert_after(("a", ("b", 1), "c"), "b", "x", "y") == ("a", ("b", 1), "x", "y", "c")
    with pytest.raises(ValueError):
        insert_after(("a",), "z", "x")


def test_djangos_system_checks_see_an_extensions_columns(without_extensions):
    class Typo(InstitutionAdminExtension):
        def list_display(self, list_display):
            return (*list_display, "no_such_column")

    institution_admin_extend(Typo())

    assert [error.id for error in checks.run_checks(tags=[checks.Tags.admin])] == ["admin.E108"]
