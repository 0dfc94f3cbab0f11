"""The usual request and database numbers of a web process, for /metrics beside the registry's own.

Per request: its route, method and status class (a counter), how long it
took (a histogram), how many SQL statements it ran and how long they took;
and database errors by class. Imports nothing of ours (a request helper).

Why prometheus-client's own Counter and Histogram in one small middleware,
not django-prometheus (2.5.0, May 2026, is the first release for Django
5.2): its database numbers need our DATABASES ENGINE swapped for its
wrapped backends (and every tool that reads ENGINE taught about them), and
it exports dozens of families (per-model inserts, migrations, cache
hits ...) where an on-call engineer reads five. Its view
label is the same as ours (the URL pattern's name); Django's own
connection.execute_wrapper gives the statement counts without a backend
of its own. The rest is some forty lines.

Cardinality stays bounded: `view` is the matched URL pattern's name
(`api:key`, `admin:institutions_institution_change`), never the
path, so no institution slug, key id or link token reaches a label; a
request that matched no pattern (404 before any view) is `<unmatched>`.
`method` is one of the HTTP methods (else `other`), `status` a class (`2xx`).

Several processes: gunicorn's workers each count their own requests. With
PROMETHEUS_MULTIPROC_DIR set (gunicorn.conf.py sets it), each process
writes its numbers to files in that folder and a scrape of any worker adds
up every worker's (prometheus-client's multiprocess mode; docs/RUNBOOK.md,
"Prometheus, Grafana and chat alerts"). These numbers are per host and restart at a deploy (Prometheus'
rate() handles that); the registry's own counters are the database's, one
number across hosts (credentials/services/metrics.py).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from django.db import DatabaseError, connections
from django.http import HttpRequest, HttpResponse
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

UNMATCHED = "<unmatched>"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Seconds: a page or an API read takes tens of ms; a submission waits for CD2 (up to ~40 s, gunicorn's timeout).
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
QUERY_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 200)

# The process's own registry (not prometheus-client's global one, which would also export this process's
# CPU and memory, meaningless added up across workers).
LOCAL = CollectorRegistry(auto_describe=True)

REQUESTS = Counter(
    "django_http_requests",
    "HTTP requests answered, by URL pattern name, method and status class.",
    ["view", "method", "status"],
    registry=LOCAL,
)
LATENCY = Histogram(
    "django_http_request_duration_seconds",
    "How long requests took, by URL pattern name and method.",
    ["view", "method"],
    buckets=LATENCY_BUCKETS,
    registry=LOCAL,
)
QUERIES = Histogram(
    "django_db_queries_per_request",
    "SQL statements one request ran, by URL pattern name.",
    ["view"],
    buckets=QUERY_BUCKETS,
    registry=LOCAL,
)
QUERY_SECONDS = Counter(
    "django_db_query_duration_seconds",
    "Time spent in SQL statements during requests, by URL pattern name.",
    ["view"],
    registry=LOCAL,
)
DB_ERRORS = Counter(
    "django_db_errors",
    "SQL statements of a request that raised, by error class (OperationalError: connection lost or refused).",
    ["error"],
    registry=LOCAL,
)

# Django's database error classes (PEP 249's), each shown from 0 so rate() and the alert have a series.
for _error in (
    "DatabaseError",
    "DataError",
    "OperationalError",
    "IntegrityError",
    "InternalError",
    "ProgrammingError",
    "NotSupportedError",
    "InterfaceError",
):
    DB_ERRORS.labels(error=_error)


def view_label(request: HttpRequest) -> str:
    """The matched URL pattern's name (namespaced), never the path: bounded whatever the URL held."""
    match = getattr(request, "resolver_match", None)
    if match is None:
        return UNMATCHED
    # view_name is "namespace:name", or the view's dotted path for an unnamed pattern: both fixed in code.
    return match.view_name or UNMATCHED


def status_class(status_code: int) -> str:
    return f"{status_code // 100}xx" if 100 <= status_code < 600 else "other"


class _QueryTally:
    """A connection execute_wrapper: counts and times this request's statements, and counts their errors."""

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0

    def __call__(self, execute, sql, params, many, context):
        start = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        except DatabaseError as exc:
            # Django's own classes (OperationalError, IntegrityError ...): a fixed, small set of names.
            DB_ERRORS.labels(error=type(exc).__name__).inc()
            raise
        finally:
            self.count += 1
            self.seconds += time.perf_counter() - start


class RequestMetricsMiddleware:
    """First in MIDDLEWARE: it sees every answer, the 413s and 503s of the middleware after it included."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        tally = _QueryTally()
        start = time.perf_counter()
        with connections["default"].execute_wrapper(tally):
            response = self.get_response(request)
        elapsed = time.perf_counter() - start
        view = view_label(request)
        method = request.method if request.method in METHODS else "other"
        REQUESTS.labels(view=view, method=method, status=status_class(response.status_code)).inc()
        LATENCY.labels(view=view, method=method).observe(elapsed)
        QUERIES.labels(view=view).observe(tally.count)
        QUERY_SECONDS.labels(view=view).inc(tally.seconds)
        return response


def process_metrics_render() -> bytes:
    """This host's request numbers: every worker's when PROMETHEUS_MULTIPROC_DIR is set, else this process's."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(LOCAL)
