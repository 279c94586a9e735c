"""Token buckets per WeCom API: a burst, then a steady rate that keeps any minute within the
limit; shared through Redis by several processes; every client call takes a token."""

from __future__ import annotations

import os
from typing import Any

import pytest

from bot.startup import load_settings
from bot.wecom.client import build_clients
from bot.wecom.ratelimit import LocalBuckets, RedisBuckets, api_path, bucket_shape
from tests.support import REDIS_URL, secret_for


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_any_minute_stays_within_the_limit():
    clock = FakeClock()
    buckets = LocalBuckets(600, clock=clock, sleep=clock.sleep)
    burst, rate = bucket_shape(600)
    assert (burst, rate) == (60, 9)
    stamps = []
    for _ in range(2000):
        buckets.acquire("externalcontact/get")
        stamps.append(clock.now)
    assert stamps[59] == 0 and stamps[60] > 0  # the burst goes at once, then calls are paced
    for i, start in enumerate(stamps):  # sliding 60-second windows
        inside = sum(1 for t in stamps[i:i + 700] if t < start + 60)
        assert inside <= 600
    assert buckets.acquire("kf/send_msg") == 0  # another API has its own bucket


def sliding_counts(stamps: list[float], window: float) -> int:
    """The most calls any window of this many seconds holds."""
    most, first = 0, 0
    for last, stamp in enumerate(stamps):
        while stamps[first] <= stamp - window:
            first += 1
        most = max(most, last - first + 1)
    return most


def test_any_hour_stays_within_the_hourly_limit_too():
    """WeCom's 150,000/hour per API (a 60-minute block past it) binds long before 10,000/min does."""
    clock = FakeClock()
    buckets = LocalBuckets(600, clock=clock, sleep=clock.sleep, per_hour=1200)
    stamps = []
    for _ in range(3000):
        buckets.acquire("externalcontact/batch/get_by_user")
        stamps.append(clock.now)
    assert sliding_counts(stamps, 3600) <= 1200 and sliding_counts(stamps, 60) <= 600
    assert stamps[-1] > 2 * 3600  # paced by the hour, not by the minute (3,000 calls at 9/s: 5 minutes)


def test_api_path_is_the_endpoint():
    assert api_path("https://qyapi.weixin.qq.com/cgi-bin/externalcontact/get?external_userid=x",
                    "https://qyapi.weixin.qq.com/cgi-bin/") == "externalcontact/get"
    assert api_path("kf/sync_msg", "https://qyapi.weixin.qq.com/cgi-bin/") == "kf/sync_msg"


class Recorder:
    def __init__(self) -> None:
        self.apis: list[str] = []

    def acquire(self, api: str) -> float:
        self.apis.append(api)
        return 0.0


def seeded_settings(corp, sandbox, **more: dict) -> Any:
    import requests

    requests.post(f"{sandbox.url}/_sandbox/seed", json={"staff": [{"userid": "zhangsan"}], "contacts": [
        {"userid": "zhangsan", "external_userid": "wmA", "name": "A"}]}, timeout=10).raise_for_status()
    return load_settings(overrides={"wecom": {
        "corp_id": corp.corp_id, "secret": secret_for(corp, "app"), "contact_secret": secret_for(corp, "contact"),
        "api_base_url": f"{sandbox.url}/cgi-bin/"}, **more}, environ={})


def test_with_redis_away_wecom_calls_keep_working_on_this_processs_token_and_buckets(corp, sandbox, caplog):
    """The docs promise the inbox and the sender go on in-process while Redis is down: every event failed
    with ConnectionError instead, from the token cache and the buckets."""
    import logging

    settings = seeded_settings(corp, sandbox, redis={"url": "redis://127.0.0.1:1/0"})
    clients = build_clients(settings)
    with caplog.at_level(logging.WARNING):
        assert clients.contact.external_contact.get("wmA")["external_contact"]["name"] == "A"
        assert clients.contact.external_contact.get("wmA")["external_contact"]["name"] == "A"
    assert any("Redis unreachable" in r.getMessage() for r in caplog.records)


def test_every_client_call_takes_a_token(corp, sandbox):
    settings = seeded_settings(corp, sandbox)
    recorder = Recorder()
    clients = build_clients(settings, limiter=recorder)
    clients.contact.external_contact.get("wmA")
    clients.contact.external_contact.get_follow_user_list()
    assert recorder.apis == ["externalcontact/get", "externalcontact/get_follow_user_list"]


@pytest.mark.skipif(not REDIS_URL, reason="SCRM_TEST_REDIS_URL not set (CI sets it)")
def test_processes_share_one_bucket_through_redis():
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    prefix = "scrmtest:ratelimit:" + os.urandom(4).hex()
    slept: list[float] = []
    first = RedisBuckets(client, 600, prefix, sleep=slept.append)
    second = RedisBuckets(client, 600, prefix, sleep=slept.append)
    try:
        waits = [(first if i % 2 else second).reserve("externalcontact/get") for i in range(70)]
        assert waits[:60] == [0] * 60  # one burst of 60 between the two of them
        assert all(w > 0 for w in waits[61:]) and waits[-1] > waits[61]
        assert 0.9 < waits[-1] < 1.2  # ten calls over the burst at 9 per second
        assert first.reserve("kf/send_msg") == 0
        hourly = RedisBuckets(client, 600, prefix + "h", sleep=slept.append, per_hour=100)  # a burst of 10
        assert [hourly.reserve("kf/sync_msg") for _ in range(10)] == [0] * 10
        assert hourly.reserve("kf/sync_msg") > 30  # the 11th waits for the hour's bucket (0.025 per second)
        assert 0 < client.ttl(f"{prefix}h:kf/sync_msg:hour") <= 3660 and client.ttl(f"{prefix}h:kf/sync_msg") <= 60 + 7
    finally:
        for key in client.keys(f"{prefix}*"):
            client.delete(key)
        client.close()
