"""Customer mail is written for people: why a key stopped working in words, who a reply reaches, names as typed."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from credentials.mail.context import link_context
from credentials.mail.messages import render_email
from credentials.models import CD2Credential
from credentials.services.keys import credential_create
from credentials.services.verification import credential_verify
from credentials.validators import CleanKey
from devtools.fake_gateway import FORBIDDEN_DISABLED_CLIENT_ID
from tests.conftest import PASSED_CHECK, PLANTED_CLIENT_ID, PLANTED_SECRET, delivered

pytestmark = pytest.mark.django_db

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)


def staff(username: str, **kwargs):
    return get_user_model().objects.create_user(username=username, is_staff=True, **kwargs)


def add_key(institution, *, client_id: str = PLANTED_CLIENT_ID, secret: str = PLANTED_SECRET) -> CD2Credential:
    return credential_create(
        institution=institution,
        key=CleanKey(client_id=client_id, secret=secret, expires_on=timezone.localdate() + dt.timedelta(days=200)),
        source=CD2Credential.Source.ADMIN,
        status=CD2Credential.Status.ACTIVE,
        check=PASSED_CHECK,
    )


def test_the_key_invalid_mail_says_why_in_words_and_shows_no_gateway_error_id(
    cd2_gateway, institution, django_capture_on_commit_callbacks
):
    key = add_key(institution)
    cd2_gateway.remove_key(PLANTED_CLIENT_ID)

    with django_capture_on_commit_callbacks(execute=True):
        credential_verify(credential_id=key.pk)

    [message] = delivered()
    html = message.alternatives[0][0]
    for part in (message.subject, message.body, html):
        assert not UUID.search(part)
        assert "gateway error id" not in part and "401" not in part
    assert "Instructure no longer accepts its Client ID and Secret." in message.body
    assert "Instructure no longer accepts its Client ID and Secret." in html
    # Staff keep the gateway's reference, to quote to Instructure.
    key.refresh_from_db()
    assert UUID.search(key.status_reason)


def test_a_key_whose_access_was_turned_off_says_so(cd2_gateway, institution, django_capture_on_commit_callbacks):
    key = add_key(institution, client_id=FORBIDDEN_DISABLED_CLIENT_ID, secret="any-secret")

    with django_capture_on_commit_callbacks(execute=True):
        credential_verify(credential_id=key.pk)

    [message] = delivered()
    assert (
        "Instructure recognised the key, but Canvas Data 2 access is turned off for your institution's Canvas account."
        in " ".join(message.body.split())
    )
    assert not UUID.search(message.body + message.alternatives[0][0])


def link_mail(institution) -> tuple[str, str, str]:
    return render_email(
        "link",
        link_context(institution=institution, url="https://registry.example/k/abc/", expires_at=timezone.now()),
    )


@pytest.mark.parametrize(
    ("owner", "reaches"),
    [
        ({"first_name": "Olivia", "last_name": "Owner", "email": "olivia@edpotential.example"}, "Olivia Owner"),
        ({"email": "olivia@edpotential.example"}, "olivia@edpotential.example"),
        (None, "our team"),
    ],
)
def test_the_link_mail_names_the_person_a_reply_reaches_never_a_username(institution, owner, reaches):
    if owner is not None:
        institution.account_owner = staff("demo", **owner)
        institution.save()

    _, text, html = link_mail(institution)

    assert f"Reply to this email; it goes to {reaches}." in text
    assert f"it goes to {reaches}." in html
    assert "demo" not in text and "demo" not in html


# A customer mail is translated (Institution.language), and only English has a
# possessive ("Harbour City Schools'"): every language writes "the key for <name>".
@pytest.mark.parametrize(
    ("name", "subject"),
    [
        ("Harbour City Schools", "Your link to send the Canvas Data 2 key for Harbour City Schools"),
        ("Northfield University", "Your link to send the Canvas Data 2 key for Northfield University"),
    ],
)
def test_subjects_name_the_institution_as_typed(make_institution, name, subject):
    institution = make_institution(name=name)

    got, text, html = link_mail(institution)

    assert got == subject
    assert "Schools's" not in text + html and "Schools'" not in text + html
