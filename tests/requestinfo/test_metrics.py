"""/metrics' request and database numbers (requestinfo/metrics.py): by URL pattern name, never the path.

Known requests are made through the whole middleware stack, then /metrics is
scraped and read back with prometheus-client's parser. The numbers are the
process's since it started, so each test compares two scrapes.
"""

from __future__ import annotations

from collections import Counter

import pytest
from django.db import OperationalError, connection
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from prometheus_client.parser import text_string_to_metric_families

from requestinfo import metrics as request_metrics

TOKEN = "metrics-token-for-request-tests-5c6d"
LINK_TOKEN = "Zq8LinkTokenThatIsNotStoredAnywhere0123456789ab"
FAMILIES = (
    "django_http_requests",
    "django_http_request_duration_seconds",
    "django_db_queries_per_request",
    "django_db_query_duration_seconds",
    "django_db_errors",
)


@pytest.fixture
def scrape(client, settings):
    settings.METRICS_TOKEN = TOKEN

    def get() -> list:
        response = client.get(reverse("metrics"), headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status_code == 200
        return [
            sample
            for family in text_string_to_metric_families(response.content.decode())
            if family.name in FAMILIES
            for sample in family.samples
        ]

    return get


def _totals(samples, name: str) -> Counter:
    return Counter({tuple(sorted(s.labels.items())): s.value for s in samples if s.name == name})


def _requests(view: str, method: str, status: str) -> tuple:
    return tuple(sorted({"view": view, "method": method, "status": status}.items()))


def _pattern_names(resolver=None, namespace: str = "") -> set[str]:
    """Every view label a matched request can carry: namespaced pattern names, or an unnamed view's path."""
    names = set()
    for pattern in (resolver or get_resolver()).url_patterns:
        if isinstance(pattern, URLResolver):
            inner = f"{namespace}{pattern.namespace}:" if pattern.namespace else namespace
            names |= _pattern_names(pattern, inner)
        elif isinstance(pattern, URLPattern):
            if pattern.name:
                names.add(f"{namespace}{pattern.name}")
            else:  # ResolverMatch.view_name: the class-based view's path, or the function's module and __name__
                callback = getattr(pattern.callback, "view_class", pattern.callback)
                names |= {f"{namespace}{pattern.lookup_str}", f"{namespace}{callback.__module__}.{callback.__name__}"}
    return names


def test_known_requests_are_counted_by_route_name_method_and_status_class(client, scrape, db):
    before = _totals(scrape(), "django_http_requests_total")
    client.get(reverse("healthz"))
    client.get(reverse("healthz"))
    client.post(reverse("healthz"))  # GET only: 405
    client.get(reverse("metrics"))  # no token: 401
    client.get(f"/k/{LINK_TOKEN}/")  # a link nobody made: the page says so (404)
    client.get("/no/such/page/")  # matches no pattern
    after = _totals(scrape(), "django_http_requests_total")

    delta = after - before
    healthz_status = "2xx" if client.get(reverse("healthz")).status_code == 200 else "5xx"
    assert delta[_requests("healthz", "GET", healthz_status)] == 2
    assert delta[_requests("healthz", "POST", "4xx")] == 1
    assert delta[_requests("metrics", "GET", "4xx")] == 1
    assert delta[_requests("metrics", "GET", "2xx")] == 1  # the first scrape, counted once it was answered
    assert delta[_requests("credentials:submit", "GET", "4xx")] == 1
    assert delta[_requests(request_metrics.UNMATCHED, "GET", "4xx")] == 1
    assert sum(delta.values()) == 7


def test_latency_and_statements_per_request_are_recorded_for_the_route(client, scrape, db):
    view = "credentials:submit"

    def numbers(samples):
        latency = {s.name: s.value for s in samples if s.labels == {"view": view, "method": "GET"}}
        queries = {s.name: s.value for s in samples if s.labels == {"view": view}}
        return Counter(latency), Counter(queries)

    latency_before, queries_before = numbers(scrape())
    captured = []  # Django's CaptureQueriesContext loses a test client's statements (request_started resets them)
    with connection.execute_wrapper(lambda execute, sql, *args: captured.append(sql) or execute(sql, *args)):
        client.get(f"/k/{LINK_TOKEN}/")
    latency_after, queries_after = numbers(scrape())
    latency, queries = latency_after - latency_before, queries_after - queries_before

    assert latency["django_http_request_duration_seconds_count"] == 1
    assert latency["django_http_request_duration_seconds_sum"] > 0
    assert queries["django_db_queries_per_request_count"] == 1
    # The statements the link page ran (looking the token up), as Django's own capture counted them.
    assert queries["django_db_queries_per_request_sum"] == len(captured) > 0
    assert queries["django_db_query_duration_seconds_total"] > 0


def test_no_label_carries_a_path_an_id_a_token_or_a_slug(client, scrape, institution, make_credential):
    key = make_credential(institution)
    client.get(f"/k/{LINK_TOKEN}/")
    client.get(f"/api/v1/institutions/{institution.slug}/key", headers={"Authorization": f"Bearer {LINK_TOKEN}"})
    client.get(f"/admin/credentials/cd2credential/{key.pk}/change/")
    client.get(f"/{institution.slug}/{key.pk}/{LINK_TOKEN}")
    samples = scrape()

    views = {s.labels["view"] for s in samples if "view" in s.labels}
    assert {"credentials:submit", "api:key", request_metrics.UNMATCHED} <= views
    # Every view label is a pattern's name fixed in code: their number does not grow with the data.
    assert views <= _pattern_names() | {request_metrics.UNMATCHED}
    for sample in samples:
        for label in sample.labels.values():
            assert "/" not in label
            assert LINK_TOKEN not in label and institution.slug not in label and str(key.pk) != label
    assert {s.labels["method"] for s in samples if "method" in s.labels} <= request_metrics.METHODS | {"other"}
    assert {s.labels["status"] for s in samples if "status" in s.labels} <= {"1xx", "2xx", "3xx", "4xx", "5xx"}


def test_an_unknown_method_is_counted_as_other_not_as_its_name(client, scrape, db):
    before = _totals(scrape(), "django_http_requests_total")
    client.generic("BREW", reverse("healthz"))
    delta = _totals(scrape(), "django_http_requests_total") - before
    assert [labels for labels in delta if dict(labels)["method"] not in ("GET",)] == [
        _requests("healthz", "other", "4xx")
    ]


def test_a_failed_statement_is_counted_by_its_error_class():
    tally = request_metrics._QueryTally()
    before = request_metrics.DB_ERRORS.labels(error="OperationalError")._value.get()

    def lost_connection(sql, params, many, context):
        raise OperationalError("server closed the connection unexpectedly")

    with pytest.raises(OperationalError):
        tally(lost_connection, "SELECT 1", None, False, {})
    assert request_metrics.DB_ERRORS.labels(error="OperationalError")._value.get() == before + 1
    assert tally.count == 1
