"""Issue 12, item 6: staff add a key's submitter as a contact in one click (admin page, real client, CSRF on)."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from django.urls import reverse

from credentials.models import AuditEvent, CD2Credential
from credentials.services.keys import credential_create
from institutions.models import Contact, Institution

pytestmark = pytest.mark.django_db

SUBMITTER = "Sam.Submitter@Northfield.example.edu"


@pytest.fixture
def staff(make_staff, verified_login):
    def login(role: str) -> Client:
        client = Client(enforce_csrf_checks=True)
        user = make_staff(role)
        verified_login(client, user)
        client.user = user
        return client

    return login


@pytest.fixture
def submitted(institution, make_key):
    return credential_create(
        institution=institution,
        key=make_key(),
        source=CD2Credential.Source.LINK,
        submitted_by="Sam Submitter",
        submitted_by_email=SUBMITTER,
    )


def page(institution) -> str:
    return reverse("admin:institutions_institution_change", args=[institution.pk])


def add_url(institution) -> str:
    return reverse("admin:institutions_institution_add_submitter_contact", args=[institution.pk])


def click(client: Client, institution, credential) -> str:
    """Open the page, then press the button as a browser would (its form's CSRF token); the page after."""
    body = client.get(page(institution)).content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', body).group(1)
    response = client.post(
        add_url(institution), {"csrfmiddlewaretoken": token, "credential": credential.pk}, follow=True
    )
    assert response.status_code == 200
    return " ".join(response.content.decode().split())


def test_one_click_adds_the_submitter_as_a_contact_who_gets_reminders_and_a_second_click_changes_nothing(
    staff, institution, submitted
):
    client = staff("Customer success")
    assert f"Add {SUBMITTER} as a contact" in client.get(page(institution)).content.decode()

    first = click(client, institution, submitted)
    assert f"{SUBMITTER} is now a contact and receives reminders and links." in first
    assert f"Add {SUBMITTER} as a contact" not in first

    token = client.cookies["csrftoken"].value
    client.post(add_url(institution), {"credential": submitted.pk}, HTTP_X_CSRFTOKEN=token)

    contact = Contact.objects.get(institution=institution, email=SUBMITTER)
    assert (contact.name, contact.receives_reminders) == ("Sam Submitter", True)
    event = AuditEvent.objects.get(kind=AuditEvent.Kind.CONTACT_ADDED)
    assert (event.actor, event.institution, event.credential) == (client.user, institution, submitted)
    assert event.get_kind_display() == "Key submitter added as a contact"


def test_an_address_already_on_file_in_another_spelling_gets_no_button_and_no_second_contact(
    staff, institution, submitted
):
    Contact.objects.create(institution=institution, name="Sam", email="ＳＡＭ.submitter@northfield.example.edu")
    client = staff("Customer success")
    assert "as a contact</button>" not in client.get(page(institution)).content.decode()

    text = click(client, institution, submitted)

    assert "was already a contact; nothing changed." in text
    assert Contact.objects.filter(institution=institution).count() == 2  # Ada (the fixture's) and Sam
    assert not AuditEvent.objects.filter(kind=AuditEvent.Kind.CONTACT_ADDED).exists()


def test_a_viewer_sees_no_button_and_is_refused(staff, institution, submitted):
    client = staff("Viewer")
    assert "as a contact</button>" not in client.get(page(institution)).content.decode()
    token = client.cookies["csrftoken"].value

    response = client.post(add_url(institution), {"credential": submitted.pk}, HTTP_X_CSRFTOKEN=token)

    assert response.status_code == 403
    assert not Contact.objects.filter(email__iexact=SUBMITTER).exists()


def test_without_csrf_or_by_get_or_for_another_institutions_key_nothing_is_added(staff, institution, submitted):
    client = staff("Customer success")
    client.get(page(institution))
    token = client.cookies["csrftoken"].value
    other = Institution.objects.create(name="Elsewhere", slug="elsewhere", canvas_domain="else.instructure.com")

    assert client.post(add_url(institution), {"credential": submitted.pk}).status_code == 403  # no CSRF token
    assert client.get(add_url(institution)).status_code == 405
    assert client.post(add_url(other), {"credential": submitted.pk}, HTTP_X_CSRFTOKEN=token).status_code == 404
    assert not Contact.objects.filter(email__iexact=SUBMITTER).exists()
