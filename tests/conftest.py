from __future__ import annotations

import datetime as dt
import itertools

import pytest
from django.utils import timezone

from credentials.models import CD2Credential
from credentials.services import credential_create
from credentials.validators import CleanKey
from institutions.models import Contact, Institution

_counter = itertools.count(1)

# A recognisable secret: tests that look for leaks search for this exact value.
PLANTED_SECRET = "PLANTED-s3cr3t-Zq8vX1nB7kLw2"


@pytest.fixture
def today() -> dt.date:
    return timezone.localdate()


@pytest.fixture
def make_institution(db):
    def make(**kwargs) -> Institution:
        n = next(_counter)
        defaults = {
            "name": f"Institution {n}",
            "slug": f"institution-{n}",
            "canvas_domain": f"inst{n}.instructure.com",
            "status": Institution.Status.ACTIVE,
        }
        defaults.update(kwargs)
        institution = Institution.objects.create(**defaults)
        return institution

    return make


@pytest.fixture
def institution(make_institution) -> Institution:
    institution = make_institution(name="Northfield University", slug="northfield")
    Contact.objects.create(institution=institution, name="Ada Admin", email="ada@northfield.example.edu")
    return institution


@pytest.fixture
def make_key():
    def make(*, days: int = 365, secret: str | None = None, client_id: str | None = None) -> CleanKey:
        n = next(_counter)
        return CleanKey(
            client_id=client_id or f"us-east-1#0a1b2c3d-0000-4000-8000-{n:012d}",
            secret=secret or f"secret-value-{n}-Xy9",
            expires_on=timezone.localdate() + dt.timedelta(days=days),
        )

    return make


@pytest.fixture
def make_credential(make_key):
    def make(institution, *, days: int = 365, status=CD2Credential.Status.ACTIVE, **key_kwargs) -> CD2Credential:
        return credential_create(
            institution=institution,
            key=make_key(days=days, **key_kwargs),
            source=CD2Credential.Source.ADMIN,
            status=status,
            verification="ok: test" if status == CD2Credential.Status.ACTIVE else "",
        )

    return make
