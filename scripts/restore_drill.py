#!/usr/bin/env python
"""Restore drill: restore a database dump into a fresh database and read every key back.

    FERNET_KEYS=<the production keys> .venv/bin/python scripts/restore_drill.py registry.dump \\
        --server postgres://postgres@127.0.0.1:5432/postgres

1. Creates an empty database, restore_drill_<UTC time>, on --server (a
   maintenance database URL there; never the production server if avoidable).
2. Restores the dump into it with pg_restore (custom format: `pg_dump -Fc`).
3. Opens it with the app's settings and FERNET_KEYS from the environment,
   as the app would, and decrypts every encrypted column of every row.
   Values are never printed: counts and row ids only.
4. Drops it, unless --keep.

Exit status 0 when every stored value decrypted, 1 otherwise. What to do on
failure: docs/RUNBOOK.md, "Backup and restore".
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

BASE_DIR = Path(__file__).resolve().parent.parent
NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
LIBPQ_ENV = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "password": "PGPASSWORD", "dbname": "PGDATABASE"}


def database_url(server: str, name: str) -> str:
    """`server` with its database name replaced by `name`."""
    parts = urlsplit(server)
    return urlunsplit(parts._replace(path="/" + name))


def libpq_env(url: str) -> dict[str, str]:
    """The connection as PG* variables, so no password shows in a process list."""
    params = conninfo_to_dict(url)
    return {**os.environ, **{LIBPQ_ENV[k]: str(v) for k, v in params.items() if k in LIBPQ_ENV}}


def pg_restore() -> str:
    path = shutil.which("pg_restore")
    if not path:
        sys.exit("pg_restore is not installed: apt-get install postgresql-client (the server's major version).")
    return path


def create(*, server: str, name: str) -> None:
    # An operator's tool: fixed argv, no shell.
    tool = subprocess.run([pg_restore(), "--version"], capture_output=True, text=True, check=True).stdout.strip()  # noqa: S603
    with psycopg.connect(server, autocommit=True) as conn:
        server_major = conn.info.server_version // 10000
        print(f"{tool}; server: PostgreSQL {server_major}")
        found = re.search(r"\(PostgreSQL\) (\d+)", tool)
        if found and int(found.group(1)) < server_major:
            print("warning: pg_restore is older than the server; install the server's postgresql-client.")
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    print(f"created database {name}")


def restore(dump: Path, *, server: str, name: str) -> None:
    print(f"restoring {dump} ...")
    subprocess.run(  # noqa: S603  (fixed argv, no shell; the dump path is an argument, not code)
        [pg_restore(), "--no-owner", "--no-privileges", "--exit-on-error", "--dbname", name, str(dump)],
        env=libpq_env(database_url(server, name)),
        check=True,
    )


def drop(*, server: str, name: str) -> None:
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    print(f"dropped database {name}")


def read_back(url: str) -> bool:
    """Decrypt every stored encrypted value in `url`'s database with the configured FERNET_KEYS."""
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "edpotential.settings")
    sys.path.insert(0, str(BASE_DIR))
    import django

    django.setup()
    # Our modules load only once Django is set up on the restored database.
    from cryptography.fernet import InvalidToken
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    from credentials.checks import encrypted_columns
    from credentials.fields import get_multifernet

    executor = MigrationExecutor(connection)
    pending = executor.migration_plan(executor.loader.graph.leaf_nodes())
    if pending:
        print(f"note: the dump is {len(pending)} migration(s) behind this code; `manage.py migrate` would apply them.")
    fernet = get_multifernet()
    decrypted = 0
    failed: dict[str, list] = {}
    for model, field in encrypted_columns():
        table, column, pk = (
            connection.ops.quote_name(n) for n in (model._meta.db_table, field.column, model._meta.pk.column)
        )
        label = f"{model._meta.db_table}.{field.column}"
        with connection.cursor() as cursor:
            # Names are quoted identifiers from our own models, never input.
            cursor.execute(f"SELECT {pk}, {column} FROM {table} WHERE {column} IS NOT NULL ORDER BY {pk}")  # noqa: S608  # nosec B608
            rows = 0
            while batch := cursor.fetchmany(1000):
                for row_pk, token in batch:
                    rows += 1
                    try:
                        fernet.decrypt(token.encode())
                        decrypted += 1
                    except (InvalidToken, AttributeError):
                        failed.setdefault(label, []).append(row_pk)
        bad = len(failed.get(label, []))
        print(f"{label}: {rows - bad} of {rows} decrypted with FERNET_KEYS")
    for label, pks in failed.items():
        print(f"FAILED {label}: {len(pks)} value(s) do not decrypt, ids {pks[:20]}{' ...' if len(pks) > 20 else ''}")
    if not decrypted and not failed:
        print("FAILED: the dump holds no encrypted value, so it proves nothing about FERNET_KEYS.")
        return False
    return not failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dump", type=Path, help="a pg_dump archive in custom format (pg_dump -Fc)")
    parser.add_argument("--server", required=True, help="URL of a maintenance database on the server to restore into")
    parser.add_argument("--name", help="database to create (default restore_drill_<UTC time>); must not exist")
    parser.add_argument("--keep", action="store_true", help="leave the restored database in place")
    args = parser.parse_args(argv)
    name = args.name or "restore_drill_" + dt.datetime.now(dt.UTC).strftime("%Y%m%d_%H%M%S")
    if not NAME.match(name):
        parser.error(f"--name {name!r}: use lower-case letters, digits and _")
    if not os.environ.get("FERNET_KEYS"):
        parser.error("FERNET_KEYS is not set: the drill reads the keys back with the production keys.")
    if not args.dump.is_file():
        parser.error(f"{args.dump}: no such file")

    create(server=args.server, name=name)
    try:
        restore(args.dump, server=args.server, name=name)
        ok = read_back(database_url(args.server, name))
    except subprocess.CalledProcessError as exc:
        print(f"FAILED: pg_restore exited with status {exc.returncode} (its message is above).")
        ok = False
    finally:
        if args.keep:
            print(f"kept database {name}")
        else:
            drop(server=args.server, name=name)  # WITH (FORCE) also ends our own connection
    print("restore drill: PASSED" if ok else "restore drill: FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
