"""A Redis cache that degrades instead of failing when Redis is down.

The cache holds only rate-limit counters (settings, CACHES). If Redis goes
away, a customer handing us a key and a pipeline reading one must still be
able to: reads answer what the caller gave as the default ("not cached"),
writes are dropped, and the rate limits let the request through
(django-ratelimit with RATELIMIT_FAIL_OPEN, DRF's throttles on an empty
history). Submission links carry 256-bit tokens and API tokens 256 bits, so
an hour without rate limits does not make them guessable (SECURITY.md).

After a failure the cache stops asking Redis for RETRY_AFTER_SECONDS: a
Redis host that drops packets would otherwise cost every request its
connect timeout once per counter (a submission counts three). One warning is
logged per outage, not one per call; the first call that reaches Redis
again ends it. The outage table in docs/RUNBOOK.md says what each door does
meanwhile (tests/outage/test_redis_cache.py stops a real redis-server).
"""

from __future__ import annotations

import logging
import threading
import time

from django.core.cache.backends.redis import RedisCache
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = logging.getLogger(__name__)

_DOWN = (RedisConnectionError, RedisTimeoutError)


def _caller_default(args: tuple, kwargs: dict):
    """The `default` a caller passed to get(key, default=None, version=None)."""
    if "default" in kwargs:
        return kwargs["default"]
    return args[1] if len(args) > 1 else None


def _degrade(method, fallback):
    """`method`, answering fallback(args, kwargs) instead of raising while Redis is down."""

    def wrapped(self, *args, **kwargs):
        if self._skipping():
            return fallback(args, kwargs)
        try:
            result = method(self, *args, **kwargs)
        except _DOWN as exc:
            self._went_down(exc, method.__name__)
            return fallback(args, kwargs)
        self._came_back()
        return result

    wrapped.__name__ = wrapped.__qualname__ = method.__name__
    wrapped.__doc__ = method.__doc__
    return wrapped


def _constant(value):
    return lambda args, kwargs: value() if callable(value) else value


class FailOpenRedisCache(RedisCache):
    # How long after a failure the cache answers without asking Redis.
    RETRY_AFTER_SECONDS = 5.0

    def __init__(self, server, params) -> None:
        super().__init__(server, params)
        self._down_until = 0.0  # time.monotonic() before which Redis is not asked
        self._down = False
        self._lock = threading.Lock()

    def _skipping(self) -> bool:
        return self._down and time.monotonic() < self._down_until

    def _went_down(self, exc: Exception, operation: str) -> None:
        with self._lock:
            first = not self._down
            self._down = True
            self._down_until = time.monotonic() + self.RETRY_AFTER_SECONDS
        if first:
            logger.warning(
                "Cache unavailable (%s during %s): rate limits are off until Redis answers again",
                type(exc).__name__,
                operation,
            )

    def _came_back(self) -> None:
        if self._down:
            with self._lock:
                self._down = False
            logger.warning("Cache available again: rate limits count again")

    def is_available(self) -> bool:
        """Redis answers a PING now (for /healthz; asks even while the cache is skipping Redis)."""
        try:
            return bool(self._cache.get_client(write=False).ping())
        except _DOWN:
            return False

    # What each operation answers while Redis is down: a read finds nothing
    # (the caller's default), a write did not happen.
    get = _degrade(RedisCache.get, _caller_default)
    get_many = _degrade(RedisCache.get_many, _constant(dict))
    has_key = _degrade(RedisCache.has_key, _constant(False))
    add = _degrade(RedisCache.add, _constant(False))
    set = _degrade(RedisCache.set, _constant(None))
    set_many = _degrade(RedisCache.set_many, _constant(list))
    touch = _degrade(RedisCache.touch, _constant(False))
    incr = _degrade(RedisCache.incr, _constant(None))
    delete = _degrade(RedisCache.delete, _constant(False))
    delete_many = _degrade(RedisCache.delete_many, _constant(None))
    clear = _degrade(RedisCache.clear, _constant(False))
