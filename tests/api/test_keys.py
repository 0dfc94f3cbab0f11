from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from api.models import Scope
from credentials.models import AuditEvent, CD2Credential
from credentials.selectors import institutions_with_key_status, institutions_with_key_summary
from credentials.services.keys import credential_set_status, key_summaries_fix
from institutions.models import Institution
from tests.conftest import PLANTED_CLIENT_ID, PLANTED_SECRET


def key_url(slug: str) -> str:
    return f"/api/v1/institutions/{slug}/key"


def test_a_read_returns_the_active_key_with_no_store_and_writes_one_audit_row(
    make_token, api, institution, make_credential
):
    key = make_credential(institution, client_id=PLANTED_CLIENT_ID, secret=PLANTED_SECRET)
    plaintext, token = make_token(institutions=[institution], name="airflow-prod")
    response = api(plaintext).get(key_url(institution.slug), REMOTE_ADDR="203.0.113.5")
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response.json() == {
        "client_id": PLANTED_CLIENT_ID,
        "client_secret": PLANTED_SECRET,
        "expires_on": key.expires_on.isoformat(),
        "region": "us-east-1",
        "key_id": key.pk,
    }
    event = AuditEvent.objects.get(kind=AuditEvent.Kind.HANDOFF)
    assert event.credential == key and event.institution == institution
    assert event.actor_label == "API: airflow-prod"
    assert event.detail["account_id"] == token.account.pk and event.detail["token"] == token.prefix
    assert event.ip_address == "127.0.0.1"  # the test client's address; X-Forwarded-For is not trusted
    assert PLANTED_SECRET not in str(event.detail) + event.reason
    assert PLANTED_CLIENT_ID not in str(event.detail)
    api(plaintext).get(key_url(institution.slug))
    assert AuditEvent.objects.filter(kind=AuditEvent.Kind.HANDOFF).count() == 2


@pytest.mark.parametrize(
    "setup, status, code",
    [
        ("none", 404, "no_key"),
        ("revoked", 404, "no_key"),
        ("pending", 409, "key_pending"),
        ("invalid", 409, "key_invalid"),
        ("expired", 409, "key_expired"),
    ],
)
def test_a_read_without_a_usable_key_says_why(setup, status, code, make_token, api, institution, make_credential):
    if setup == "revoked":
        credential_set_status(credential=make_credential(institution), status=CD2Credential.Status.REVOKED)
    elif setup == "pending":
        make_credential(institution, status=CD2Credential.Status.PENDING_VERIFICATION, secret=PLANTED_SECRET)
    elif setup == "invalid":
        key = make_credential(institution, secret=PLANTED_SECRET)
        credential_set_status(credential=key, status=CD2Credential.Status.INVALID, reason="401")
    elif setup == "expired":
        make_credential(institution, days=-1, secret=PLANTED_SECRET)
    plaintext, _ = make_token(institutions=[institution])
    response = api(plaintext).get(key_url(institution.slug))
    assert (response.status_code, response.json()["code"]) == (status, code)
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["type"] == f"urn:cd2-registry:problem:{code}"
    assert PLANTED_SECRET not in response.content.decode()
    assert not AuditEvent.objects.filter(kind=AuditEvent.Kind.HANDOFF).exists()


def test_the_list_shows_metadata_and_never_a_secret(make_token, api, institution, make_credential):
    key = make_credential(institution, client_id=PLANTED_CLIENT_ID, secret=PLANTED_SECRET)
    plaintext, _ = make_token([Scope.KEYS_LIST], all_institutions=True)
    response = api(plaintext).get("/api/v1/keys/")
    assert response.status_code == 200
    body = response.content.decode()
    assert PLANTED_SECRET not in body and PLANTED_CLIENT_ID not in body
    (row,) = response.json()["results"]
    assert row["slug"] == institution.slug and row["canvas_domain"] == institution.canvas_domain
    assert row["key_state"] == "ok" and row["key_id"] == key.pk and row["hint"] == key.hint
    assert row["region"] == "us-east-1" and row["expires_on"] == key.expires_on.isoformat()
    assert row["last_checked_at"] is not None and row["changed_at"]


def test_changed_at_moves_when_the_key_changes(make_token, api, institution, make_credential):
    plaintext, _ = make_token([Scope.KEYS_LIST], institutions=[institution])
    key = make_credential(institution)
    first = api(plaintext).get("/api/v1/keys/").json()["results"][0]["changed_at"]
    credential_set_status(credential=key, status=CD2Credential.Status.INVALID, now=timezone.now() + dt.timedelta(1))
    later = api(plaintext).get("/api/v1/keys/", changed_since=first).json()["results"]
    assert [row["key_state"] for row in later] == ["failing"]
    assert later[0]["changed_at"] > first


def test_a_bad_changed_since_is_a_400_problem(make_token, api):
    plaintext, _ = make_token([Scope.KEYS_LIST], all_institutions=True)
    response = api(plaintext).get("/api/v1/keys/", changed_since="yesterday")
    assert response.status_code == 400 and "changed_since" in response.json()["errors"]


def _pages(client_api, url, **params):
    """Every page of a cursor-paginated list, with the queries each took."""
    rows, queries = [], []
    response = None
    while url:
        with CaptureQueriesContext(connection) as captured:
            response = client_api.get(url, **params)
        assert response.status_code == 200
        queries.append(len(captured))
        rows += response.json()["results"]
        url, params = response.json()["next"], {}
    return rows, queries


def test_changed_since_pages_through_1000_institutions_with_flat_queries(make_token, api, make_key, today):
    old = timezone.now() - dt.timedelta(days=30)
    institutions = Institution.objects.bulk_create(
        Institution(name=f"School {n}", slug=f"school-{n:04d}", canvas_domain=f"s{n}.instructure.com")
        for n in range(1000)
    )
    CD2Credential.objects.bulk_create(
        CD2Credential(
            institution=inst,
            client_id=f"us-east-1#0000-{n}",
            secret="x",
            region="us-east-1",
            hint=f"us-east-1 …{n:04d}",
            expires_on=today + dt.timedelta(days=n % 400),
            status=CD2Credential.Status.ACTIVE,
            source=CD2Credential.Source.IMPORT,
        )
        for n, inst in enumerate(institutions)
    )
    key_summaries_fix(institution_ids=None)  # bulk rows, with the summary the key services would have written
    Institution.objects.update(updated_at=old)
    recent = timezone.now()
    changed = institutions[::7]  # 143 institutions changed since `recent`
    Institution.objects.filter(pk__in=[i.pk for i in changed]).update(updated_at=recent)
    plaintext, _ = make_token([Scope.KEYS_LIST], all_institutions=True)

    everything, queries = _pages(api(plaintext), "/api/v1/keys/", page_size=100)
    assert len(everything) == 1000 and len({row["slug"] for row in everything}) == 1000
    # Token and page, flat at 1,000; the token's last use is written on the first page only (once a minute).
    assert len(queries) == 10 and queries[0] == 3 and set(queries[1:]) == {2}

    since = (recent - dt.timedelta(microseconds=1)).isoformat()
    rows, queries = _pages(api(plaintext), "/api/v1/keys/", changed_since=since, page_size=50)
    assert sorted(row["slug"] for row in rows) == sorted(i.slug for i in changed)
    assert len(queries) == 3 and max(queries) == min(queries)
    assert all(row["key_state"] in ("ok", "expiring") for row in rows)


def test_the_lists_lean_summary_says_what_the_full_key_status_says_for_every_state(
    make_institution, make_credential, today
):
    active = make_institution()
    make_credential(active)
    expiring = make_institution()
    make_credential(expiring, days=5)
    expired = make_institution()
    make_credential(expired, days=-3)
    pending = make_institution()
    make_credential(pending)
    make_credential(pending, status=CD2Credential.Status.PENDING_VERIFICATION)
    invalid = make_institution()
    credential_set_status(credential=make_credential(invalid), status=CD2Credential.Status.INVALID, reason="refused")
    make_institution()  # no key at all

    fields = ("pk", "active_key_id", "active_hint", "active_expires_on", "active_region", "active_last_verified_at")
    fields += ("key_state",)
    full = list(institutions_with_key_status(today=today).order_by("pk").values_list(*fields))
    lean = list(institutions_with_key_summary(today=today).order_by("pk").values_list(*fields))
    assert lean == full
    assert len({row[-1] for row in lean}) >= 5  # the states above are really different
