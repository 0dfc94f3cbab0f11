"""POSTs to unknown submission-link tokens are rate limited per address like any other, and stop making cache keys.

They used to be answered "unusable link" before the view looked at the
limit, so a script could try tokens forever, each try adding a cache key.
"""

from __future__ import annotations

import secrets

import pytest
from django.core.cache import caches
from django.test import Client
from django.urls import reverse

from credentials.models import CD2Credential
from credentials.services.links import submission_link_create
from credentials.views import SUBMIT_RATE_PER_IP

PER_IP = int(SUBMIT_RATE_PER_IP.split("/")[0])


def guess(client: Client, ip: str = "203.0.113.50") -> int:
    url = reverse("credentials:submit", kwargs={"token": secrets.token_urlsafe(32)})
    return client.post(url, {"client_id": "x", "secret": "y"}, REMOTE_ADDR=ip).status_code


def cache_keys() -> int:
    # The private per-test LocMemCache of tests/security/conftest.py.
    return len(caches["default"]._cache)


@pytest.mark.django_db
@pytest.mark.usefixtures("held_clock")
def test_guessed_tokens_are_refused_with_429_once_the_address_is_over_its_limit(institution):
    client = Client()
    statuses = [guess(client) for _ in range(PER_IP + 5)]

    assert statuses == [404] * PER_IP + [429] * 5
    # The address is limited on real links too, and nothing is stored.
    link = submission_link_create(institution=institution)
    real = client.post(reverse("credentials:submit", kwargs={"token": link.token}), {}, REMOTE_ADDR="203.0.113.50")
    assert real.status_code == 429
    assert not CD2Credential.objects.exists()
    # Another address is not affected.
    assert guess(client, ip="198.51.100.9") == 404


@pytest.mark.django_db
@pytest.mark.usefixtures("held_clock")
def test_a_limited_address_adds_no_cache_key_per_guessed_token(db):
    client = Client()
    for _ in range(PER_IP + 1):
        guess(client)
    keys = cache_keys()

    assert [guess(client) for _ in range(20)] == [429] * 20
    assert cache_keys() == keys
