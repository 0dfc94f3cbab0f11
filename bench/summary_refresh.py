"""Micro-benchmark: the cost of one `institution_key_summary_refresh`, next to a one-row UPDATE by pk.

    python bench/summary_refresh.py [--institutions 2000] [--calls 2000] [--rounds 5]

Creates a throwaway PostgreSQL database (BENCH_DATABASE, default
bench_summary_<pid>, on postgres@127.0.0.1:5432), migrates it, generates the
institutions (bench/generate.py), then times, in rounds that interleave the
variants so the noise of a shared machine hits all of them:

- `sql floor`: one `UPDATE ... SET updated_at = updated_at WHERE id = %s` on a cursor;
- `orm floor`: the same through `Institution.objects.filter(pk=...).update(...)`;
- `refresh`: `institution_key_summary_refresh(institution_id=...)` (the whole summary);
- `refresh reminded`: the same with `fields=("key_reminded_unanswered",)` (once per sent reminder).

Each variant makes --calls calls per round over the institutions in turn, in
one transaction per round (the refresh always runs inside its caller's). The
figure is the median round's time per call. Drops the database afterwards
(--keep keeps it). Not part of `make bench`: it answers one question, what
the refresh costs per call.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PG_ADMIN_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql)


def _environment(db: str) -> None:
    from cryptography.fernet import Fernet

    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "bench.settings",
            "DEBUG": "false",  # DEBUG on would record every statement in connection.queries
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{db}",
            "SECRET_KEY": secrets.token_urlsafe(50),
            "FERNET_KEYS": Fernet.generate_key().decode(),
            "CLIENT_ID_INDEX_KEY": secrets.token_urlsafe(32),
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "SITE_URL": "https://registry.bench.invalid",
            "EMAIL_URL": "dummymail://",
            "CACHE_URL": "locmemcache://",
            "CELERY_BROKER_URL": "memory://",
            "LOG_LEVEL": "WARNING",
        }
    )


def _variants() -> dict:
    from django.db import connection
    from django.db.models import F

    from credentials.services.keys import institution_key_summary_refresh
    from institutions.models import Institution

    table = connection.ops.quote_name(Institution._meta.db_table)

    def sql_floor(pk: int) -> None:
        with connection.cursor() as cursor:
            cursor.execute(f"UPDATE {table} SET updated_at = updated_at WHERE id = %s", [pk])  # noqa: S608  # nosec B608

    def orm_floor(pk: int) -> None:
        Institution.objects.filter(pk=pk).update(updated_at=F("updated_at"))

    def refresh(pk: int) -> None:
        institution_key_summary_refresh(institution_id=pk)

    def refresh_reminded(pk: int) -> None:
        institution_key_summary_refresh(institution_id=pk, fields=("key_reminded_unanswered",))

    return {
        "sql floor": sql_floor,
        "orm floor": orm_floor,
        "refresh": refresh,
        "refresh reminded": refresh_reminded,
    }


def measure(*, calls: int, rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each variant, one figure per round."""
    from django.db import transaction

    from institutions.models import Institution

    ids = list(Institution.objects.order_by("pk").values_list("pk", flat=True))
    picks = [ids[n % len(ids)] for n in range(calls)]
    variants = _variants()
    for call in variants.values():  # warm up: first compilations, connection, caches
        with transaction.atomic():
            for pk in picks[:50]:
                call(pk)
    per_call: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, call in variants.items():
            with transaction.atomic():
                started = time.perf_counter()
                for pk in picks:
                    call(pk)
                per_call[name].append((time.perf_counter() - started) / calls)
    return per_call


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--institutions", type=int, default=2000)
    parser.add_argument("--calls", type=int, default=2000, help="Calls per variant and round.")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="Keep the database.")
    args = parser.parse_args(argv)

    db = os.environ.get("BENCH_DATABASE") or f"bench_summary_{os.getpid()}"
    _admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    _admin(f'CREATE DATABASE "{db}"')
    try:
        _environment(db)
        import django

        django.setup()
        from django.core.management import call_command
        from django.db import connection
        from django.utils import timezone

        from bench.generate import generate

        call_command("migrate", verbosity=0, interactive=False)
        generated = generate(institutions=args.institutions, today=timezone.localdate())
        per_call = measure(calls=args.calls, rounds=args.rounds)
        connection.close()
    finally:
        if args.keep:
            print(f"kept database {db}", file=sys.stderr)
        else:
            _admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')

    floor = statistics.median(per_call["sql floor"])
    print(
        f"{generated.institutions} institutions, {generated.credentials} keys, "
        f"{args.calls} calls × {args.rounds} rounds; load average {os.getloadavg()[0]:.2f}"
    )
    print(f"{'variant':<18} {'median µs/call':>15} {'min':>8} {'max':>8} {'× sql floor':>12}")
    for name, figures in per_call.items():
        median = statistics.median(figures)
        print(
            f"{name:<18} {median * 1e6:>15.0f} {min(figures) * 1e6:>8.0f} {max(figures) * 1e6:>8.0f}"
            f" {median / floor:>11.2f}×"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
