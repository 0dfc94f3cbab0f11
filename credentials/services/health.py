"""A scheduler that cannot fail silently: each scheduled job's last run, and what /healthz reports.

Every beat job records its last successful run (start, end, counts) under
its beat entry name (a ScheduledJob row). A job is overdue when that run is older
than SCHEDULED_JOBS_OVERDUE_AFTER[name] (a daily job after 26 hours); a job
that never ran is overdue once the scheduler has been running (its first
recorded job) for that long. /healthz answers 503 when the database or the
broker does not answer or a job is overdue; the dashboard shows the same.
The cache (Redis holding the rate limits) is reported too, but answers
"degraded" with 200 when it alone fails: every page still serves (the limits
fail open), so a load balancer must not take the site out for it; monitors
alert on any status but "ok" (docs/RUNBOOK.md).
"""

from __future__ import annotations

import datetime as dt
import logging
from contextlib import contextmanager
from dataclasses import dataclass

import requests
from django.conf import settings
from django.core.cache import cache
from django.db import DatabaseError, connection
from django.utils import timezone

from credentials.models import ScheduledJob
from edpotential.celery import app

logger = logging.getLogger(__name__)

# The beat entry names (settings.CELERY_BEAT_SCHEDULE) the jobs record under.
JOB_REMINDERS = "send-expiry-reminders"
JOB_VERIFY_ACTIVE = "verify-active-credentials"
JOB_DIGEST = "send-staff-digest"
JOB_VERIFY_PENDING = "verify-pending-credentials"
JOB_SWEEP_NOTICES = "sweep-notices"
PING_TIMEOUT_SECONDS = 10
BROKER_TIMEOUT_SECONDS = 3


@dataclass(frozen=True)
class JobStatus:
    name: str
    overdue_after: dt.timedelta
    last: ScheduledJob | None
    overdue: bool

    @property
    def label(self) -> str:
        """The job in words (SCHEDULED_JOB_LABELS), not its beat entry's slug."""
        return settings.SCHEDULED_JOB_LABELS.get(self.name) or self.name.replace("-", " ").capitalize()


def job_record(*, name: str, started_at: dt.datetime, finished_at: dt.datetime, counts: dict) -> None:
    """Record a successful run of a scheduled job (one row per job, the last run)."""
    updated = ScheduledJob.objects.filter(name=name).update(
        started_at=started_at, finished_at=finished_at, counts=counts
    )
    if not updated:
        ScheduledJob.objects.get_or_create(
            name=name,
            defaults={
                "started_at": started_at,
                "finished_at": finished_at,
                "counts": counts,
                "first_run_at": started_at,
            },
        )


@contextmanager
def job_run(name: str):
    """Record the block as a successful run of `name` if it ends without an exception; yields its counts dict."""
    started = timezone.now()
    counts: dict = {}
    yield counts
    job_record(name=name, started_at=started, finished_at=timezone.now(), counts=counts)


def jobs_status(*, now: dt.datetime | None = None, runs: list[ScheduledJob] | None = None) -> list[JobStatus]:
    """Each configured job's last run and whether it is overdue; `runs`: every ScheduledJob row, if read already."""
    now = now or timezone.now()
    if runs is None:
        runs = list(ScheduledJob.objects.all())
    by_name = {run.name: run for run in runs}
    # The scheduler has been running since its first recorded job.
    scheduler_since = min((run.first_run_at for run in runs), default=None)
    statuses = []
    for name, overdue_after in settings.SCHEDULED_JOBS_OVERDUE_AFTER.items():
        last = by_name.get(name)
        if last is not None:
            overdue = now - last.finished_at > overdue_after
        else:
            overdue = scheduler_since is not None and now - scheduler_since > overdue_after
        statuses.append(JobStatus(name=name, overdue_after=overdue_after, last=last, overdue=overdue))
    return statuses


def _database_ok() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            return cursor.fetchone() == (1,)
    except DatabaseError:
        return False


def _broker_ok() -> bool:
    try:
        with app.connection_for_write(connect_timeout=BROKER_TIMEOUT_SECONDS) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=BROKER_TIMEOUT_SECONDS)
        return True
    except Exception:
        logger.warning("Health check: the broker does not answer", exc_info=True)
        return False


def _cache_ok() -> bool:
    # Only the Redis cache can be down; the development file cache and the tests' memory cache cannot.
    is_available = getattr(cache, "is_available", None)
    return is_available() if is_available is not None else True


# Components whose failure leaves every door serving: reported, but the answer stays 200 ("degraded").
DEGRADING_COMPONENTS = ("cache",)


def health_check(*, now: dt.datetime | None = None) -> dict[str, str]:
    """ok/failing per component: database, broker, cache and each scheduled job's freshness. No other data."""
    components = {
        "database": "ok" if _database_ok() else "failing",
        "broker": "ok" if _broker_ok() else "failing",
        "cache": "ok" if _cache_ok() else "failing",
    }
    try:
        statuses = jobs_status(now=now) if components["database"] == "ok" else None
    except DatabaseError:
        statuses = None
    for name in settings.SCHEDULED_JOBS_OVERDUE_AFTER:
        components[f"job:{name}"] = "failing"
    for status in statuses or ():
        components[f"job:{status.name}"] = "failing" if status.overdue else "ok"
    return components


def health_status(components: dict[str, str]) -> str:
    """ok; degraded (only a component in DEGRADING_COMPONENTS fails: still 200); or failing (503)."""
    failing = {name for name, state in components.items() if state != "ok"}
    if not failing:
        return "ok"
    return "degraded" if failing <= set(DEGRADING_COMPONENTS) else "failing"


def job_ping(*, url: str) -> bool:
    """Tell an outside monitor (healthchecks.io style) that a run succeeded; it alerts when pings stop."""
    if not url:
        return False
    try:
        requests.get(url, timeout=PING_TIMEOUT_SECONDS).raise_for_status()
        return True
    except requests.RequestException as exc:
        logger.warning("Ping after the reminder run failed: %s", type(exc).__name__)
        return False
