"""The rate limits' Redis cache (edpotential/cache.py) with Redis down: callers get their defaults, Redis is skipped.

Against a loopback port where nothing listens; the doors with a real
redis-server stopped and started are tests/outage/test_redis_cache.py.
"""

from __future__ import annotations

import logging

import pytest
from redis.connection import Connection

from edpotential.cache import FailOpenRedisCache
from tests.outage.servers import free_port, wait_until


@pytest.fixture
def dead_cache():
    return FailOpenRedisCache(
        f"redis://127.0.0.1:{free_port()}/0", {"OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1}}
    )


@pytest.fixture
def connects(monkeypatch):
    """How many times the cache tried to reach Redis."""
    attempts = []
    original = Connection.connect

    def counted(self):
        attempts.append(1)
        return original(self)

    monkeypatch.setattr(Connection, "connect", counted)
    return attempts


def test_reads_answer_the_callers_default_and_writes_are_dropped(dead_cache):
    assert dead_cache.get("history", []) == []  # DRF's throttle calls len() on it
    assert dead_cache.get("history", default=0) == 0
    assert dead_cache.get("history") is None
    assert dead_cache.get_many(["a", "b"]) == {}
    assert dead_cache.add("n", 1) is False
    assert dead_cache.incr("n") is None
    assert dead_cache.get_or_set("x", 5) == 5
    assert dead_cache.has_key("x") is False
    assert dead_cache.is_available() is False


def test_after_a_failure_redis_is_skipped_for_a_while_and_the_outage_is_logged_once(dead_cache, connects, caplog):
    caplog.set_level(logging.WARNING, logger="edpotential.cache")
    dead_cache.get("a")
    tried = len(connects)
    assert tried >= 1
    for _ in range(20):  # a busy request's counters
        assert dead_cache.add("n", 1) is False
    assert len(connects) == tried  # not asked again within RETRY_AFTER_SECONDS
    assert [r.getMessage() for r in caplog.records].count(
        "Cache unavailable (ConnectionError during get): rate limits are off until Redis answers again"
    ) == 1


def test_once_the_pause_is_over_redis_is_asked_again(dead_cache, connects, monkeypatch):
    monkeypatch.setattr(FailOpenRedisCache, "RETRY_AFTER_SECONDS", 0.05)
    dead_cache.get("a")
    tried = len(connects)

    def asked_again() -> bool:
        dead_cache.get("a")
        return len(connects) > tried

    wait_until(asked_again, timeout=5, what="the cache to ask Redis again")
