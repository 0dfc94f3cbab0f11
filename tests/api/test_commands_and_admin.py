from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command

from api.models import ApiToken, ServiceAccount
from api.services import api_token_authenticate


def test_create_api_token_prints_the_token_once_and_stores_only_its_hash(institution):
    out, err = io.StringIO(), io.StringIO()
    call_command(
        "create_api_token",
        "airflow-prod",
        "--scope",
        "keys:read",
        "--institution",
        institution.slug,
        "--expires-in-days",
        "30",
        stdout=out,
        stderr=err,
    )
    plaintext = out.getvalue().strip()
    token = api_token_authenticate(plaintext=plaintext, ip_address=None)
    assert token is not None and token.scopes == ["keys:read"]
    assert list(token.account.institutions.all()) == [institution]
    assert (token.expires_at - token.created_at).days == 30
    assert plaintext not in err.getvalue() and token.prefix in err.getvalue()
    assert not ApiToken.objects.filter(token_hash=plaintext).exists()


def test_create_api_token_needs_institutions_or_all(db):
    with pytest.raises(CommandError, match="--all-institutions"):
        call_command("create_api_token", "nightly", "--scope", "keys:list", stdout=io.StringIO())
    assert not ServiceAccount.objects.exists()


def test_the_api_admin_is_for_superusers_only(make_staff, verified_login, client):
    verified_login(client, make_staff("Data engineer"))
    assert client.get("/admin/api/apitoken/").status_code == 403
    assert client.get("/admin/api/serviceaccount/").status_code == 403


def test_a_superuser_creates_a_token_in_the_admin_and_sees_it_once(admin_client, institution):
    account = ServiceAccount.objects.create(name="dagster", all_institutions=True)
    response = admin_client.post(
        "/admin/api/apitoken/add/",
        {"account": account.pk, "scopes": ["keys:list", "syncs:write"], "expires_in_days": 14},
    )
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]
    token = ApiToken.objects.get()
    page = response.content.decode()
    plaintext = page.split('<code id="api-token">')[1].split("</code>")[0]
    assert api_token_authenticate(plaintext=plaintext, ip_address=None) == token
    assert sorted(token.scopes) == ["keys:list", "syncs:write"]
    assert plaintext not in admin_client.get(f"/admin/api/apitoken/{token.pk}/change/").content.decode()
    assert plaintext not in admin_client.get("/admin/api/serviceaccount/").content.decode()


def test_revoking_in_the_admin_ends_the_token_at_once(admin_client, make_token):
    plaintext, token = make_token()
    admin_client.post("/admin/api/apitoken/", {"action": "revoke_tokens", "_selected_action": [token.pk]})
    assert api_token_authenticate(plaintext=plaintext, ip_address=None) is None


def test_the_schema_documents_the_endpoints_and_bearer_auth(client):
    response = client.get("/api/v1/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    schema = response.json()
    assert {"/api/v1/keys/", "/api/v1/institutions/{slug}/key", "/api/v1/institutions/{slug}/syncs"} <= set(
        schema["paths"]
    )
    assert schema["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
