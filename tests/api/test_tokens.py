from __future__ import annotations

import datetime as dt
import hashlib

import pytest
import time_machine
from django.utils import timezone

from api.models import ApiToken, Scope
from api.services import api_token_authenticate, api_token_revoke
from tests.conftest import PLANTED_SECRET


def key_url(slug: str) -> str:
    return f"/api/v1/institutions/{slug}/key"


def test_a_token_is_256_random_bits_stored_only_as_its_hash_with_a_short_prefix(make_token):
    plaintext, token = make_token()
    prefix, secret = plaintext[:13], plaintext[14:]
    assert prefix == token.prefix and token.prefix.startswith("cd2r_") and len(token.prefix) == 13
    assert len(secret) == 43  # 32 bytes, URL-safe base64
    stored = ApiToken.objects.filter(pk=token.pk).values().get()
    assert stored["token_hash"] == hashlib.sha256(plaintext.encode()).hexdigest()
    assert not any(plaintext in str(value) for value in stored.values())
    assert repr(token).count(secret) == 0


def test_two_tokens_never_share_a_value(make_token):
    assert make_token()[0] != make_token()[0]


def test_a_keys_list_token_cannot_read_a_secret(make_token, api, institution, make_credential):
    make_credential(institution, secret=PLANTED_SECRET)
    plaintext, _ = make_token([Scope.KEYS_LIST], institutions=[institution])
    response = api(plaintext).get(key_url(institution.slug))
    assert response.status_code == 403
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["code"] == "insufficient_scope"
    assert PLANTED_SECRET not in response.content.decode()
    # ... while it may list
    assert api(plaintext).get("/api/v1/keys/").status_code == 200


def test_an_institution_scoped_token_cannot_read_another_institution(
    make_token, api, institution, make_institution, make_credential
):
    other = make_institution()
    make_credential(institution)
    make_credential(other, secret=PLANTED_SECRET)
    plaintext, _ = make_token([Scope.KEYS_READ, Scope.KEYS_LIST], institutions=[institution])
    response = api(plaintext).get(key_url(other.slug))
    assert response.status_code == 404
    assert PLANTED_SECRET not in response.content.decode()
    # Indistinguishable from an institution that does not exist.
    missing = api(plaintext).get(key_url("no-such-institution"))
    assert (missing.status_code, missing.json()) == (404, response.json())
    assert api(plaintext).get(key_url(institution.slug)).status_code == 200
    listed = api(plaintext).get("/api/v1/keys/").json()["results"]
    assert [row["slug"] for row in listed] == [institution.slug]


@pytest.mark.parametrize("how", ["unknown", "revoked", "expired", "account_inactive", "malformed", "missing"])
def test_unknown_revoked_and_expired_tokens_get_the_same_401(how, make_token, api, institution, make_credential):
    make_credential(institution)
    plaintext, token = make_token(institutions=[institution])
    assert api(plaintext).get(key_url(institution.slug)).status_code == 200
    reference = api("cd2r_abcdefgh_" + "A" * 43).get(key_url(institution.slug))
    if how == "unknown":
        plaintext = "cd2r_abcdefgh_" + "B" * 43
    elif how == "revoked":
        api_token_revoke(token=token)
    elif how == "expired":
        ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    elif how == "account_inactive":
        token.account.is_active = False
        token.account.save()
    elif how == "malformed":
        plaintext = plaintext[:-1]
    elif how == "missing":
        plaintext = None
    response = api(plaintext).get(key_url(institution.slug))
    assert response.status_code == 401
    assert response.json() == reference.json()
    assert response["WWW-Authenticate"] == reference["WWW-Authenticate"] == 'Bearer realm="cd2-registry"'
    assert response["Content-Type"] == "application/problem+json"
    assert set(response.json()) >= {"type", "title", "status", "detail"}


def test_a_token_expires_at_its_time(make_token):
    plaintext, token = make_token()
    assert api_token_authenticate(plaintext=plaintext, ip_address="10.0.0.1") is not None
    with time_machine.travel(token.expires_at + dt.timedelta(seconds=1)):
        assert api_token_authenticate(plaintext=plaintext, ip_address="10.0.0.1") is None


def test_the_ip_allow_list_refuses_other_addresses_as_an_unknown_token(make_token, api, institution, make_credential):
    make_credential(institution)
    plaintext, _ = make_token(institutions=[institution], allowed_ips="10.1.0.0/16\n192.0.2.7")
    assert api_token_authenticate(plaintext=plaintext, ip_address="10.1.2.3") is not None
    assert api_token_authenticate(plaintext=plaintext, ip_address="192.0.2.7") is not None
    assert api_token_authenticate(plaintext=plaintext, ip_address="10.2.0.1") is None
    response = api(plaintext).get(key_url(institution.slug))  # the test client comes from 127.0.0.1
    assert response.status_code == 401


def test_each_account_has_its_own_rate_limit(make_token, api, institution):
    slow, _ = make_token([Scope.KEYS_LIST], institutions=[institution], rate_per_minute=3)
    other, _ = make_token([Scope.KEYS_LIST], institutions=[institution], rate_per_minute=3)
    statuses = [api(slow).get("/api/v1/keys/").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    limited = api(slow).get("/api/v1/keys/")
    assert limited.json()["status"] == 429 and int(limited["Retry-After"]) > 0
    assert api(other).get("/api/v1/keys/").status_code == 200


def test_the_last_use_is_recorded(make_token):
    plaintext, token = make_token()
    api_token_authenticate(plaintext=plaintext, ip_address="10.0.0.9")
    token.refresh_from_db()
    assert token.last_used_ip == "10.0.0.9" and token.last_used_at is not None


def test_the_last_use_is_written_at_most_once_a_minute_while_each_key_read_is_audited_as_a_handoff(
    make_token, api, institution, make_credential
):
    """A pipeline reading keys in a loop must not make each read a write of the token's row."""
    from credentials.models import AuditEvent

    make_credential(institution)
    plaintext, token = make_token([Scope.KEYS_READ], institutions=[institution])
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        assert api(plaintext).get(key_url(institution.slug)).status_code == 200
    token.refresh_from_db()
    assert token.last_used_at == start
    reads = AuditEvent.objects.filter(kind=AuditEvent.Kind.HANDOFF).count()
    with time_machine.travel(start + dt.timedelta(seconds=59), tick=False):
        assert api(plaintext).get(key_url(institution.slug)).status_code == 200
        # Read now, not written: the row still says the first use.
        assert api_token_authenticate(plaintext=plaintext, ip_address="10.0.0.7") is not None
    token.refresh_from_db()
    assert token.last_used_at == start
    assert AuditEvent.objects.filter(kind=AuditEvent.Kind.HANDOFF).count() == reads + 1
    later = start + dt.timedelta(seconds=61)
    with time_machine.travel(later, tick=False):
        assert api_token_authenticate(plaintext=plaintext, ip_address="10.0.0.7") is not None
    token.refresh_from_db()
    assert (token.last_used_at, token.last_used_ip) == (later, "10.0.0.7")
