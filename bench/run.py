"""Benchmarks at scale: `python bench/run.py --institutions 10000 100000` (or `make bench`).

For each size N: create a throwaway PostgreSQL database (bench_<pid>_<N> on
postgres@127.0.0.1:5432), migrate it, generate N institutions with contacts
and keys, measure each figure next to its floor (bench/measure.py,
in a process of its own), drop the database, rewrite the rows of
bench/RESULTS.md's current table that the run measured (the others stay, with
their older date), and put the run's full log on top of bench/HISTORY.md.

Needs PostgreSQL and Redis on 127.0.0.1 and wrk (Debian: apt-get install wrk).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.report import write_results  # noqa: E402

PG_ADMIN_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_HOST = "127.0.0.1"
# BENCH_REDIS_PORT: a redis-server of one's own (a shared machine: no other run's keys or queues).
REDIS_PORT = int(os.environ.get("BENCH_REDIS_PORT", "6379"))
# Redis database for the bench's cache and Celery queue (the team uses 1-5, CI 14-15).
REDIS_DB = int(os.environ.get("BENCH_REDIS_DB", "7"))


class BenchError(Exception):
    """A prerequisite is missing; the message says what to do."""


def _pg_connect(url: str = PG_ADMIN_URL):
    import psycopg

    return psycopg.connect(url, autocommit=True, connect_timeout=5)


def pg_version() -> str:
    try:
        with _pg_connect() as conn:
            return conn.execute("SHOW server_version").fetchone()[0]
    except Exception as exc:
        raise BenchError(
            f"PostgreSQL is not reachable at {PG_ADMIN_URL} ({type(exc).__name__}). Start it, or set BENCH_PG_URL."
        ) from None


def redis_ok() -> bool:
    import redis

    try:
        return bool(redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_connect_timeout=2).ping())
    except redis.RedisError:
        return False


def wrk_version() -> str:
    if not shutil.which("wrk"):
        raise BenchError("wrk is not installed: the submission figure needs it. Install it with: apt-get install wrk")
    out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    # "wrk debian/4.1.0-3+b2 [epoll] Copyright (C) 2012 Will Glozer": the first two words.
    return " ".join((out.stdout or out.stderr).split()[:2])


def machine() -> dict:
    cpu = "unknown"
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as handle:
        total_kb = int(next(line for line in handle if line.startswith("MemTotal")).split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": total_kb / 2**20,
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
    }


def run_size(n: int, args, *, redis_available: bool) -> dict:
    """Measure at size n in a fresh database and a fresh process; the database is dropped after."""
    from cryptography.fernet import Fernet

    # BENCH_DATABASE: a database name of one's own (dropped and made again per size).
    db = os.environ.get("BENCH_DATABASE") or f"bench_{os.getpid()}_{n}"
    with _pg_connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{db}"')
    var_dir = tempfile.mkdtemp(prefix="bench-var-")
    out_path = Path(var_dir) / "figures.json"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "bench.settings",
        "DEBUG": "false",
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{db}",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "FERNET_KEYS": Fernet.generate_key().decode(),
        "CLIENT_ID_INDEX_KEY": secrets.token_urlsafe(32),
        "ALLOWED_HOSTS": "127.0.0.1,localhost,testserver",
        "SITE_URL": "https://registry.bench.invalid",  # required with DEBUG off; only links in mails use it
        "VAR_DIR": var_dir,
        "CACHE_URL": f"rediscache://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}" if redis_available else "locmemcache://",
        "CELERY_BROKER_URL": f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}" if redis_available else "memory://",
        "BENCH_QUEUE": f"bench-{os.getpid()}-{n}",
        "LOG_LEVEL": "WARNING",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    command = [
        sys.executable,
        "-m",
        "bench.measure",
        "--institutions",
        str(n),
        "--json",
        str(out_path),
        "--workers",
        str(args.workers),
        "--gateway-rate",
        str(args.gateway_rate),
    ]
    if args.quick:
        command.append("--quick")
    if args.only:
        command += ["--only", *args.only]
    if args.profile_dir:
        command += ["--profile-dir", str(Path(args.profile_dir).resolve())]
    started = time.perf_counter()
    try:
        subprocess.run(command, cwd=ROOT, env=env, check=True)
        figures = json.loads(out_path.read_text())
    finally:
        if args.keep:
            print(f"bench: kept database {db} and {var_dir} (server logs)", file=sys.stderr)
        else:
            with _pg_connect() as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            shutil.rmtree(var_dir, ignore_errors=True)
    figures["total_s"] = time.perf_counter() - started
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--institutions", type=int, nargs="+", default=[10_000, 100_000], metavar="N")
    parser.add_argument(
        "--results",
        default=str(ROOT / "bench" / "RESULTS.md"),
        help="The current table to update; the run's full log goes on top of HISTORY.md beside it.",
    )
    parser.add_argument("--quick", action="store_true", help="Fewer repeats, short load runs (the smoke test).")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="gunicorn workers.")
    parser.add_argument(
        "--gateway-rate", type=float, default=10.0, help="Requests/s the fake CD2 gateway allows (key checks)."
    )
    parser.add_argument("--only", nargs="*", help="Measure only these figures (reminders admin submission ...).")
    parser.add_argument("--profile-dir", help="Also write pyinstrument profiles of each figure here.")
    parser.add_argument("--keep", action="store_true", help="Keep the databases and server logs (to debug).")
    parser.add_argument("--render", metavar="FIGURES_JSON", help="Only write the report from a run's raw figures.")
    args = parser.parse_args(argv)

    if args.render:
        raw = json.loads(Path(args.render).read_text())
        started = dt.datetime.fromisoformat(raw["started"])
        write_results(Path(args.results), started=started, machine=raw["machine"], sizes=raw["sizes"], quick=args.quick)
        return 0
    try:
        info = machine()
        info["postgresql"] = pg_version()
        info["wrk"] = wrk_version()
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    redis_available = redis_ok()
    if not redis_available:
        print("bench: Redis is not reachable on 127.0.0.1:6379: the key-check figure will be missing.", file=sys.stderr)
    started = dt.datetime.now(dt.UTC)
    sizes = []
    for n in args.institutions:
        print(f"bench: N = {n:,}", file=sys.stderr, flush=True)
        sizes.append(run_size(n, args, redis_available=redis_available))
    # The raw figures first, so a report that fails to render loses nothing.
    raw = Path(tempfile.mkdtemp(prefix="bench-figures-")) / "figures.json"
    raw.write_text(json.dumps({"started": started.isoformat(), "machine": info, "sizes": sizes}, indent=2))
    print(f"bench: raw figures in {raw}", file=sys.stderr)
    write_results(Path(args.results), started=started, machine=info, sizes=sizes, quick=args.quick)
    print(f"bench: results written to {args.results}", file=sys.stderr)
    return 1 if any(size.get("errors") for size in sizes) else 0


if __name__ == "__main__":
    sys.exit(main())
