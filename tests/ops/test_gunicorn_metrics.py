"""A real gunicorn with two workers: /metrics adds up every worker's request numbers (multiprocess mode).

gunicorn.conf.py sets PROMETHEUS_MULTIPROC_DIR (VAR_DIR/prometheus) before
anything imports prometheus_client and empties it when gunicorn starts; each
worker writes its own file there and a scrape answered by either worker
reads them all. Known requests from several threads at once land on both
workers; every scrape must show exactly their number.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography.fernet import Fernet
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.ops.test_gunicorn import CONF, ROOT, _answers, _free_port, _wait_for

TOKEN = "gunicorn-metrics-token-4e5f"
REQUESTS = 40


def _get(port: int, path: str, headers: dict | None = None) -> tuple[int, str]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", headers={"X-Forwarded-Proto": "https", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (loopback)
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""


def _healthz_count(samples) -> float:
    return sum(
        s.value
        for s in samples
        if s.name == "django_http_requests_total" and s.labels["view"] == "healthz" and s.labels["method"] == "GET"
    )


def _per_worker(folder) -> list[float]:
    """Each worker's own count of GET /healthz, read from its multiprocess file."""
    return [
        _healthz_count(m for metric in MultiProcessCollector.merge([str(f)]) for m in metric.samples)
        for f in sorted(folder.glob("counter_*.db"))
    ]


@pytest.mark.e2e
def test_a_scrape_of_either_worker_counts_every_workers_requests_exactly(tmp_path):
    port = _free_port()
    var = tmp_path / "var"
    folder = var / "prometheus"
    folder.mkdir(parents=True)
    (folder / "counter_1.db").write_bytes(b"left by an earlier run")  # emptied at start
    env = {
        **os.environ,
        "DEBUG": "false",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "FERNET_KEYS": Fernet.generate_key().decode(),
        "CLIENT_ID_INDEX_KEY": secrets.token_urlsafe(32),
        "ALLOWED_HOSTS": "127.0.0.1",
        "SITE_URL": "https://registry.example",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "EMAIL_URL": "smtp://127.0.0.1:2525",
        "CELERY_BROKER_URL": "redis://127.0.0.1:6379/15",
        "CACHE_URL": "locmemcache://",
        "VAR_DIR": str(var),
        # The test speaks plain HTTP as the proxy would, saying the client's was HTTPS.
        "BEHIND_TRUSTED_PROXY": "true",
        "METRICS_TOKEN": TOKEN,
        "GUNICORN_ACCESS_LOG": str(tmp_path / "access.log"),
        "GUNICORN_ERROR_LOG": str(tmp_path / "error.log"),
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "migrate", "-v0"], env=env, cwd=ROOT, check=True, timeout=300
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", str(CONF), "--bind", f"127.0.0.1:{port}", "--workers", "2"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(lambda: _answers(port), seconds=30, what="gunicorn to listen")
        # Batches until both workers have served some: the second may still be starting, and
        # either may take a whole batch (the kernel hands connections to whichever accepts first).
        sent = 0
        with ThreadPoolExecutor(max_workers=8) as pool:
            for _ in range(25):
                statuses = list(pool.map(lambda _: _get(port, "/healthz")[0], range(REQUESTS)))
                assert statuses == [200] * REQUESTS
                sent += REQUESTS
                if len([n for n in _per_worker(folder) if n > 0]) == 2:
                    break
        scrapes = []
        for _ in range(4):  # answered by one worker or the other
            status, text = _get(port, "/metrics", {"Authorization": f"Bearer {TOKEN}"})
            assert status == 200
            scrapes.append(_healthz_count(s for f in text_string_to_metric_families(text) for s in f.samples))
    finally:
        server.terminate()
        server.wait(timeout=30)

    assert scrapes == [sent] * 4
    # Each worker wrote its own file, and both served some of the requests.
    assert "counter_1.db" not in [f.name for f in folder.glob("counter_*.db")]
    per_worker = _per_worker(folder)
    assert sum(per_worker) == sent
    assert len([n for n in per_worker if n > 0]) == 2, per_worker
