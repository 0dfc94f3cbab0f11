"""A Redis cache that degrades instead of failing when Redis is down.

The cache holds only rate-limit counters (settings, CACHES). If Redis goes
away, a customer handing us a key must still be able to: reads answer "not
cached" and writes are dropped, with a warning in the log, and
django-ratelimit (RATELIMIT_FAIL_OPEN) lets the request through. Submission
links carry 256-bit tokens, so an hour without rate limits does not make
them guessable.
"""

from __future__ import annotations

import functools
import logging

from django.core.cache.backends.redis import RedisCache
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = logging.getLogger(__name__)

_DOWN = (RedisConnectionError, RedisTimeoutError)


def _degrade(default):
    def wrap(method):
        @functools.wraps(method)
        def wrapped(self, *args, **kwargs):
            try:
                return method(self, *args, **kwargs)
            except _DOWN as exc:
                logger.warning("Cache unavailable (%s): %s skipped", type(exc).__name__, method.__name__)
                return default

        return wrapped

    return wrap


class FailOpenRedisCache(RedisCache):
    add = _degrade(False)(RedisCache.add)
    get = _degrade(None)(RedisCache.get)
    set = _degrade(None)(RedisCache.set)
    incr = _degrade(None)(RedisCache.incr)
    delete = _degrade(False)(RedisCache.delete)
    get_many = _degrade({})(RedisCache.get_many)
    touch = _degrade(False)(RedisCache.touch)
