"""FERNET_KEYS lost for good: find what no configured key reads, and mark it lost so the registry runs again.

Without the key that wrote them, stored values cannot be read by anyone, and
web, worker and beat refuse to start while sampled values do not decrypt
(edpotential/startup.py). The runbook's procedure (docs/RUNBOOK.md, "When
FERNET_KEYS is lost") is `manage.py mark_keys_lost`, which calls
`encryption_keys_lost_mark` here: every unreadable value is wiped by the
handler of its model (each app registers its own in AppConfig.ready, as
senders are registered), audited with the operator's reason, and the
start-up check then passes (it reads only the values that are left). Then
`send_links_to_all` asks every served institution for a new key.

- a CD2 key (credentials.services.keys.credentials_mark_lost): Client ID,
  Secret and blind index wiped; a key in use becomes "lost: ask for a new
  key", history keeps its status;
- a webhook signing secret (api.webhooks.webhook_secrets_forget): the
  account has no secret until a superuser rotates it; its webhooks wait.

Nothing readable is touched, so a partly lost key list (an old key dropped
too early) loses only what it must; the operator confirms the count first.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.fernet import InvalidToken
from django.db import connection, transaction
from django.utils import timezone

from credentials.checks import check_fernet_keys, encrypted_columns
from credentials.fields import get_multifernet
from credentials.models import AuditEvent
from credentials.services.audit import audit_record
from credentials.services.keys import credentials_mark_lost

# Rows per scan query and per transaction when wiping.
BATCH_SIZE = 500
# Keyset pagination starts below every possible (big)integer primary key.
LOWEST_PK = -(2**63)

# What wipes a model's unreadable rows: forget(ids=, reason=, actor_label=, now=) -> ids of
# institutions left without a key (or None).
Forget = Callable[..., object]


def _forget_keys(*, ids: list[int], reason: str, actor_label: str, now: dt.datetime) -> list[int]:
    return credentials_mark_lost(credential_ids=ids, reason=reason, actor_label=actor_label, now=now)


# The CD2 keys are this app's own; other apps register theirs (api: webhook signing secrets).
_HANDLERS: dict[str, Forget] = {"credentials.CD2Credential": _forget_keys}


class LostKeysRefused(Exception):
    """The command must not go on; the message says why and what to do."""


def lost_values_handler_register(model_label: str, forget: Forget) -> None:
    """Register how `model_label` ("app.Model") forgets rows whose encrypted values no key reads."""
    _HANDLERS[model_label] = forget


@dataclass
class Unreadable:
    """Per model ("app.Model"): rows holding a value no configured key decrypts, and rows with any value."""

    rows: dict[str, list[int]] = field(default_factory=dict)
    scanned: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(len(ids) for ids in self.rows.values())


def _models_with_encrypted_columns() -> dict:
    grouped: dict = {}
    for model, enc_field in encrypted_columns():
        grouped.setdefault(model, []).append(enc_field.column)
    return grouped


def unreadable_values(*, batch_size: int = BATCH_SIZE) -> Unreadable:
    """Read every stored encrypted value (ciphertext only, never through the models) and list what does not decrypt."""
    fernet = get_multifernet()
    found = Unreadable()
    quote = connection.ops.quote_name
    for model, columns in _models_with_encrypted_columns().items():
        label = model._meta.label
        table, pk = quote(model._meta.db_table), quote(model._meta.pk.column)
        quoted = [quote(column) for column in columns]
        any_value = " OR ".join(f"{column} IS NOT NULL" for column in quoted)
        # Quoted identifiers of our own models, never input.
        sql = f"SELECT {pk}, {', '.join(quoted)} FROM {table} WHERE {pk} > %s AND ({any_value}) ORDER BY {pk} LIMIT %s"  # noqa: S608  # nosec B608
        ids: list[int] = []
        scanned, last = 0, LOWEST_PK
        while True:
            with connection.cursor() as cursor:
                cursor.execute(sql, [last, batch_size])
                rows = cursor.fetchall()
            if not rows:
                break
            for row_pk, *tokens in rows:
                scanned += 1
                if any(token is not None and not _decrypts(fernet, token) for token in tokens):
                    ids.append(row_pk)
            last = rows[-1][0]
        found.scanned[label] = scanned
        if ids:
            found.rows[label] = ids
    return found


def _decrypts(fernet, token: str) -> bool:
    try:
        fernet.decrypt(token.encode("ascii"))
    except (InvalidToken, UnicodeError):
        return False
    return True


@dataclass(frozen=True)
class LostReport:
    unreadable: Unreadable
    institutions: list[int]  # whose key in use was lost: each needs a new key


def encryption_keys_lost_mark(
    *, reason: str, actor_label: str, confirmed: int, now: dt.datetime | None = None
) -> LostReport:
    """Wipe every value no configured FERNET_KEYS key reads, once the operator confirmed how many rows that is.

    `confirmed` must equal the number of rows found now (what a dry run
    showed): a different number means the keys or the data changed since,
    and nothing is done. Each model's rows go to its registered handler in
    transactions of BATCH_SIZE; one summary audit event (keys_lost) holds
    the counts and the reason, each wiped key has its own. Safe to re-run
    after a crash: wiped values are not found again.
    """
    if check_fernet_keys():
        raise LostKeysRefused(
            "FERNET_KEYS is not a valid key list, so nothing can be told apart: fix it first "
            "(python manage.py generate_encryption_key makes a new key)."
        )
    now = now or timezone.now()
    found = unreadable_values()
    if found.total != confirmed:
        raise LostKeysRefused(
            f"{found.total} stored row(s) cannot be read with FERNET_KEYS now, but you confirmed {confirmed}. "
            f"Nothing was changed. Run without --confirm to see what is unreadable, then confirm that number."
        )
    missing = sorted(label for label in found.rows if label not in _HANDLERS)
    if missing:
        raise LostKeysRefused(
            f"No handler knows how to forget unreadable rows of {', '.join(missing)}: nothing changed."
        )
    institutions: set[int] = set()
    for label, ids in found.rows.items():
        for start in range(0, len(ids), BATCH_SIZE):
            with transaction.atomic():
                result = _HANDLERS[label](
                    ids=ids[start : start + BATCH_SIZE], reason=reason, actor_label=actor_label, now=now
                )
            institutions.update(result or ())
    audit_record(
        kind=AuditEvent.Kind.KEYS_LOST,
        actor_label=actor_label,
        reason=reason,
        detail={
            "summary": True,
            "unreadable": {label: len(ids) for label, ids in found.rows.items()},
            "scanned": found.scanned,
            "institutions_without_a_key": len(institutions),
        },
    )
    return LostReport(unreadable=found, institutions=sorted(institutions))
