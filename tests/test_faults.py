"""Faults around the scale-out pieces, without servers: two schedulers sharing one Redis lock (an
in-memory Redis with Lua), and WeCom refusing a send as busy (45009, -1) or with a rejected token
(40014, 42001): the bot backs off or refreshes, and the customer gets the message exactly once."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest
import redis
import requests
from sqlalchemy import select

from bot.core.db import Database
from bot.models import OutboxMessage
from bot.schedule.scheduler import JOBS, SchedulerService
from bot.startup import load_settings

# ---------------------------------------------------------------- two schedulers, one lock


@pytest.fixture
def shared_redis(monkeypatch) -> fakeredis.FakeServer:
    """Every redis.Redis.from_url in this test talks to one in-memory server."""
    server = fakeredis.FakeServer()
    monkeypatch.setattr(redis.Redis, "from_url", classmethod(lambda cls, url, **kw: fakeredis.FakeRedis(server=server)))
    return server


def test_of_two_schedulers_one_runs_the_jobs_and_the_other_takes_over_only_when_the_lock_lapses(
        database_url, shared_redis):
    settings = load_settings(overrides={"database": {"url": database_url},
                                        "redis": {"url": "redis://scheduler-lock-test/0", "key_prefix": "f"},
                                        "scheduler": {"lock_seconds": 30}}, environ={})
    db = Database(settings.database)
    first, second = SchedulerService(settings, db), SchedulerService(settings, db)
    try:
        for _ in range(3):  # the holder renews; the other stands by
            first.tick()
            second.tick()
            assert (first.active, second.active) == (True, False)
        assert len(first.scheduler.get_jobs()) == len(JOBS) and second.scheduler is None

        # The holder hangs (stops renewing) and its lock expires: the standby takes over, and the
        # old holder stands down at its next round instead of running jobs beside it.
        fakeredis.FakeRedis(server=shared_redis).delete("f:scheduler:lock")
        second.tick()
        first.tick()
        assert (first.active, second.active) == (False, True)
    finally:
        first.stop()
        second.stop()
        db.dispose()


def test_a_scheduler_that_stands_down_leaves_the_shared_engine_to_the_others(database_url, shared_redis):
    """The job store shares the app's engine: standing down (lock lost) or stopping must not dispose
    it under the request threads, whose connections would go back to a discarded pool."""
    settings = load_settings(overrides={"database": {"url": database_url},
                                        "redis": {"url": "redis://scheduler-lock-test/0", "key_prefix": "g"},
                                        "scheduler": {"lock_seconds": 30}}, environ={})
    db = Database(settings.database)
    service = SchedulerService(settings, db)
    try:
        service.tick()
        assert service.active
        pool = db.engine.pool
        held = db.engine.connect()  # a request thread's, across the hand-over
        fakeredis.FakeRedis(server=shared_redis).delete("g:scheduler:lock")
        fakeredis.FakeRedis(server=shared_redis).set("g:scheduler:lock", "another-process")
        service.tick()
        assert not service.active
        held.close()
        assert db.engine.pool is pool and pool.checkedin() >= 1
    finally:
        service.stop()
        db.dispose()


# ---------------------------------------------------------------- WeCom refusing a send


def control(sandbox, path: str, payload: dict[str, Any]) -> None:
    requests.post(f"{sandbox.url}/_sandbox/{path}", json=payload, timeout=30).raise_for_status()


def read(sandbox, what: str, **params: Any) -> Any:
    response = requests.get(f"{sandbox.url}/_sandbox/{what}", params=params, timeout=10)
    response.raise_for_status()
    return response.json()


@pytest.mark.parametrize(("errcode", "times", "calls"), [(45009, 2, 3), (-1, 2, 3), (40014, 1, 2), (42001, 1, 2)])
def test_a_kf_reply_refused_as_busy_or_for_its_token_reaches_the_customer_once(wired, sandbox, errcode, times, calls):
    control(sandbox, "seed", {"staff": [{"userid": "zhangsan", "name": "张三"}],
                              "kf_accounts": [{"open_kfid": "wkSHOP", "name": "官方客服"}]})
    control(sandbox, "faults", {"path": "kf/send_msg", "errcode": errcode, "count": times})
    control(sandbox, "kf/text", {"open_kfid": "wkSHOP", "external_userid": "wmBUSY", "contents": ["多少钱"]})

    assert dict(wired.extensions["scrm.processor"].drain()) == {"handled": 1}
    wired.extensions["scrm.processor"].sender.send_due()  # a sweep afterwards sends nothing more

    assert len([m for m in read(sandbox, "sent")["kf"] if m["touser"] == "wmBUSY"]) == 1
    sends = read(sandbox, "calls", path="kf/send_msg")
    assert [c["errcode"] for c in sends] == [errcode] * times + [0] and len(sends) == calls
    with wired.extensions["scrm.db"].sessions() as session:
        [row] = session.scalars(select(OutboxMessage)).all()
    assert (row.status, row.attempts) == ("sent", 1)
