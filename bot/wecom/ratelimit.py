"""Token buckets that keep each WeCom API under its per-minute limit (WECOM.md §9: per corp per
API; going over blocks the API for 60 s with 45009). One bucket per API path; with Redis the
bucket is shared by every process (an atomic Lua script on Redis' own clock), otherwise it is
per process.

Any 60-second window may let through at most ``burst + refill × 60`` calls, so the refill is
set to ``(limit − burst) / 60`` per second: a full burst followed by a minute of steady calls
still stays within the limit. A caller over the rate gets a reservation and sleeps until it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

BURST_SHARE = 10  # a tenth of the per-minute limit may go at once


class RateLimiter(Protocol):
    def acquire(self, api: str) -> float:
        """Take one call's token for ``api``, sleeping if needed; returns the seconds waited."""


def bucket_shape(per_minute: int) -> tuple[float, float]:
    """(burst capacity, refill tokens per second) for a per-minute limit."""
    burst = max(1.0, per_minute / BURST_SHARE)
    return burst, max(per_minute - burst, 1.0) / 60.0


class LocalBuckets:
    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.capacity, self.rate = bucket_shape(per_minute)
        self.clock, self.sleep = clock, sleep
        self._state: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def reserve(self, api: str) -> float:
        with self._lock:
            now = self.clock()
            tokens, stamp = self._state.get(api, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - stamp) * self.rate) - 1
            self._state[api] = (tokens, now)
        return 0.0 if tokens >= 0 else -tokens / self.rate

    def acquire(self, api: str) -> float:
        wait = self.reserve(api)
        if wait > 0:
            self.sleep(wait)
        return wait


# KEYS[1] bucket; ARGV capacity, refill per second. Returns the wait in microseconds.
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
redis.call('EXPIRE', KEYS[1], 120)
if tokens >= 0 then return 0 end
return math.ceil(-tokens / rate * 1000000)
"""


class RedisBuckets:
    def __init__(self, client: Any, per_minute: int, prefix: str,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.capacity, self.rate = bucket_shape(per_minute)
        self.prefix, self.sleep = prefix, sleep
        self._script = client.register_script(_RESERVE)

    def reserve(self, api: str) -> float:
        micros = self._script(keys=[f"{self.prefix}:{api}"], args=[repr(self.capacity), repr(self.rate)])
        return int(micros) / 1_000_000

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
