"""The registry's counters off the hot path: counted in a real Redis, flushed into MetricCount in one statement.

Each test starts a redis-server of its own (tests/outage/servers.py). The
counts must be exact across processes (two other processes count, this one
flushes and scrapes), survive a counting process killed before any flush,
never be counted twice by a flush killed half-way, and a Redis outage must
neither fail the request nor lose its count.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from prometheus_client.parser import text_string_to_metric_families

from api.models import Scope, ServiceAccount
from api.services import api_token_issue
from credentials import metric_buffer
from credentials.models import MetricCount
from credentials.services import metrics
from tests.outage.servers import RedisServer, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "metrics-token-for-buffer-tests-1a2b"
SERVED = metrics._label_text({"outcome": "served"})


@pytest.fixture
def redis_server(settings):
    server = RedisServer()
    if not server.available:
        pytest.skip("redis-server is not installed")
    server.start()
    settings.METRICS_REDIS_URL = server.url()
    metric_buffer.reset()
    yield server
    server.stop()
    metric_buffer.reset()


@pytest.fixture
def scrape(client, settings):
    settings.METRICS_TOKEN = TOKEN

    def get(name: str, **labels) -> float:
        response = client.get(reverse("metrics"), headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status_code == 200
        for family in text_string_to_metric_families(response.content.decode()):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return sample.value
        raise AssertionError(f"{name}{labels} not in the scrape")

    return get


def _row(name: str = metrics.API_KEY_READS, labels: str = SERVED) -> int:
    row = MetricCount.objects.filter(name=name, labels=labels).first()
    return row.count if row else 0


def _counting_process(url: str, n: int, *, then: str = "exit") -> subprocess.Popen:
    """A Django process of its own that counts `n` served API reads into Redis, then exits or waits to be killed."""
    script = textwrap.dedent(
        f"""
        import sys, time, django
        django.setup()
        from django.conf import settings
        settings.METRICS_REDIS_URL = {url!r}
        from credentials.services import metrics
        for _ in range({n}):
            metrics.metric_count(metrics.API_KEY_READS, labels={{"outcome": "served"}})
        metrics.metric_observe(metrics.GATEWAY_SECONDS, 0.2, labels={{"status_class": "2xx"}})
        print("counted", flush=True)
        if {then!r} == "wait":
            time.sleep(600)
        """
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    return subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_two_processes_counts_add_up_exactly_in_the_scrape_of_a_third(redis_server, scrape):
    first, second = _counting_process(redis_server.url(), 150), _counting_process(redis_server.url(), 250)
    for process in (first, second):
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        assert out.strip() == "counted"
    # Nothing reached the database yet: the events cost no row write.
    assert _row() == 0
    assert metric_buffer.waiting()[(metrics.API_KEY_READS, SERVED)] == 400

    assert scrape("cd2_api_key_reads_total", outcome="served") == 400
    assert scrape("cd2_gateway_request_duration_seconds_count", status_class="2xx") == 2
    assert scrape("cd2_gateway_request_duration_seconds_sum", status_class="2xx") == pytest.approx(0.4)
    assert scrape("cd2_gateway_request_duration_seconds_bucket", status_class="2xx", le="0.25") == 2
    assert metric_buffer.waiting() == {}  # all flushed by the scrape
    assert _row() == 400
    # A second scrape adds nothing twice.
    assert scrape("cd2_api_key_reads_total", outcome="served") == 400


def test_a_process_killed_after_counting_loses_none_of_its_counts(redis_server, scrape):
    process = _counting_process(redis_server.url(), 30, then="wait")
    try:
        assert process.stdout.readline().strip() == "counted"
        process.send_signal(signal.SIGKILL)  # before any flush: no chance to hand anything over
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    assert scrape("cd2_api_key_reads_total", outcome="served") == 30


def test_a_flush_killed_after_its_commit_counts_its_batch_once(redis_server):
    for _ in range(5):
        metrics.metric_count(metrics.API_KEY_READS, labels={"outcome": "served"})
    batch = metric_buffer.batch_take()
    metrics._batch_apply(batch)  # committed; the flusher dies before telling Redis
    metric_buffer._redis().delete(metric_buffer.LOCK_KEY)  # its lock runs out
    assert _row() == 5
    metrics.metric_count(metrics.API_KEY_READS, labels={"outcome": "served"})

    metrics.metrics_flush()  # finds the applied batch: drops it without adding it again
    metrics.metrics_flush()  # then the new count
    assert _row() == 6
    assert metric_buffer.waiting() == {}


def test_a_flush_killed_before_its_commit_leaves_the_batch_for_the_next(redis_server):
    for _ in range(4):
        metrics.metric_count(metrics.API_KEY_READS, labels={"outcome": "served"})
    metric_buffer.batch_take()  # taken, then the flusher dies: nothing written
    metric_buffer._redis().delete(metric_buffer.LOCK_KEY)
    metrics.metric_count(metrics.API_KEY_READS, labels={"outcome": "served"})  # waits behind the batch
    assert metrics.metrics_flush() == 1
    assert _row() == 4
    metrics.metrics_flush()
    assert _row() == 5


def test_a_count_waits_for_its_transaction_and_a_rollback_counts_nothing(redis_server):
    with transaction.atomic():
        metrics.metric_count(metrics.API_KEY_READS, labels={"outcome": "served"})
        assert metric_buffer.waiting() == {}  # not before the commit
    assert metric_buffer.waiting() == {(metrics.API_KEY_READS, SERVED): 1}
    with pytest.raises(RuntimeError), transaction.atomic():
        metrics.metric_count(metrics.API_KEY_READS, labels={"outcome": "served"})
        raise RuntimeError("the work failed")
    assert metric_buffer.waiting() == {(metrics.API_KEY_READS, SERVED): 1}


@pytest.fixture
def key_reader(client, institution, make_credential, isolated_cache):
    """GET the institution's key over the API as the pipeline does: (get, url)."""
    make_credential(institution, days=90)
    account = ServiceAccount.objects.create(name="airflow")
    account.institutions.set([institution])
    plaintext = api_token_issue(account=account, scopes=[Scope.KEYS_READ]).plaintext
    url = f"/api/v1/institutions/{institution.slug}/key"
    return lambda url: client.get(url, headers={"Authorization": f"Bearer {plaintext}"}), url


def _key_read_statements(api_get, url) -> tuple[int, list[str]]:
    with CaptureQueriesContext(connection) as captured:
        response = api_get(url)
    assert response.status_code == 200, response.content
    return len(captured), [q["sql"] for q in captured if "credentials_metriccount" in q["sql"]]


def test_an_api_key_read_writes_no_counter_row_with_the_buffer(settings, key_reader, redis_server):
    get, url = key_reader
    settings.METRICS_REDIS_URL = ""
    get(url)  # warm: the counter's row exists, the token's last use is recorded

    without, without_rows = _key_read_statements(get, url)
    settings.METRICS_REDIS_URL = redis_server.url()
    buffered, buffered_rows = _key_read_statements(get, url)

    assert len(without_rows) == 1 and without_rows[0].startswith("UPDATE")  # the row's UPDATE per read
    assert buffered_rows == []
    assert buffered == without - 1
    metrics.metrics_flush()
    assert _row() == 3  # two written at once, one flushed


def test_redis_down_fails_no_request_and_the_rows_take_its_counts(key_reader, redis_server, scrape):
    get, url = key_reader
    assert get(url).status_code == 200  # into Redis
    redis_server.stop()

    for _ in range(3):
        assert get(url).status_code == 200  # the rows take them meanwhile
    assert _row() == 3
    assert scrape("cd2_api_key_reads_total", outcome="served") == 3  # the one in Redis waits, not lost

    redis_server.start()  # an empty Redis, as one restarted without persistence: that count is the bound
    metric_buffer.reset()  # past RETRY_AFTER_SECONDS
    assert get(url).status_code == 200
    wait_until(lambda: metric_buffer.waiting() != {}, what="the count to go to Redis again")
    assert scrape("cd2_api_key_reads_total", outcome="served") == 4
