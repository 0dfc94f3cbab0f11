"""The registry's numbers for Prometheus: what /metrics serves, and the counters behind it.

Two kinds of numbers, both read from the database at each scrape, in a
fixed number of queries whatever the number of institutions (five, and
four more when counts wait in Redis to be flushed: bench/RESULTS.md has
the scrape at 100,000):

- Gauges computed from what is stored anyway: institutions by key state
  from the key summary on Institution (one aggregate pass over the
  institutions, no join to the keys; "reminders ended" by issue 23's rule
  in the same pass), the outbox's open and failed notices by kind and
  state and the age of the oldest one waiting (the notices' state index),
  each scheduled job's last success (ScheduledJob).
- Counters kept in MetricCount rows: submissions by outcome, key checks by
  verdict, CD2 gateway requests by status class with their latency
  histogram, API key reads by outcome, outbox deliveries by kind and
  outcome (webhook deliveries are the kind "webhook").

Why the counters live in the database and not in prometheus-client's
multiprocess mode (PROMETHEUS_MULTIPROC_DIR): the events happen in several
kinds of process, often on several hosts (gunicorn's workers count
submissions and API reads; Celery's workers count key checks, gateway
requests and deliveries), and one scrape of any web process must see all
of them. Multiprocess mode only adds up processes that share one directory
on one host, and loses the counts at each restart. Prometheus sees a
registry-wide number: scraping several web processes gives the same series
several times (aggregate with max, not sum; docs/RUNBOOK.md). The request
and database numbers, which are per host by nature, do use multiprocess
mode (requestinfo/metrics.py) and come after these in the same scrape.

Why the events do not write their rows themselves: a row's UPDATE per event
(three per key check, one per API key read) put a write, and a lock on a
row every worker shares until the request's transaction ended, on the
pipeline's hot path. An event is one Redis round trip after its work
commits (credentials/metric_buffer.py); metrics_flush adds what waits to
the rows in one statement, exactly once, at each scrape and every minute.
Redis down (or not configured): the event writes its row as before.

No label carries a Secret, a Client ID, a token, a person's address or an
institution: label values are this module's vocabulary (outcomes, verdicts,
notice kinds, job names), so the number of series is bounded.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Case, Count, F, Min, Q, When
from django.utils import timezone
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from credentials import metric_buffer
from credentials.cd2 import Verdict
from credentials.models import MetricCount, Notice, ScheduledJob
from credentials.selectors import reminders_ended
from credentials.services import health
from institutions.models import Institution, KeyState
from requestinfo.metrics import process_metrics_render

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------
# The counters: names, help, label names and the label values known in advance
# (shown as 0 before their first event, so rate() and the alert rules have a series).
# --------------------------------------------------------------------------

SUBMISSIONS = "cd2_submissions"
KEY_CHECKS = "cd2_key_checks"
API_KEY_READS = "cd2_api_key_reads"
OUTBOX_DELIVERIES = "cd2_outbox_deliveries"
WEBHOOK_DELIVERIES = "cd2_webhook_deliveries"
GATEWAY_SECONDS = "cd2_gateway_request_duration_seconds"

# What a delivery attempt came to (services/outbox.py): sent, to be retried, given up, closed unsent on purpose.
DELIVERY_OUTCOMES = ("sent", "retry", "failed", "closed")
# The API's refusals of a key read (api.services.api_key_read) and "served".
API_READ_OUTCOMES = ("served", "institution_not_found", "no_key", "key_pending", "key_invalid", "key_expired")
SUBMISSION_OUTCOMES = (
    "accepted",
    "pending",
    "invalid",
    "rejected",
    "taken",
    "already_have",
    "link_unusable",
)
GATEWAY_STATUS_CLASSES = ("2xx", "3xx", "4xx", "5xx", "error")
# Seconds: a login and a table list usually take 0.1-1 s; the read timeout is CD2_READ_TIMEOUT (20 s).
GATEWAY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, math.inf)

COUNTERS: dict[str, tuple[str, dict[str, tuple[str, ...]]]] = {
    SUBMISSIONS: ("Keys handed over through a door (link page, staff), by outcome.", {"outcome": SUBMISSION_OUTCOMES}),
    KEY_CHECKS: ("Checks of a key against CD2, by verdict.", {"verdict": tuple(v.value for v in Verdict)}),
    API_KEY_READS: ("Pipeline API reads of an institution's key, by outcome.", {"outcome": API_READ_OUTCOMES}),
    OUTBOX_DELIVERIES: (
        "Outbox delivery attempts by notice kind and outcome (sent, retry, failed: gave up, closed: not sent on "
        "purpose).",
        {"kind": tuple(Notice.Kind.values), "outcome": DELIVERY_OUTCOMES},
    ),
}
HISTOGRAMS: dict[str, tuple[str, dict[str, tuple[str, ...]], tuple[float, ...]]] = {
    GATEWAY_SECONDS: (
        "CD2 gateway requests (login, table list) by status class (error: no answer), and how long each took.",
        {"status_class": GATEWAY_STATUS_CLASSES},
        GATEWAY_BUCKETS,
    ),
}

# The MetricCount row that records the last batches of counts flushed from Redis (metrics_flush): its
# labels hold their ids, its count how many flushes there were. Not a metric: the scrape never shows it.
FLUSH_MARKER = "cd2_metrics_flush"
FLUSH_MARKER_KEEP = 8  # ids kept: a flush that stalled past the lock's time finds its batch among them

# The key states of the institutions gauge: KeyState, with expiring split at 7 days.
EXPIRING_SOON_DAYS = 7
INSTITUTION_STATES = ("ok", "expiring_30d", "expiring_7d", "expired", "pending", "failing", "missing")
# Notice states counted by the outbox gauge: the open ones and those given up (the index on state finds them;
# sent and closed notices only grow, and cd2_outbox_deliveries_total counts them instead).
OUTBOX_GAUGE_STATES = (Notice.State.PENDING, Notice.State.SENDING, Notice.State.FAILED)


def _label_text(labels: Mapping[str, str]) -> str:
    """A label set as the MetricCount row stores it: Prometheus syntax, sorted by name."""
    return ",".join(f'{name}="{labels[name]}"' for name in sorted(labels))


def _label_parse(text: str) -> dict[str, str]:
    found = {}
    for part in filter(None, text.split(",")):
        name, _, value = part.partition("=")
        found[name] = value.strip('"')
    return found


def _check_labels(name: str, labels: Mapping[str, str], declared: Iterable[str]) -> None:
    if set(labels) != set(declared):
        raise ValueError(f"{name} takes the labels {sorted(declared)}, not {sorted(labels)}")
    for value in labels.values():
        if not value or any(c in value for c in '",=\\\n'):
            raise ValueError(f"{name}: label value {value!r} is not a plain word")


def _db_add(*, name: str, labels: str, count: int, total: float = 0.0) -> None:
    """Add to one row (made on first use); an error is logged, never raised to the caller's work."""

    def write() -> None:
        updated = MetricCount.objects.filter(name=name, labels=labels).update(
            count=F("count") + count, total=F("total") + total
        )
        if updated:
            return
        try:
            with transaction.atomic():
                MetricCount.objects.create(name=name, labels=labels, count=count, total=total)
        except IntegrityError:  # another process made it meanwhile
            MetricCount.objects.filter(name=name, labels=labels).update(
                count=F("count") + count, total=F("total") + total
            )

    try:
        if connection.in_atomic_block:
            # A savepoint: a failed count must not break the caller's transaction.
            with transaction.atomic():
                write()
        else:
            write()
    except Exception as exc:  # a count is never worth failing the work it counts (database down, no database)
        logger.warning("Metric %s not counted: %s", name, type(exc).__name__)


def _add(*, name: str, labels: str, count: int, total: float = 0.0) -> None:
    """Count an event: into Redis once the work commits (flushed later), or straight into its row.

    With METRICS_REDIS_URL the hot path writes no row: one Redis round trip
    after the caller's transaction commits (a rolled-back piece of work counts
    nothing, as with the row). Redis down or not configured: the row's UPDATE,
    in a savepoint of the caller's transaction, as before (nothing lost).
    """
    if not metric_buffer.configured():
        _db_add(name=name, labels=labels, count=count, total=total)
        return

    def after_commit() -> None:
        if not metric_buffer.add(name=name, labels=labels, count=count, total=total):
            _db_add(name=name, labels=labels, count=count, total=total)

    if connection.in_atomic_block:
        transaction.on_commit(after_commit, robust=True)
    else:  # autocommit: the work is committed already (and on_commit would open a connection just to ask)
        after_commit()


def metrics_flush() -> int:
    """Move the counts waiting in Redis into their MetricCount rows; how many rows it added to.

    Called by each scrape (before it reads the rows) and every minute by
    beat (metrics_flush_task). Never raises: Redis or the database down
    leaves the counts where they are, for the next flush.
    """
    try:
        batch = metric_buffer.batch_take()
    except metric_buffer.BufferUnavailable:
        return 0
    if batch is None:
        return 0
    try:
        applied = _batch_apply(batch)
    except Exception as exc:  # the batch stays in Redis under its id; the next flush applies it
        logger.warning("Metric counts not flushed: %s", type(exc).__name__, exc_info=True)
        with contextlib.suppress(metric_buffer.BufferUnavailable):
            metric_buffer.batch_release(batch)
        return 0
    # Redis gone now: the batch is applied and recorded, the next flush finds its id in the marker and drops it.
    with contextlib.suppress(metric_buffer.BufferUnavailable):
        metric_buffer.batch_release(batch, applied=True)
    return applied


def _batch_apply(batch: metric_buffer.Batch) -> int:
    """Add a batch to the rows in one statement, once: the marker row remembers the last batches applied.

    A flush killed after this commits but before Redis drops the batch
    leaves it for the next flush, which finds its id here and skips it: no
    event is counted twice, none lost.
    """
    with transaction.atomic():
        # One row of that name, whatever its labels (a first flush racing another fails on the unique
        # constraint and rolls back: its batch waits for the next flush).
        marker = MetricCount.objects.select_for_update().filter(name=FLUSH_MARKER).first()
        if marker is None:
            marker = MetricCount.objects.create(name=FLUSH_MARKER, labels="")
        applied_ids = [i for i in (marker.labels or "").split(",") if i]
        # The marker's labels hold the last few batch ids, newest last (the flush lock makes one flush at a time).
        if batch.batch_id in applied_ids:
            return 0
        rows = [(name, labels, count, total) for (name, labels), (count, total) in sorted(batch.counts.items())]
        if rows:
            table = connection.ops.quote_name(MetricCount._meta.db_table)
            values = ", ".join(["(%s, %s, %s, %s)"] * len(rows))
            # One statement for the whole batch, whatever its size: INSERT ... ON CONFLICT adds to the
            # rows that exist (PostgreSQL and SQLite spell it alike; Django's bulk_create can only
            # overwrite a conflicting row's value, not add to it). Only placeholders are formatted in.
            sql = (
                f"INSERT INTO {table} (name, labels, count, total) VALUES {values} "  # noqa: S608  # nosec B608
                "ON CONFLICT (name, labels) DO UPDATE SET "
                f"count = {table}.count + excluded.count, total = {table}.total + excluded.total"
            )
            with connection.cursor() as cursor:
                cursor.execute(sql, [value for row in rows for value in row])
        applied_ids = [*applied_ids, batch.batch_id][-FLUSH_MARKER_KEEP:]
        MetricCount.objects.filter(pk=marker.pk).update(count=F("count") + 1, labels=",".join(applied_ids))
    return len(rows)


def metric_count(name: str, *, labels: Mapping[str, str], n: int = 1) -> None:
    """Add `n` to a counter of COUNTERS with these labels."""
    if n <= 0:
        return
    _check_labels(name, labels, COUNTERS[name][1])
    _add(name=name, labels=_label_text(labels), count=n)


def metric_observe(name: str, value: float, *, labels: Mapping[str, str]) -> None:
    """Record one observation of a histogram of HISTOGRAMS (in the smallest bucket that holds it)."""
    _, declared, buckets = HISTOGRAMS[name]
    _check_labels(name, labels, declared)
    bound = next(b for b in buckets if value <= b)
    _add(name=name, labels=_label_text({**labels, "le": _bound_text(bound)}), count=1, total=value)


def _bound_text(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def status_class(status_code: int | None) -> str:
    """A gateway answer's class for the latency histogram: "2xx" ... "5xx", or "error" for no answer."""
    if status_code is None or not 200 <= status_code < 600:
        return "error"
    return f"{status_code // 100}xx"


def gateway_request_record(sender=None, *, status_code: int | None, seconds: float, **kwargs) -> None:
    """The cd2.gateway_request listener (wired in CredentialsConfig.ready): one request's class and latency."""
    metric_observe(GATEWAY_SECONDS, max(seconds, 0.0), labels={"status_class": status_class(status_code)})


def key_check_record(sender=None, *, verdict: str, **kwargs) -> None:
    """The cd2.key_checked listener: one check of a key, by verdict."""
    metric_count(KEY_CHECKS, labels={"verdict": verdict})


# --------------------------------------------------------------------------
# One scrape
# --------------------------------------------------------------------------


def _institution_numbers(*, today: dt.date, now: dt.datetime) -> dict:
    """Served institutions by key state, reminded-without-answer, and the soonest expiry: one pass, no join."""
    ok = Q(key_condition=KeyState.OK)
    soon = today + dt.timedelta(days=EXPIRING_SOON_DAYS)
    expiring = today + dt.timedelta(days=settings.CD2_EXPIRING_DAYS)
    counts = {
        "ok": Count("pk", filter=ok & Q(key_expires_on__gt=expiring)),
        "expiring_30d": Count("pk", filter=ok & Q(key_expires_on__gt=soon, key_expires_on__lte=expiring)),
        "expiring_7d": Count("pk", filter=ok & Q(key_expires_on__gte=today, key_expires_on__lte=soon)),
        "expired": Count("pk", filter=ok & Q(key_expires_on__lt=today)),
        "pending": Count("pk", filter=Q(key_condition=KeyState.PENDING)),
        "failing": Count("pk", filter=Q(key_condition=KeyState.FAILING)),
        "missing": Count("pk", filter=Q(key_condition=KeyState.MISSING)),
        "reminded": Count("pk", filter=Q(key_reminded_unanswered=True)),
        # Issue 23's rule, on each institution's own day: ranges of the stored expiry, no join.
        "reminders_ended": Count("pk", filter=reminders_ended(now=now)),
        "soonest": Min("key_expires_on", filter=ok & Q(key_expires_on__gte=today)),
    }
    return Institution.objects.filter(status__in=Institution.SERVED_STATUSES).aggregate(**counts)


def _outbox_numbers(*, now: dt.datetime) -> tuple[dict[tuple[str, str], int], float]:
    """Open and given-up notices by (kind, state); seconds the oldest waiting notice has waited."""
    by_kind = {
        (row["kind"], row["state"]): row["n"]
        for row in Notice.objects.filter(state__in=OUTBOX_GAUGE_STATES)
        .values("kind", "state")
        .annotate(n=Count("pk"))
        .order_by()
    }
    # Waiting: open and due at least once. A notice never tried waits from when it fell due (a bulk link
    # send spaces its notices over hours on purpose); one tried already, from when it was written.
    waiting_since = (
        Notice.objects.filter(state__in=Notice.OPEN_STATES)
        .filter(Q(attempts__gt=0) | Q(next_attempt_at__lte=now))
        .aggregate(
            since=Min(
                Case(When(attempts=0, then=F("next_attempt_at")), default=F("created_at")),
            )
        )["since"]
    )
    oldest = max((now - waiting_since).total_seconds(), 0.0) if waiting_since else 0.0
    return by_kind, oldest


def _timestamp(day: dt.date) -> float:
    """The end of a key's last day (midnight UTC after it): the moment it stops being usable, to a day."""
    return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC).timestamp()


class RegistryCollector:
    """A prometheus-client collector whose collect() runs this module's few queries (one scrape)."""

    def collect(self) -> Iterator[Metric]:
        # The counts waiting in Redis first, so a scrape shows every event counted before it began.
        if metric_buffer.configured():
            metrics_flush()
        now = timezone.now()
        yield from self._institutions(timezone.localdate(now), now)
        yield from self._outbox(now)
        yield from self._jobs(now)
        yield from self._counters()

    def _institutions(self, today: dt.date, now: dt.datetime) -> Iterator[Metric]:
        numbers = _institution_numbers(today=today, now=now)
        states = GaugeMetricFamily(
            "cd2_institutions",
            "Served institutions by their key's state (expiring_30d: 8-30 days left, expiring_7d: 0-7 days; "
            "pending: a key awaits its check).",
            labels=["key_state"],
        )
        for state in INSTITUTION_STATES:
            states.add_metric([state], numbers[state])
        yield states
        yield GaugeMetricFamily(
            "cd2_institutions_reminded_unanswered",
            "Served institutions reminded about their key with no new key since.",
            value=numbers["reminded"],
        )
        yield GaugeMetricFamily(
            "cd2_institutions_reminders_ended",
            "Served institutions whose key lapsed so long ago (REMINDER_STOP_AFTER_EXPIRY_MONTHS, on their own day) "
            "that their contacts are reminded no more: staff must ask. A part of key_state expired (and of "
            "failing when the lapsed key also fails its check), so not a key_state of its own.",
            value=numbers["reminders_ended"],
        )
        if numbers["soonest"] is not None:
            yield GaugeMetricFamily(
                "cd2_key_soonest_expiry_timestamp_seconds",
                "When the soonest-expiring active key of a served institution stops (midnight UTC after its day).",
                value=_timestamp(numbers["soonest"]),
            )

    def _outbox(self, now: dt.datetime) -> Iterator[Metric]:
        by_kind, oldest = _outbox_numbers(now=now)
        notices = GaugeMetricFamily(
            "cd2_outbox_notices",
            "Outbox notices waiting (pending), being sent (sending) or given up (failed), by kind.",
            labels=["kind", "state"],
        )
        for kind in Notice.Kind.values:
            for state in OUTBOX_GAUGE_STATES:
                notices.add_metric([kind, state], by_kind.get((kind, state), 0))
        yield notices
        yield GaugeMetricFamily(
            "cd2_outbox_oldest_waiting_age_seconds",
            "How long the oldest undelivered notice has waited since it fell due (0: none waiting).",
            value=oldest,
        )

    def _jobs(self, now: dt.datetime) -> Iterator[Metric]:
        statuses = health.jobs_status(now=now, runs=list(ScheduledJob.objects.all()))
        last = GaugeMetricFamily(
            "cd2_job_last_success_timestamp_seconds", "When each scheduled job last ran to the end.", labels=["job"]
        )
        overdue = GaugeMetricFamily(
            "cd2_job_overdue", "1 when a scheduled job is overdue (as /healthz says), else 0.", labels=["job"]
        )
        overdue_after = GaugeMetricFamily(
            "cd2_job_overdue_after_seconds",
            "How long after its last success a job counts as overdue (SCHEDULED_JOBS_OVERDUE_AFTER).",
            labels=["job"],
        )
        counts = GaugeMetricFamily(
            "cd2_job_last_run_count", "The counts each job's last successful run reported.", labels=["job", "count"]
        )
        for status in statuses:
            overdue.add_metric([status.name], 1 if status.overdue else 0)
            overdue_after.add_metric([status.name], status.overdue_after.total_seconds())
            if status.last is not None:
                last.add_metric([status.name], status.last.finished_at.timestamp())
                for count_name, value in sorted((status.last.counts or {}).items()):
                    if isinstance(value, int | float) and not isinstance(value, bool):
                        counts.add_metric([status.name, str(count_name)], value)
        yield from (last, overdue, overdue_after, counts)

    def _counters(self) -> Iterator[Metric]:
        rows: dict[str, dict[str, MetricCount]] = defaultdict(dict)
        for row in MetricCount.objects.all():
            rows[row.name][row.labels] = row
        for name, (help_text, declared) in COUNTERS.items():
            yield _counter_family(name, help_text, declared, rows.get(name, {}))
        deliveries = rows.get(OUTBOX_DELIVERIES, {})
        webhooks = {
            _label_text({"outcome": labels["outcome"]}): row
            for text, row in deliveries.items()
            if (labels := _label_parse(text)).get("kind") == Notice.Kind.WEBHOOK
        }
        yield _counter_family(
            WEBHOOK_DELIVERIES,
            "Webhook delivery attempts by outcome (the outbox's deliveries of kind webhook).",
            {"outcome": DELIVERY_OUTCOMES},
            webhooks,
        )
        for name, (help_text, declared, buckets) in HISTOGRAMS.items():
            yield _histogram_family(name, help_text, declared, buckets, rows.get(name, {}))


def _known_label_sets(declared: Mapping[str, tuple[str, ...]]) -> list[dict[str, str]]:
    sets: list[dict[str, str]] = [{}]
    for name, values in declared.items():
        sets = [{**partial, name: value} for partial in sets for value in values]
    return sets


def _counter_family(name, help_text, declared, rows: Mapping[str, MetricCount]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, help_text, labels=list(declared))
    values = {_label_text(labels): 0 for labels in _known_label_sets(declared)}
    values.update({text: row.count for text, row in rows.items()})
    for text, value in sorted(values.items()):
        labels = _label_parse(text)
        family.add_metric([labels[label] for label in declared], value)
    return family


def _histogram_family(name, help_text, declared, buckets, rows: Mapping[str, MetricCount]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, help_text, labels=list(declared))
    per_series: dict[str, dict[str, MetricCount]] = {_label_text(labels): {} for labels in _known_label_sets(declared)}
    for text, row in rows.items():
        labels = _label_parse(text)
        bound = labels.pop("le", "+Inf")
        per_series.setdefault(_label_text(labels), {})[bound] = row
    for text, by_bound in sorted(per_series.items()):
        labels = _label_parse(text)
        cumulative, series = 0, []
        for bound in buckets:
            row = by_bound.get(_bound_text(bound))
            cumulative += row.count if row else 0
            series.append((_bound_text(bound), cumulative))
        total = sum(row.total for row in by_bound.values())
        family.add_metric([labels[label] for label in declared], series, total)
    return family


_REGISTRY = CollectorRegistry(auto_describe=False)
_REGISTRY.register(RegistryCollector())


def metrics_render() -> tuple[bytes, str]:
    """One scrape: the registry's numbers, then this host's request and database numbers (requestinfo.metrics)."""
    return generate_latest(_REGISTRY) + process_metrics_render(), CONTENT_TYPE_LATEST
