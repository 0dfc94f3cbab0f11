"""Generate N institutions with contacts and keys, fast (PostgreSQL COPY).

Shape of the data (seeded, so every run builds the same rows):
- 95% of institutions served (active or onboarding), 5% paused or offboarded;
  twenty staff users own them in turn (5% have no account owner).
- One contact each, who receives reminders (so the Contact table has as many
  rows as the institution list: the admin floor lists it).
- Keys: 95% have an active key expiring on a day spread evenly over the next
  two years (730 days); 1.5% only a key pending its check, 1.5% only an
  invalid one, 2% none. One in ten active keys has an older superseded key.
- Steady state of the reminder schedule: every step an active key has already
  passed is logged as sent, as if the daily run had been going for years. So
  the keys due today are those exactly 60, 30, 14, 7, 3, 1 or 0 days from
  expiry: 7 of 730 days, about 1%.

Encrypting is not what is measured, so a pool of distinct key pairs is
encrypted once and the ciphertexts are reused row after row; the fake CD2
gateway knows every pair in the pool, so every stored key checks OK.
"""

from __future__ import annotations

import datetime as dt
import random
import secrets
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection
from django.utils import timezone

from credentials.fields import encrypt_str
from credentials.services.keys import key_summaries_fix
from credentials.validators import client_id_hint, client_id_region

SEED = 7
SPREAD_DAYS = 730
KEY_POOL = 1000
STAFF_USERS = 20
REGIONS = ("us-east-1", "us-east-1", "us-east-1", "ca-central-1", "eu-west-1", "ap-southeast-2")
TIMEZONES = ("America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles", "Europe/London", "UTC")
BENCH_ADMIN = "bench-admin"


@dataclass
class Generated:
    institutions: int = 0
    contacts: int = 0
    credentials: int = 0
    active_keys: int = 0
    reminder_logs: int = 0
    expected_due: int = 0
    seconds: float = 0.0
    key_pool: dict[str, str] = field(default_factory=dict)  # client_id -> secret, for the fake gateway


def key_pool(size: int) -> list[tuple[str, str]]:
    """Distinct (client_id, secret) pairs in the shape CD2 issues them."""
    rng = random.Random(SEED)
    pairs = []
    for n in range(size):
        region = REGIONS[n % len(REGIONS)]
        client_id = f"{region}#{uuid.UUID(int=rng.getrandbits(128))}"
        pairs.append((client_id, secrets.token_urlsafe(32)))
    return pairs


def fresh_keys(count: int) -> list[tuple[str, str]]:
    """`count` distinct (client_id, secret) pairs on file nowhere (random, unlike key_pool's seeded ones)."""
    return [(f"{REGIONS[n % len(REGIONS)]}#{uuid.uuid4()}", secrets.token_urlsafe(32)) for n in range(count)]


def copy_rows(table: str, columns: Sequence[str], rows: Iterable[Sequence]) -> int:
    """COPY rows into table through the psycopg connection under Django's."""
    connection.ensure_connection()
    count = 0
    quote = connection.ops.quote_name
    sql = f"COPY {quote(table)} ({', '.join(quote(c) for c in columns)}) FROM STDIN"
    with connection.connection.cursor() as cursor, cursor.copy(sql) as copy:
        for row in rows:
            copy.write_row(row)
            count += 1
    return count


def reset_sequences(tables: Iterable[str]) -> None:
    with connection.cursor() as cursor:
        for table in tables:
            # Table names are our own models', never input.
            quoted = connection.ops.quote_name(table)
            sql = f"SELECT setval(pg_get_serial_sequence(%s, 'id'), GREATEST((SELECT MAX(id) FROM {quoted}), 1))"  # noqa: S608
            cursor.execute(sql, [table])


def _staff_users():
    user_model = get_user_model()
    owners = [
        user_model.objects.create_user(
            username=f"owner{n:02d}", email=f"owner{n:02d}@edpotential.example", is_staff=True
        )
        for n in range(STAFF_USERS)
    ]
    admin = user_model.objects.create_superuser(BENCH_ADMIN, "bench-admin@edpotential.example", None)
    return owners, admin


def generate(*, institutions: int, today: dt.date, now: dt.datetime | None = None) -> Generated:
    """Fill the (empty, migrated) database; returns counts and the expected number of due reminders."""
    started = time.perf_counter()
    now = now or timezone.now()
    rng = random.Random(SEED)
    out = Generated()
    owners, _ = _staff_users()
    pool = key_pool(min(KEY_POOL, max(institutions, 1)))
    out.key_pool = dict(pool)
    encrypted = [
        (encrypt_str(cid), encrypt_str(secret), client_id_region(cid), client_id_hint(cid)) for cid, secret in pool
    ]
    before = sorted({int(d) for d in settings.REMINDER_DAYS_BEFORE if int(d) >= 0}, reverse=True)
    served = {"active", "onboarding"}

    inst_rows, contact_rows, key_rows, log_rows, notice_rows = [], [], [], [], []
    key_id = 0
    for n in range(1, institutions + 1):
        roll = rng.random()
        status = "paused" if roll < 0.02 else "offboarded" if roll < 0.05 else "onboarding" if roll < 0.10 else "active"
        owner = owners[n % len(owners)].pk if rng.random() >= 0.05 else None
        created = now - dt.timedelta(days=400 + n % 300)
        inst_rows.append(
            (
                n,
                f"Institution {n:06d}",
                f"inst-{n:06d}",
                f"inst{n:06d}.instructure.com",
                status,
                TIMEZONES[n % len(TIMEZONES)],
                owner,
                "",
                created,
                created,
            )
        )
        email = f"it{n:06d}@inst{n:06d}.example.edu"
        contact_rows.append((n, n, f"Contact {n:06d}", email, "canvas_admin", True, created))

        roll = rng.random()
        if roll < 0.02:
            continue  # no key at all
        cipher_id, cipher_secret, region, hint = encrypted[n % len(encrypted)]
        kind = "pending_verification" if roll < 0.035 else "invalid" if roll < 0.05 else "active"
        submitted = now - dt.timedelta(days=rng.randrange(1, 300))
        if kind == "active" and rng.random() < 0.10:
            key_id += 1
            old_submitted = submitted - dt.timedelta(days=365)
            key_rows.append(
                (
                    key_id,
                    n,
                    cipher_id,
                    cipher_secret,
                    region,
                    hint,
                    "EdPotential",
                    "institutional",
                    today - dt.timedelta(days=rng.randrange(1, 200)),
                    "superseded",
                    "link",
                    old_submitted,
                    "Ada Admin",
                    f"it{n:06d}@inst{n:06d}.example.edu",
                    None,
                    None,
                    old_submitted,
                    "ok: 20 tables",
                    0,
                    submitted,
                    "Superseded by a newer key",
                )
            )
        days_left = rng.randrange(0, SPREAD_DAYS)
        expires_on = today + dt.timedelta(days=days_left)
        key_id += 1
        verified = now - dt.timedelta(hours=rng.randrange(1, 24)) if kind == "active" else None
        verification = {
            "active": "ok: 20 tables",
            "invalid": "rejected: 401 AuthenticationError",
            "pending_verification": "unavailable: 503 ServiceUnavailable",
        }[kind]
        key_rows.append(
            (
                key_id,
                n,
                cipher_id,
                cipher_secret,
                region,
                hint,
                "EdPotential",
                "institutional",
                expires_on,
                kind,
                "link",
                submitted,
                "Ada Admin",
                f"it{n:06d}@inst{n:06d}.example.edu",
                None,
                None,
                verified,
                verification,
                0,
                submitted,
                "",
            )
        )
        if kind != "active":
            continue
        out.active_keys += 1
        if status not in served:
            continue
        if days_left in before:
            out.expected_due += 1
        for threshold in before:
            if threshold > days_left:
                sent = timezone.make_aware(
                    dt.datetime.combine(today - dt.timedelta(days=threshold - days_left), dt.time(9, 0))
                )
                # The step's claim row, and its notice: the one record of its delivery.
                log_rows.append((len(log_rows) + 1, key_id, threshold, sent))
                notice_rows.append(
                    (
                        len(log_rows), "reminder", "sent", f"reminder:{len(log_rows)}", n, key_id, len(log_rows),
                        timezone.localdate(sent), sent, f"it{n:06d}@inst{n:06d}.example.edu", "{}", sent, sent,
                        sent + dt.timedelta(hours=72), 1, sent, sent, "",
                    )
                )  # fmt: skip

    out.institutions = copy_rows(
        "institutions_institution",
        (
            "id",
            "name",
            "slug",
            "canvas_domain",
            "status",
            "timezone",
            "account_owner_id",
            "notes",
            "created_at",
            "updated_at",
        ),
        inst_rows,
    )
    out.contacts = copy_rows(
        "institutions_contact",
        ("id", "institution_id", "name", "email", "role", "receives_reminders", "created_at"),
        contact_rows,
    )
    out.credentials = copy_rows(
        "credentials_cd2credential",
        (
            "id",
            "institution_id",
            "client_id",
            "secret",
            "region",
            "hint",
            "key_name",
            "key_type",
            "expires_on",
            "status",
            "source",
            "submitted_at",
            "submitted_by",
            "submitted_by_email",
            "created_by_id",
            "submission_link_id",
            "last_verified_at",
            "last_verification",
            "verification_attempts",
            "status_changed_at",
            "status_reason",
        ),
        key_rows,
    )
    out.reminder_logs = copy_rows(
        "credentials_reminderlog",
        ("id", "credential_id", "threshold", "claimed_at"),
        log_rows,
    )
    copy_rows(
        "credentials_notice",
        (
            "id", "kind", "state", "dedupe_key", "institution_id", "credential_id", "reminder_id", "day", "as_of",
            "recipients", "payload", "created_at", "next_attempt_at", "retry_until", "attempts", "sent_at",
            "closed_at", "last_error",
        ),
        notice_rows,
    )  # fmt: skip
    reset_sequences(
        [
            "institutions_institution",
            "institutions_contact",
            "credentials_cd2credential",
            "credentials_reminderlog",
            "credentials_notice",
        ]
    )
    # The institutions' stored key summary, as the key services would have written it with each key.
    key_summaries_fix(institution_ids=None)
    with connection.cursor() as cursor:
        # The summary's UPDATE left a dead version of every institution row (and index entries pointing to
        # them); in a running system autovacuum clears those long before anyone has 100,000 rows.
        cursor.execute("VACUUM institutions_institution")
        cursor.execute("ANALYZE")
    out.seconds = time.perf_counter() - started
    return out


def submission_links(*, count: int, now: dt.datetime | None = None) -> list[str]:
    """Up to `count` fresh single-use links, one each for served institutions with no open link; their tokens.

    One open link per institution (credentials' one_open_link_per_institution):
    a run takes at most one link per institution, and end_bench_links() ends
    what a run left unused so that the next run finds the institutions free.
    """
    from credentials.models import hash_token

    now = now or timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT i.id FROM institutions_institution i WHERE i.status IN ('active', 'onboarding') AND NOT EXISTS "
            "(SELECT 1 FROM credentials_submissionlink l WHERE l.institution_id = i.id "
            "AND l.revoked_at IS NULL AND l.used_at IS NULL) ORDER BY i.id LIMIT %s",
            [count],
        )
        institution_ids = [row[0] for row in cursor.fetchall()]
    tokens = [secrets.token_urlsafe(32) for _ in institution_ids]
    expires = now + dt.timedelta(days=14)
    copy_rows(
        "credentials_submissionlink",
        (
            "institution_id",
            "token_hash",
            "created_at",
            "created_by_id",
            "reason",
            "expires_at",
            "revoked_at",
            "used_at",
            "sent_to",
        ),
        (
            (institution_id, hash_token(token), now, None, "bench", expires, None, None, "")
            for institution_id, token in zip(institution_ids, tokens, strict=True)
        ),
    )
    return tokens


def end_bench_links(now: dt.datetime | None = None) -> None:
    """End the bench's links a run left unused (its institutions then take the next run's links)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE credentials_submissionlink SET revoked_at = %s "
            "WHERE reason = 'bench' AND revoked_at IS NULL AND used_at IS NULL",
            [now or timezone.now()],
        )
