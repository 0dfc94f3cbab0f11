from __future__ import annotations

import datetime as dt

import pytest
from cryptography.fernet import Fernet
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import override_settings

from credentials.fields import DecryptionError, encrypt_str
from credentials.models import AuditEvent, CD2Credential
from credentials.services.rotation import encryption_keys_rotate

pytestmark = pytest.mark.django_db(transaction=True)

ROWS = 1000


def stored_tokens() -> dict[int, tuple[str, str]]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT id, client_id, secret FROM credentials_cd2credential")
        return {pk: (cid, sec) for pk, cid, sec in cursor.fetchall()}


def bulk_insert(institution, keys: list[str], count: int) -> dict[int, str]:
    """Write `count` keys, spread over `keys`, straight as ciphertext (fast)."""
    rows = []
    for n in range(count):
        with override_settings(FERNET_KEYS=[keys[n % len(keys)]]):
            rows.append(
                CD2Credential(
                    institution=institution,
                    client_id=encrypt_str(f"us-east-1#id-{n}"),
                    secret=encrypt_str(f"secret-{n}"),
                    region="us-east-1",
                    hint=f"us-east-1 …{n:04d}",
                    expires_on=dt.date(2027, 1, 1),
                    status=CD2Credential.Status.SUPERSEDED,
                    source=CD2Credential.Source.IMPORT,
                )
            )
    # bulk_create would encrypt again: write the tokens with raw SQL.
    with connection.cursor() as cursor:
        for row in rows:
            cursor.execute(
                "INSERT INTO credentials_cd2credential (institution_id, client_id, secret, region, hint, key_name,"
                " key_type, expires_on, status, source, submitted_at, submitted_by, submitted_by_email,"
                " last_verification, verification_attempts, status_changed_at, status_reason)"
                " VALUES (%s, %s, %s, %s, %s, '', 'institutional', %s, %s, %s, %s, '', '', '', 0, %s, '')",
                [
                    institution.pk,
                    row.client_id,
                    row.secret,
                    row.region,
                    row.hint,
                    row.expires_on,
                    row.status,
                    row.source,
                    row.submitted_at,
                    row.status_changed_at,
                ],
            )
    return {n: f"secret-{n}" for n in range(count)}


def test_rotation_round_trip_with_three_keys_and_a_thousand_rows(institution, capsys):
    k1, k2, k3 = (Fernet.generate_key().decode() for _ in range(3))
    bulk_insert(institution, [k1, k2, k3], ROWS)
    newest = Fernet.generate_key().decode()

    with override_settings(FERNET_KEYS=[newest, k1, k2, k3]):
        call_command("rotate_encryption_keys", "--batch-size", "128")
        assert "2000" not in capsys.readouterr().out  # counts rows, not values
        after_first = stored_tokens()
        call_command("rotate_encryption_keys")
        out = capsys.readouterr().out
        assert f"0 rows re-encrypted under the newest key, {ROWS} already were" in out
        # Re-running changed nothing at all, byte for byte.
        assert stored_tokens() == after_first

    # The old keys can go: every row still reads under the newest alone.
    with override_settings(FERNET_KEYS=[newest]):
        secrets = {c.hint: c.secret for c in CD2Credential.objects.all()}
        client_ids = {c.client_id for c in CD2Credential.objects.all()}
    assert len(secrets) == ROWS
    assert all(secrets[f"us-east-1 …{n:04d}"] == f"secret-{n}" for n in range(ROWS))
    assert client_ids == {f"us-east-1#id-{n}" for n in range(ROWS)}
    first, second = AuditEvent.objects.filter(kind=AuditEvent.Kind.KEY_ROTATION).order_by("pk")
    assert (first.actor_label, first.detail["outcome"], first.detail["rotated"], first.detail["unchanged"]) == (
        "manage.py rotate_encryption_keys",
        "complete",
        ROWS,
        0,
    )
    assert (second.detail["outcome"], second.detail["rotated"], second.detail["unchanged"]) == ("complete", 0, ROWS)


def test_rotation_interrupted_after_a_batch_finishes_on_a_second_run(institution):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    bulk_insert(institution, [old], 50)

    class Crash(Exception):
        pass

    def crash_after_first_batch(table, report):
        raise Crash

    with override_settings(FERNET_KEYS=[new, old]):
        with pytest.raises(Crash):
            encryption_keys_rotate(batch_size=20, progress=crash_after_first_batch)
        report = encryption_keys_rotate(batch_size=20)
    # The first batch was committed before the crash; the second run did the rest.
    assert (report.rotated, report.unchanged) == (30, 20)
    crashed, finished = AuditEvent.objects.filter(kind=AuditEvent.Kind.KEY_ROTATION).order_by("pk")
    assert crashed.detail == {
        "outcome": "partial",
        "rotated": 20,
        "unchanged": 0,
        "tables": {"credentials_cd2credential": 20},
        "error": "Crash",
    }
    assert (finished.detail["outcome"], finished.detail["rotated"]) == ("complete", 30)
    with override_settings(FERNET_KEYS=[new]):
        assert sorted(c.secret for c in CD2Credential.objects.all()) == sorted(f"secret-{n}" for n in range(50))


def test_rotation_stops_without_writing_when_a_value_has_no_key(institution):
    known, unknown, new = (Fernet.generate_key().decode() for _ in range(3))
    bulk_insert(institution, [known, unknown], 10)
    before = stored_tokens()
    with override_settings(FERNET_KEYS=[new, known]):
        with pytest.raises(DecryptionError):
            encryption_keys_rotate(batch_size=100)
        with pytest.raises(CommandError, match="FERNET_KEYS"):
            call_command("rotate_encryption_keys")
    assert stored_tokens() == before
    events = AuditEvent.objects.filter(kind=AuditEvent.Kind.KEY_ROTATION).order_by("pk")
    assert [(e.actor_label, e.detail["outcome"], e.detail["rotated"]) for e in events] == [
        ("encryption_keys_rotate", "failed", 0),
        ("manage.py rotate_encryption_keys", "failed", 0),
    ]
    assert all("Cannot rotate credentials_cd2credential." in e.detail["error"] for e in events)
    assert not any("secret-" in str(e.detail) for e in events)
