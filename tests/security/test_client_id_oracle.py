"""No Client ID oracle on the customer page: "on file elsewhere" only to whoever proved the key.

A link holder who types another institution's Client ID with a made-up
Secret gets, byte for byte (but for the CSRF token), the page of a key
Instructure refused, and nobody is mailed. "On file for another
institution" is said only when CD2 accepted the key, or CD2 could not be
asked and the Secret is the one on file. Against the real fake gateway.
"""

from __future__ import annotations

import datetime as dt
import re

import pytest
from django.urls import reverse
from django.utils import timezone

from credentials.models import AuditEvent, CD2Credential, Notice
from credentials.services.links import submission_link_create
from credentials.services.submission import Door, Result, credential_submit, rejected_message
from devtools.fake_gateway import GATEWAY_DOWN_CLIENT_ID
from institutions.models import Contact
from tests.conftest import PLANTED_CLIENT_ID, PLANTED_SECRET

pytestmark = pytest.mark.django_db

WRONG_SECRET = "Made-Up-Secret-0000-guessing-client-ids"
ON_FILE_ELSEWHERE = "already on file with us for another institution"


@pytest.fixture
def north(make_institution):
    return make_institution(name="Northfield University", slug="northfield")


@pytest.fixture
def prairie(make_institution):
    institution = make_institution(name="Prairie State Tech", slug="prairie-state-tech")
    Contact.objects.create(institution=institution, name="Pat Admin", email="pat@prairie.example.edu")
    return institution


@pytest.fixture
def prairie_link(prairie, isolated_cache):
    return submission_link_create(institution=prairie)


def submit(client, link, *, client_id: str, secret: str):
    return client.post(
        reverse("credentials:submit", kwargs={"token": link.token}),
        data={
            "client_id": client_id,
            "secret": secret,
            "expires_on": (timezone.localdate() + dt.timedelta(days=365)).isoformat(),
            "submitted_by": "Pat Admin",
            "submitted_by_email": "pat@prairie.example.edu",
        },
    )


def without_csrf(response) -> bytes:
    return re.sub(rb'name="csrfmiddlewaretoken" value="[^"]+"', b"", response.content)


def test_a_wrong_secret_gets_the_same_bytes_whether_the_client_id_is_on_file_elsewhere_or_not(
    cd2_gateway, client, north, prairie_link, make_credential
):
    # Not on file anywhere: Instructure refuses the made-up Secret.
    unknown = submit(client, prairie_link, client_id=PLANTED_CLIENT_ID, secret=WRONG_SECRET)
    # Now the same Client ID is on file for Northfield; the same typing on the same link.
    make_credential(north, client_id=PLANTED_CLIENT_ID, secret=PLANTED_SECRET)
    on_file = submit(client, prairie_link, client_id=PLANTED_CLIENT_ID, secret=WRONG_SECRET)

    assert unknown.status_code == on_file.status_code == 200
    assert unknown["Content-Type"] == on_file["Content-Type"]
    assert without_csrf(unknown) == without_csrf(on_file)
    assert ON_FILE_ELSEWHERE not in on_file.content.decode()
    assert not Notice.objects.filter(kind=Notice.Kind.KEY_CONFLICT).exists()  # nobody mailed
    prairie_link.link.refresh_from_db()
    assert prairie_link.link.used_at is None
    # Staff can still see someone tried another institution's Client ID.
    tried = AuditEvent.objects.filter(kind=AuditEvent.Kind.SUBMISSION).order_by("pk").last()
    assert tried.detail["outcome"] == "on_file_not_proved" and tried.detail["on_file_for"] == north.pk


def test_the_right_secret_is_told_the_key_is_on_file_elsewhere_and_both_owners_are_mailed(
    cd2_gateway, client, north, prairie_link, make_credential
):
    make_credential(north, client_id=PLANTED_CLIENT_ID, secret=PLANTED_SECRET)
    response = submit(client, prairie_link, client_id=PLANTED_CLIENT_ID, secret=PLANTED_SECRET)
    assert ON_FILE_ELSEWHERE in " ".join(response.content.decode().split())
    assert Notice.objects.filter(kind=Notice.Kind.KEY_CONFLICT).count() == 1


def key(client_id: str, secret: str) -> dict:
    return {"client_id": client_id, "secret": secret, "expires_on": timezone.localdate() + dt.timedelta(days=365)}


def test_with_cd2_unreachable_only_the_secret_on_file_is_told_on_file(cd2_gateway, north, prairie, make_credential):
    # The fake gateway answers 503 for this Client ID, whatever the Secret: CD2 cannot be asked.
    make_credential(north, client_id=GATEWAY_DOWN_CLIENT_ID, secret="The-Secret-On-File-1234")
    door = Door.customer(
        link=submission_link_create(institution=prairie).link, submitted_by="Pat", submitted_by_email="pat@p.edu"
    )

    guessed = credential_submit(door=door, **key(GATEWAY_DOWN_CLIENT_ID, WRONG_SECRET))
    assert guessed.result is Result.REJECTED
    assert guessed.errors == {"__all__": [rejected_message()]}
    assert not Notice.objects.filter(kind=Notice.Kind.KEY_CONFLICT).exists()

    proved = credential_submit(door=door, **key(GATEWAY_DOWN_CLIENT_ID, "The-Secret-On-File-1234"))
    assert proved.result is Result.TAKEN
    assert Notice.objects.filter(kind=Notice.Kind.KEY_CONFLICT).count() == 1
    assert CD2Credential.objects.filter(institution=prairie).count() == 0  # nothing stored either way


def test_a_403_proves_the_key_too(cd2_gateway, north, prairie, make_credential):
    make_credential(north, client_id=PLANTED_CLIENT_ID, secret=PLANTED_SECRET)
    cd2_gateway.set_mode("forbidden")  # 403 AccountNotOnboarded: the key is real
    outcome = credential_submit(
        door=Door.staff(institution=prairie, user=None), **key(PLANTED_CLIENT_ID, PLANTED_SECRET)
    )
    assert outcome.result is Result.TAKEN
