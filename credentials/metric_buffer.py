"""Where the registry's counters wait between an event and its MetricCount row: one Redis hash.

Why: each counted event used to be an UPDATE of its MetricCount row in the
caller's transaction (three per key check, one per API key read). Every
API read of every gunicorn worker then waited for the same row's lock
until its transaction ended. Here an event is one Redis round trip
(HINCRBY, and HINCRBYFLOAT for a histogram's sum) and the rows are written
by a flush, in one statement per batch (credentials.services.metrics).

What can be lost, and when (docs/RUNBOOK.md, "How the registry's counters reach the database"):
- A process killed after an event is counted loses nothing: the count is in
  Redis once HINCRBY returns, whichever process flushes it.
- A flush killed at any point loses nothing and counts nothing twice: the
  batch keeps its id in Redis until the rows record it as applied.
- Redis restarted without persistence loses the counts of at most one flush
  period (a minute, or less when Prometheus scrapes more often).
- Redis down: the caller writes the row itself, as before (no loss); after a
  failure Redis is not asked again for RETRY_AFTER_SECONDS, so an outage
  costs one connect timeout per process, not one per event.

The client is redis-py with short timeouts; nothing here raises to the
caller's work.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from dataclasses import dataclass

import redis
from django.conf import settings
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

PENDING_KEY = "cd2:metrics:pending"
# The batch being flushed: the pending hash renamed, with its id in the field BATCH_ID_FIELD.
FLUSHING_KEY = "cd2:metrics:flushing"
LOCK_KEY = "cd2:metrics:flush-lock"
BATCH_ID_FIELD = "\nid"  # no counter's field holds a newline (label values may not)
# A flush holds its lock at most this long (a stalled one: the next takes over and the marker stops a repeat).
LOCK_SECONDS = 60
# After a failure, Redis is not asked again for this long (as edpotential/cache.py does for the cache).
RETRY_AFTER_SECONDS = 5.0
# Timeouts short enough that a Redis host dropping packets costs a request little.
CONNECT_TIMEOUT = 0.25
SOCKET_TIMEOUT = 0.5

# Take a batch: the batch left by a killed flush if there is one, else the pending hash renamed under a new id.
_TAKE = """
if redis.call('EXISTS', KEYS[2]) == 0 then
  if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
  redis.call('RENAME', KEYS[1], KEYS[2])
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
end
return redis.call('HGETALL', KEYS[2])
"""
# Drop a batch once applied, only if it is still the one of that id; then free the lock if still ours.
_DONE = """
if ARGV[1] ~= '' and redis.call('HGET', KEYS[1], ARGV[2]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
return 0
"""


class BufferUnavailable(Exception):
    """Redis did not answer (or is being left alone after a failure)."""


@dataclass(frozen=True)
class Batch:
    batch_id: str
    lock: str  # the flush's own lock value
    counts: dict[tuple[str, str], tuple[int, float]]  # (name, labels) -> (count, total)


_lock = threading.Lock()
_client: redis.Redis | None = None
_client_url = ""
_down_until = 0.0


def configured() -> bool:
    return bool(settings.METRICS_REDIS_URL)


def _redis() -> redis.Redis:
    global _client, _client_url
    url = settings.METRICS_REDIS_URL
    if time.monotonic() < _down_until:
        raise BufferUnavailable("Redis failed a moment ago")
    with _lock:
        if _client is None or _client_url != url:
            _client = redis.Redis.from_url(
                url, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=SOCKET_TIMEOUT, decode_responses=True
            )
            _client_url = url
        return _client


def _went_down(exc: Exception) -> None:
    global _down_until
    if time.monotonic() >= _down_until:
        logger.warning("Metric counts go to the database while Redis is unreachable: %s", type(exc).__name__)
    _down_until = time.monotonic() + RETRY_AFTER_SECONDS


def reset() -> None:
    """Forget the client and any outage (tests; a setting changed)."""
    global _client, _down_until
    with _lock:
        _client, _down_until = None, 0.0


def _field(name: str, labels: str, part: str) -> str:
    return f"{name}\n{labels}\n{part}"


def add(*, name: str, labels: str, count: int, total: float = 0.0) -> bool:
    """Add to a counter in Redis; False when Redis is unavailable (the caller writes the row instead)."""
    try:
        client = _redis()
        with client.pipeline(transaction=False) as pipe:
            pipe.hincrby(PENDING_KEY, _field(name, labels, "c"), count)
            if total:
                pipe.hincrbyfloat(PENDING_KEY, _field(name, labels, "t"), total)
            pipe.execute()
    except (BufferUnavailable, RedisError, OSError) as exc:
        if not isinstance(exc, BufferUnavailable):
            _went_down(exc)
        return False
    return True


def batch_take() -> Batch | None:
    """The next batch to apply, holding the flush lock (None: nothing waits, or another flush holds the lock)."""
    token = secrets.token_hex(8)
    try:
        client = _redis()
        if not client.set(LOCK_KEY, token, nx=True, ex=LOCK_SECONDS):
            return None
        raw = client.eval(_TAKE, 2, PENDING_KEY, FLUSHING_KEY, token, BATCH_ID_FIELD)
    except (RedisError, OSError) as exc:
        _went_down(exc)
        raise BufferUnavailable(type(exc).__name__) from None
    fields = dict(zip(raw[::2], raw[1::2], strict=True))
    batch_id = fields.pop(BATCH_ID_FIELD, "")
    counts: dict[tuple[str, str], tuple[int, float]] = {}
    for field, value in fields.items():
        name, labels, part = field.split("\n")
        count, total = counts.get((name, labels), (0, 0.0))
        if part == "c":
            count += int(value)
        else:
            total += float(value)
        counts[(name, labels)] = (count, total)
    batch = Batch(batch_id=batch_id, lock=token, counts=counts)
    if not batch_id:  # nothing waited
        batch_release(batch)
        return None
    return batch


def batch_release(batch: Batch, *, applied: bool = False) -> None:
    """Free the flush lock, and drop the batch from Redis if it was applied."""
    try:
        _redis().eval(_DONE, 2, FLUSHING_KEY, LOCK_KEY, batch.batch_id if applied else "", BATCH_ID_FIELD, batch.lock)
    except (BufferUnavailable, RedisError, OSError) as exc:
        if not isinstance(exc, BufferUnavailable):
            _went_down(exc)
        raise BufferUnavailable(type(exc).__name__) from None


def waiting() -> dict[tuple[str, str], int]:
    """The counts not flushed yet (tests and the runbook's check): (name, labels) -> count."""
    client = _redis()
    found: dict[tuple[str, str], int] = {}
    for key in (PENDING_KEY, FLUSHING_KEY):
        for field, value in client.hgetall(key).items():
            if field == BATCH_ID_FIELD:
                continue
            name, labels, part = field.split("\n")
            if part == "c":
                found[(name, labels)] = found.get((name, labels), 0) + int(value)
    return found
