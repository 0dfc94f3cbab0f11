from __future__ import annotations

import pytest

from api.models import Scope, ServiceAccount
from api.services import api_token_issue


@pytest.fixture(autouse=True)
def _api_cache(isolated_cache):
    """Rate-limit counters and the sync-check debounce start empty in every test."""
    return isolated_cache


@pytest.fixture
def make_token(db):
    """make_token(scopes, institutions=[...] or all_institutions=True) -> (plaintext, ApiToken)."""

    def make(scopes=(Scope.KEYS_READ,), *, institutions=(), all_institutions=False, **account_fields):
        account = ServiceAccount.objects.create(
            name=account_fields.pop("name", f"pipeline-{ServiceAccount.objects.count() + 1}"),
            all_institutions=all_institutions,
            **account_fields,
        )
        account.institutions.set(institutions)
        issued = api_token_issue(account=account, scopes=list(scopes))
        return issued.plaintext, issued.token

    return make


@pytest.fixture
def api(client):
    """api(token).get(url) / .post(url, json): the test client with the token as a bearer."""

    class Api:
        def __init__(self, token: str | None) -> None:
            self.headers = {"Authorization": f"Bearer {token}"} if token else {}

        def get(self, url, **params):
            return client.get(url, params, headers=self.headers)

        def post(self, url, body):
            return client.post(url, body, content_type="application/json", headers=self.headers)

    return Api
