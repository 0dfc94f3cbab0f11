"""Settings for the test suite (pyproject's DJANGO_SETTINGS_MODULE): the project's own, plus what only tests want.

pytest-django exports DJANGO_SETTINGS_MODULE, so the processes a test starts
(gunicorn, Celery workers, manage.py commands) read this module too, and
agree with the test about hashing, folders and Redis databases.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

# Redis keeps databases 0 to 15; each parallel worker takes two (broker, cache).
_MAX_WORKERS_ON_REDIS = 8


def _redis_db_moved(url: str, by: int) -> str:
    """The same Redis URL `by` databases lower ("redis://host:6379/14" -> ".../12")."""
    parts = urlsplit(url)
    if not parts.scheme.startswith("redis") or not parts.path.strip("/").isdigit():
        return url
    db = int(parts.path.strip("/")) - by
    if db < 0:
        raise SystemExit(f"{url} leaves no free Redis database for a test worker {by // 2} places down")
    return urlunsplit(parts._replace(path=f"/{db}"))


def _isolate_parallel_worker() -> None:
    """Give each pytest-xdist worker (gw0, gw1 ...) its own var/ folder and Redis databases.

    Tests of one worker share files under var/ (the file cache, the folder
    broker, generated keys) and Redis databases (flushed, purged) with the
    processes they start, but never with another worker's. The environment
    carries the choice to those processes, which import this module again:
    the first import in a worker decides, the others keep it.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker or os.environ.get("TESTS_ISOLATED_FOR_WORKER") == worker:
        return
    os.environ["TESTS_ISOLATED_FOR_WORKER"] = worker
    n = int(worker.removeprefix("gw"))
    base = Path(os.environ.get("VAR_DIR") or Path(__file__).resolve().parent.parent / "var")
    os.environ["VAR_DIR"] = str(base / "tests" / worker)
    for name in ("CELERY_BROKER_URL", "CACHE_URL"):
        if os.environ.get(name):
            if n >= _MAX_WORKERS_ON_REDIS:
                raise SystemExit(f"at most {_MAX_WORKERS_ON_REDIS} parallel test workers with Redis ({name})")
            os.environ[name] = _redis_db_moved(os.environ[name], 2 * n)


_isolate_parallel_worker()

from edpotential.settings import *  # noqa: E402, F403

# MD5 for the many users the tests make and sign in (healthchecks' test runner
# does the same "for speed"): the default PBKDF2 takes a good part of a second per hash.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# The counters write their rows at once (as with no Redis); the tests of the Redis buffer start a
# redis-server of their own and set METRICS_REDIS_URL (tests/credentials/test_metric_buffer.py).
METRICS_REDIS_URL = ""
