"""Token buckets that keep each WeCom API under its per-minute and per-hour limits (WECOM.md §9: per
corp per API 10,000/min and 150,000/hour; going over blocks the API for 60 s, or for 60 min after the
hour's limit, with 45009). Two buckets per API path; with Redis they are shared by every process (an
atomic Lua script on Redis' own clock), otherwise they are per process.

Any window of ``W`` seconds may let through at most ``burst + refill × W`` calls, so the refill is
set to ``(limit − burst) / W`` per second: a full burst followed by a window of steady calls still
stays within the limit. A caller over either rate gets a reservation and sleeps until it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

logger = logging.getLogger(__name__)
REDIS_RETRY_SECONDS = 5.0  # after Redis failed to answer, this process's own buckets for this long
BURST_SHARE = 10  # a tenth of a window's limit may go at once
MINUTE, HOUR = 60.0, 3600.0


class RateLimiter(Protocol):
    def acquire(self, api: str) -> float:
        """Take one call's token for ``api``, sleeping if needed; returns the seconds waited."""


def bucket_shape(limit: int, window_seconds: float = MINUTE) -> tuple[float, float]:
    """(burst capacity, refill tokens per second) for a limit per window."""
    burst = max(1.0, limit / BURST_SHARE)
    return burst, max(limit - burst, 1.0) / window_seconds


def shapes(per_minute: int, per_hour: int | None) -> list[tuple[str, float, float]]:
    """(key suffix, capacity, refill per second) of each bucket an API call takes a token from."""
    return [("", *bucket_shape(per_minute, MINUTE))] + (
        [(":hour", *bucket_shape(per_hour, HOUR))] if per_hour else [])


class LocalBuckets:
    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, per_hour: int | None = None) -> None:
        self.shapes = shapes(per_minute, per_hour)
        self.clock, self.sleep = clock, sleep
        self._state: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def reserve(self, api: str) -> float:
        wait = 0.0
        with self._lock:
            now = self.clock()
            for suffix, capacity, rate in self.shapes:
                tokens, stamp = self._state.get(api + suffix, (capacity, now))
                tokens = min(capacity, tokens + (now - stamp) * rate) - 1
                self._state[api + suffix] = (tokens, now)
                wait = max(wait, 0.0 if tokens >= 0 else -tokens / rate)
        return wait

    def acquire(self, api: str) -> float:
        wait = self.reserve(api)
        if wait > 0:
            self.sleep(wait)
        return wait


# KEYS[1] bucket; ARGV capacity, refill per second, seconds to keep an idle bucket. Returns the wait in
# microseconds.
_RESERVE = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or capacity
local stamp = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + (now - stamp) * rate) - 1
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
if tokens >= 0 then return 0 end
return math.ceil(-tokens / rate * 1000000)
"""


class RedisBuckets:
    """Shared buckets; while Redis does not answer, this process's own (a call is never refused or
    failed for Redis being away: the inbox and the sender go on in-process, as the docs promise)."""

    def __init__(self, client: Any, per_minute: int, prefix: str,
                 sleep: Callable[[float], None] = time.sleep, per_hour: int | None = None) -> None:
        self.shapes = shapes(per_minute, per_hour)
        self.prefix, self.sleep = prefix, sleep
        self._script = client.register_script(_RESERVE)
        self._local = LocalBuckets(per_minute, sleep=sleep, per_hour=per_hour)
        self._away, self._retry_at = False, 0.0

    def reserve(self, api: str) -> float:
        from redis.exceptions import RedisError

        if time.monotonic() < self._retry_at:  # not a timeout per call while Redis is away
            return self._local.reserve(api)
        micros = 0
        try:
            for suffix, capacity, rate in self.shapes:
                keep = int(capacity / rate) + 60  # an idle bucket is full again by then
                micros = max(micros, int(self._script(keys=[f"{self.prefix}:{api}{suffix}"],
                                                      args=[repr(capacity), repr(rate), keep])))
        except RedisError as exc:
            if not self._away:
                logger.warning("rate limit buckets: Redis unreachable (%s); this process keeps its own "
                               "until it is back", type(exc).__name__)
            self._away, self._retry_at = True, time.monotonic() + REDIS_RETRY_SECONDS
            return self._local.reserve(api)
        if self._away:
            logger.warning("rate limit buckets: Redis reachable again; buckets shared again")
        self._away = False
        return micros / 1_000_000

    def acquire(self, api: str) -> float:
        wait = self.reserve(api)
        if wait > 0:
            self.sleep(wait)
        return wait


def api_path(url_or_endpoint: str, base_url: str) -> str:
    """``https://qyapi…/cgi-bin/externalcontact/get?x=1`` → ``externalcontact/get``."""
    path = url_or_endpoint.split("?", 1)[0]
    if path.startswith(base_url):
        path = path[len(base_url):]
    return path.strip("/")
