"""Issuing and revoking an API token are audit events (token_issued, token_revoked), by every door.

Each names the account, the actor and the token's prefix, never the token.
"""

from __future__ import annotations

import json
import re

from django.core.management import call_command

from api.models import ApiToken, ServiceAccount
from api.services import api_token_issue, api_token_revoke
from credentials.models import AuditEvent


def test_the_command_audits_the_token_it_issues_without_the_token(institution, capsys):
    call_command("create_api_token", "airflow", "--scope", "keys:read", "--institution", "northfield")
    plaintext = capsys.readouterr().out.strip()
    token = ApiToken.objects.get()
    event = AuditEvent.objects.get(kind=AuditEvent.Kind.TOKEN_ISSUED)
    assert event.actor_label == "manage.py create_api_token"
    assert event.detail["account"] == "airflow" and event.detail["token"] == token.prefix
    assert plaintext not in json.dumps(event.detail) + event.reason + str(event)


def test_the_admin_audits_issue_and_revoke_naming_the_actor(admin_client, admin_user, db):
    account = ServiceAccount.objects.create(name="airflow", all_institutions=True)
    response = admin_client.post(
        "/admin/api/apitoken/add/", {"account": account.pk, "scopes": ["keys:list"], "expires_in_days": 30}
    )
    plaintext = re.search(r'id="api-token">([^<]+)<', response.content.decode()).group(1)
    token = ApiToken.objects.get()
    admin_client.post("/admin/api/apitoken/", {"action": "revoke_tokens", "_selected_action": [token.pk]})
    admin_client.post("/admin/api/apitoken/", {"action": "revoke_tokens", "_selected_action": [token.pk]})

    events = list(AuditEvent.objects.filter(kind__startswith="token_").order_by("pk"))
    assert [e.kind for e in events] == ["token_issued", "token_revoked"]  # a second revoke is not an event
    for event in events:
        assert event.actor == admin_user and event.ip_address == "127.0.0.1"
        assert event.detail["account"] == "airflow" and event.detail["token"] == token.prefix
        assert plaintext not in json.dumps(event.detail)


def test_the_services_audit_issue_and_revoke(db):
    account = ServiceAccount.objects.create(name="airflow", all_institutions=True)
    issued = api_token_issue(account=account, scopes=["keys:read"], actor_label="script")
    assert api_token_revoke(token=issued.token, actor_label="script") is True
    assert api_token_revoke(token=issued.token, actor_label="script") is False
    assert list(AuditEvent.objects.order_by("pk").values_list("kind", flat=True)) == ["token_issued", "token_revoked"]
