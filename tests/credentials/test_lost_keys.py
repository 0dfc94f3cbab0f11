"""mark_keys_lost (services/lost_keys.py): what no FERNET_KEYS key reads is wiped and marked lost, nothing else.

The drill with real processes on PostgreSQL is tests/ops/test_lost_keys_drill.py.
"""

from __future__ import annotations

import io

import pytest
from cryptography.fernet import Fernet
from django.core.management import CommandError, call_command
from django.test import override_settings

from api.models import ServiceAccount
from api.webhooks import webhook_secret_rotate
from credentials.checks import check_fernet_keys, check_stored_values_decrypt
from credentials.models import AuditEvent, CD2Credential, Notice
from credentials.services import outbox
from credentials.services.lost_keys import LostKeysRefused, encryption_keys_lost_mark, unreadable_values
from credentials.signals import KEY_EXPIRING, key_event_send
from institutions.models import KeyState

pytestmark = pytest.mark.django_db

LOST, NEW = Fernet.generate_key().decode(), Fernet.generate_key().decode()


def start_up_problems() -> list:
    """What edpotential.startup refuses to start on (it also closes the connections: not in a test's transaction)."""
    return check_fernet_keys() + check_stored_values_decrypt()


@pytest.fixture
def written_under_a_lost_key(institution, make_institution, make_credential, settings):
    """Northfield: an active key and its superseded predecessor; Lakeside: a pending key; all under LOST."""
    settings.WEBHOOK_ALLOW_LOOPBACK = True
    with override_settings(FERNET_KEYS=[LOST]):
        old = make_credential(institution)
        active = make_credential(institution)
        lakeside = make_institution(name="Lakeside")
        pending = make_credential(lakeside, status=CD2Credential.Status.PENDING_VERIFICATION)
        account = ServiceAccount.objects.create(name="airflow", webhook_url="http://127.0.0.1:9/hooks")
        account.institutions.set([institution])
        webhook_secret_rotate(account=account, actor_label="test")
    with override_settings(FERNET_KEYS=[NEW, LOST]):
        harbour = make_institution(name="Harbour")
        readable = make_credential(harbour, secret="still-readable-Secret-1")
    return {"old": old, "active": active, "pending": pending, "readable": readable, "account": account}


def test_the_survey_counts_what_no_key_reads_and_changes_nothing(written_under_a_lost_key, settings):
    settings.FERNET_KEYS = [NEW]
    out = io.StringIO()
    call_command("mark_keys_lost", "--reason", "INC-7 key lost", stdout=out)
    assert "credentials.CD2Credential: 3 of 4 row(s) cannot be read" in out.getvalue()
    assert "api.ServiceAccount: 1 of 1 row(s) cannot be read" in out.getvalue()
    assert "--confirm 4" in out.getvalue()
    assert not AuditEvent.objects.filter(kind=AuditEvent.Kind.KEYS_LOST).exists()


def test_a_confirmation_of_another_count_changes_nothing(written_under_a_lost_key, settings):
    settings.FERNET_KEYS = [NEW]
    with pytest.raises(CommandError, match=r"you confirmed 3\. Nothing was changed"):
        call_command("mark_keys_lost", "--reason", "INC-7 key lost", "--confirm", "3", stdout=io.StringIO())
    assert unreadable_values().total == 4


def test_marking_lost_lets_the_processes_start_and_keeps_everything_readable(written_under_a_lost_key, settings):
    keys = written_under_a_lost_key
    settings.FERNET_KEYS = [NEW]
    # The Client IDs, the Secrets and the webhook secret: each column does not decrypt.
    assert [problem.id for problem in start_up_problems()] == ["credentials.W001"] * 3

    out = io.StringIO()
    call_command("mark_keys_lost", "--reason", "INC-7 key lost", "--confirm", "4", stdout=out)

    assert start_up_problems() == []  # web, worker and beat start
    assert unreadable_values().total == 0
    status = dict(CD2Credential.objects.values_list("pk", "status"))
    assert status == {
        keys["old"].pk: CD2Credential.Status.SUPERSEDED,  # history keeps its status
        keys["active"].pk: CD2Credential.Status.LOST,
        keys["pending"].pk: CD2Credential.Status.LOST,
        keys["readable"].pk: CD2Credential.Status.ACTIVE,
    }
    wiped = CD2Credential.objects.filter(client_id__isnull=True, secret__isnull=True, client_id_index__isnull=True)
    assert set(wiped.values_list("pk", flat=True)) == {keys["old"].pk, keys["active"].pk, keys["pending"].pk}
    assert CD2Credential.objects.get(pk=keys["readable"].pk).secret == "still-readable-Secret-1"
    conditions = {k.institution.slug: k.institution.key_condition for k in CD2Credential.objects.order_by("pk")}
    assert list(conditions.values()) == [KeyState.LOST, KeyState.LOST, KeyState.OK]
    lost = AuditEvent.objects.filter(kind=AuditEvent.Kind.KEYS_LOST)
    assert lost.count() == 4 and set(lost.values_list("reason", flat=True)) == {"INC-7 key lost"}
    assert "Marked 3 key(s) lost" in out.getvalue() and "2 institution(s) now have no key" in out.getvalue()
    assert "Forgot 1 webhook signing secret(s)" in out.getvalue()


def test_a_webhook_whose_secret_was_lost_waits_for_the_new_secret(written_under_a_lost_key, settings):
    keys = written_under_a_lost_key
    key_event_send(event_type=KEY_EXPIRING, credential=keys["active"], occurred_at=keys["active"].submitted_at)
    (notice,) = Notice.objects.filter(kind=Notice.Kind.WEBHOOK)
    settings.FERNET_KEYS = [NEW]
    encryption_keys_lost_mark(reason="INC-7 key lost", actor_label="test", confirmed=4)

    outbox.outbox_deliver_due()

    notice.refresh_from_db()
    assert notice.state == Notice.State.PENDING and "signing secret was lost" in notice.last_error
    account = ServiceAccount.objects.get()
    assert account.webhook_secret_set_at is None and account.webhook_secret == ""  # reads: an empty secret


def test_nothing_unreadable_is_nothing_to_do(institution, make_credential):
    make_credential(institution)
    out = io.StringIO()
    call_command("mark_keys_lost", "--reason", "INC-7 key lost", stdout=out)
    assert "Every stored value reads with FERNET_KEYS" in out.getvalue()
    with pytest.raises(LostKeysRefused):
        encryption_keys_lost_mark(reason="INC-7 key lost", actor_label="test", confirmed=1)


def test_send_links_to_all_refuses_while_keys_cannot_be_read(written_under_a_lost_key, settings):
    settings.FERNET_KEYS = [NEW]
    with pytest.raises(CommandError, match="mark_keys_lost"):
        call_command("send_links_to_all", "--reason", "encryption key lost", stdout=io.StringIO())
    encryption_keys_lost_mark(reason="INC-7 key lost", actor_label="test", confirmed=4)
    out = io.StringIO()
    call_command("send_links_to_all", "--reason", "encryption key lost", stdout=out)
    assert "Queued a submission link for 3 institution(s)" in out.getvalue()
