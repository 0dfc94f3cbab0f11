"""Re-encrypt every stored encrypted value under the newest FERNET_KEYS key.

Works on the ciphertext directly (MultiFernet.rotate): plaintext exists only
inside cryptography for the instant of re-encryption, and no model code runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from cryptography.fernet import InvalidToken
from django.db import DatabaseError, connection, transaction

from credentials.checks import encrypted_columns
from credentials.fields import DecryptionError, get_multifernet, primary_fernet
from credentials.models import AuditEvent
from credentials.services.audit import audit_record

logger = logging.getLogger(__name__)

BATCH_SIZE = 500
# Keyset pagination starts below every possible (big)integer primary key.
LOWEST_PK = -(2**63)


@dataclass
class RotationReport:
    """Rows whose batch was committed: a failed run's report says how far it got."""

    rotated: int = 0
    unchanged: int = 0
    tables: dict[str, int] = field(default_factory=dict)


def _is_under_primary(token: bytes) -> bool:
    try:
        primary_fernet().decrypt(token)
    except InvalidToken:
        return False
    return True


def encryption_keys_rotate(
    *, batch_size: int = BATCH_SIZE, progress=None, actor_label: str = "encryption_keys_rotate"
) -> RotationReport:
    """Rotate in batches of `batch_size` rows, one transaction per batch; every run is audited.

    Safe to re-run after a crash: a value already under the newest key is left
    alone, so a second run reports everything unchanged. A value that no
    configured key decrypts stops the run with DecryptionError before its
    batch is written. The audit event (also for a failed or interrupted run)
    holds the outcome and the counts of committed rows, per table.
    """
    report = RotationReport()
    outcome, error = "failed", ""
    try:
        _rotate(report, batch_size=batch_size, progress=progress)
        outcome = "complete"
        return report
    except DecryptionError as exc:
        error = str(exc)  # names a table, column and row id; never a value
        raise
    except BaseException as exc:
        error = type(exc).__name__
        raise
    finally:
        if outcome != "complete" and report.rotated:
            outcome = "partial"
        try:
            audit_record(
                kind=AuditEvent.Kind.KEY_ROTATION,
                actor_label=actor_label,
                detail={
                    "outcome": outcome,
                    "rotated": report.rotated,
                    "unchanged": report.unchanged,
                    "tables": report.tables,
                    "error": error,
                },
            )
        except DatabaseError:
            # The database that stopped the run cannot take its record either;
            # the run's own error is the one to see, so it is not masked.
            if outcome == "complete":
                raise
            logger.exception("Could not audit the failed encryption-key rotation")


def _rotate(report: RotationReport, *, batch_size: int, progress) -> None:
    multi = get_multifernet()
    quote = connection.ops.quote_name
    for model, enc_fields in _models_with_encrypted_fields():
        table = quote(model._meta.db_table)
        pk = quote(model._meta.pk.column)
        columns = [quote(f.column) for f in enc_fields]
        select_sql = (
            f"SELECT {pk}, {', '.join(columns)} FROM {table} WHERE {pk} > %s ORDER BY {pk} LIMIT %s"  # noqa: S608  # nosec B608
            + (" FOR UPDATE" if connection.features.has_select_for_update else "")
        )
        update_one_sql = f"UPDATE {table} SET {', '.join(f'{c} = %s' for c in columns)} WHERE {pk} = %s"  # noqa: S608  # nosec B608
        last_pk = LOWEST_PK
        report.tables[model._meta.db_table] = 0
        while True:
            batch_rotated = batch_unchanged = 0
            with transaction.atomic():
                with connection.cursor() as cursor:
                    cursor.execute(select_sql, [last_pk, batch_size])
                    rows = cursor.fetchall()
                    if not rows:
                        break
                    updates = []
                    for pk_value, *tokens in rows:
                        new_tokens, changed = [], False
                        for column, token in zip(columns, tokens, strict=True):
                            if token is None or _is_under_primary(token.encode()):
                                new_tokens.append(token)
                                continue
                            try:
                                new_tokens.append(multi.rotate(token.encode()).decode("ascii"))
                            except InvalidToken:
                                raise DecryptionError(
                                    f"Cannot rotate {model._meta.db_table}.{column} of row {pk_value}: no configured "
                                    f"key decrypts it. Nothing in this batch was written; add the missing key to "
                                    f"FERNET_KEYS and run the command again."
                                ) from None
                            changed = True
                        if changed:
                            updates.append([*new_tokens, pk_value])
                            batch_rotated += 1
                        else:
                            batch_unchanged += 1
                    if updates:
                        _write_batch(
                            cursor, table=table, pk=pk, columns=columns, rows=updates, update_one_sql=update_one_sql
                        )
                    last_pk = rows[-1][0]
            # Counted once the batch is committed.
            report.rotated += batch_rotated
            report.unchanged += batch_unchanged
            report.tables[model._meta.db_table] += batch_rotated
            if progress:
                progress(model._meta.db_table, report)


def _write_batch(cursor, *, table: str, pk: str, columns: list[str], rows: list[list], update_one_sql: str) -> None:
    """Write a batch of re-encrypted rows ([*tokens, pk] each).

    PostgreSQL gets one UPDATE ... FROM (VALUES ...) for the whole batch: a
    statement per row cost a third of the command's time at 100,000 keys
    (bench/RESULTS.md). Other databases take one statement per row.
    """
    if connection.vendor != "postgresql":
        cursor.executemany(update_one_sql, rows)
        return
    names = [f"c{i}" for i in range(len(columns))]
    row_sql = "(" + ", ".join(["%s"] * len(columns)) + ", %s::bigint)"
    assignments = ", ".join(f"{column} = v.{name}" for column, name in zip(columns, names, strict=True))
    sql = (
        f"UPDATE {table} AS t SET {assignments} "  # noqa: S608  # nosec B608 (quoted identifiers of our own models)
        f"FROM (VALUES {', '.join([row_sql] * len(rows))}) AS v({', '.join(names)}, pk) WHERE t.{pk} = v.pk"
    )
    cursor.execute(sql, [value for row in rows for value in row])


def _models_with_encrypted_fields():
    grouped: dict = {}
    for model, enc_field in encrypted_columns():
        grouped.setdefault(model, []).append(enc_field)
    return grouped.items()
