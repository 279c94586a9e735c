"""Faults around the scale-out pieces, without servers: two schedulers sharing one Redis lock (an
in-memory Redis with Lua), and WeCom refusing a send as busy (-1), over its frequency limit (45009) or
with a rejected token (40014, 42001): the bot backs off, waits out the block or refreshes, and the
customer gets the message exactly once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import fakeredis
import pytest
import redis
import requests
from sqlalchemy import select

from bot.core.db import Database
from bot.models import OutboxMessage, utcnow
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


def test_without_redis_a_second_scheduler_stands_by_on_the_databases_lease(database_url):
    """`scrm serve` (a scheduler in-process) and `scrm scheduler` on one database without Redis: both ran
    every job (each greeting and broadcast planned and submitted twice)."""
    from sqlalchemy import update

    from bot.models import SchedulerLease

    settings = load_settings(overrides={"database": {"url": database_url}, "scheduler": {"lock_seconds": 30}},
                             environ={})
    db = Database(settings.database)
    first, second = SchedulerService(settings, db).start(), SchedulerService(settings, db).start()
    try:
        assert (first.active, second.active) == (True, False)
        first.tick()
        second.tick()
        assert (first.active, second.active) == (True, False)
        with db.begin() as s:  # the holder hangs or dies: its lease runs out
            s.execute(update(SchedulerLease).values(expires_at=datetime(2000, 1, 1, tzinfo=UTC)))
        second.tick()
        first.tick()
        assert (first.active, second.active) == (False, True)
        second.stop()  # gives the lease back: the next to ask takes it at once
        first.tick()
        assert first.active
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


@pytest.mark.parametrize(("errcode", "times", "calls"), [(-1, 2, 3), (40014, 1, 2), (42001, 1, 2)])
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


def test_a_kf_reply_over_the_frequency_limit_waits_out_the_block_and_reaches_the_customer_once(wired, sandbox):
    """45009 blocks the API for a minute (WECOM.md §9): retrying within seconds is refused again and holds
    the worker, whose next welcome has 20 s. The row waits out the minute instead, then is sent once."""
    control(sandbox, "seed", {"staff": [{"userid": "zhangsan", "name": "张三"}],
                              "kf_accounts": [{"open_kfid": "wkSHOP", "name": "官方客服"}]})
    control(sandbox, "faults", {"path": "kf/send_msg", "errcode": 45009, "count": 2})
    control(sandbox, "kf/text", {"open_kfid": "wkSHOP", "external_userid": "wmBUSY", "contents": ["多少钱"]})
    processor = wired.extensions["scrm.processor"]
    sender, db = processor.sender, wired.extensions["scrm.db"]

    assert dict(processor.drain()) == {"handled": 1}
    assert len(read(sandbox, "calls", path="kf/send_msg")) == 1  # no retry inside the blocked minute
    with db.sessions() as session:
        [row] = session.scalars(select(OutboxMessage)).all()
    assert row.status == "pending" and "45009" in row.reason
    assert row.scheduled_at >= utcnow() + timedelta(seconds=55)
    assert sender.send_due() == {}  # not due yet

    for minutes in (1, 2):
        sender.clock = lambda minutes=minutes: utcnow() + timedelta(seconds=61 * minutes)
        sender.send_due()
    assert [c["errcode"] for c in read(sandbox, "calls", path="kf/send_msg")] == [45009, 45009, 0]
    assert len([m for m in read(sandbox, "sent")["kf"] if m["touser"] == "wmBUSY"]) == 1
    with db.sessions() as session:
        [row] = session.scalars(select(OutboxMessage)).all()
    assert row.status == "sent"


def test_a_welcome_whose_window_ends_inside_the_block_fails_with_the_reason(wired, sandbox):
    control(sandbox, "seed", {"staff": [{"userid": "zhangsan", "name": "张三"}]})
    control(sandbox, "faults", {"path": "externalcontact/send_welcome_msg", "errcode": 45009, "count": 1})
    control(sandbox, "contacts/add", {"userid": "zhangsan", "name": "李四"})
    assert dict(wired.extensions["scrm.processor"].drain()) == {"handled": 1}
    with wired.extensions["scrm.db"].sessions() as session:
        [row] = session.scalars(select(OutboxMessage).where(OutboxMessage.channel == "welcome")).all()
    assert row.status == "failed" and "45009" in row.reason and "window" in row.reason
    assert len(read(sandbox, "calls", path="externalcontact/send_welcome_msg")) == 1


def test_an_event_whose_handler_hit_the_frequency_limit_is_retried_after_the_block(callbacks, app):
    """A handler's WeCom call refused with 45009 fails the event; its retry comes after WeCom's block,
    not at the usual first back-off of seconds."""
    from bot.models import InboxEvent
    from bot.wecom.client import ApiBlocked
    from tests.support import contact_event

    assert callbacks.post(contact_event()).status_code == 200
    processor, db = app.extensions["scrm.processor"], app.extensions["scrm.db"]
    with db.sessions() as session:
        event_id = session.scalars(select(InboxEvent.id)).one()
    before = utcnow()
    assert processor._fail(event_id, ApiBlocked(45009, "api freq out of limit")) == "failed"
    with db.sessions() as session:
        event = session.get(InboxEvent, event_id)
    assert event.next_attempt_at >= before + timedelta(seconds=60)


def test_app_messages_to_one_member_keep_to_wecoms_pace_and_none_is_dropped(wired, sandbox):
    """WeCom silently drops what one member gets beyond 30 app messages a minute: a re-tier that moves
    40 of one owner's customers used to lose ten notifications while their rows said sent."""
    from bot.outbox import enqueue

    control(sandbox, "seed", {"staff": [{"userid": "zhangsan", "name": "张三"}]})
    db, sender = wired.extensions["scrm.db"], wired.extensions["scrm.processor"].sender
    with db.begin() as session:
        for n in range(40):
            enqueue(session, channel="app_message", dedupe_key=f"note:{n}", recipient="zhangsan",
                    trigger_kind="tier_change", trigger_ref=str(n), content={"text": f"客户 {n} 升级了"})
    start = utcnow()
    sender.clock = lambda: start
    assert sender.send_due() == {"sent": 30, "deferred": 10}
    with db.sessions() as session:
        waiting = session.scalars(select(OutboxMessage).where(OutboxMessage.status == "pending")).all()
    assert len(waiting) == 10 and all(r.scheduled_at >= start + timedelta(seconds=59) for r in waiting)
    assert "30 app messages" in waiting[0].reason
    sender.clock = lambda: start + timedelta(seconds=61)
    control(sandbox, "clock/advance", {"seconds": 61})  # WeCom's clock moves with ours
    assert sender.send_due() == {"sent": 10}
    sent = read(sandbox, "sent")["app_messages"]
    assert len(sent) == 40 and all(m["delivered"] for m in sent)


def test_an_app_message_answered_busy_after_it_went_out_reaches_the_member_once(wired, sandbox):
    """-1 may come after WeCom delivered an app message; the client retries a busy answer, and WeCom's
    duplicate check (on for every app message) drops the repeat."""
    from bot.outbox import enqueue

    control(sandbox, "seed", {"staff": [{"userid": "zhangsan", "name": "张三"}]})
    db, sender = wired.extensions["scrm.db"], wired.extensions["scrm.processor"].sender
    with db.begin() as session:
        enqueue(session, channel="app_message", dedupe_key="note:busy", recipient="zhangsan",
                trigger_kind="tier_change", trigger_ref="1", content={"text": "客户 1 升级了"})
    control(sandbox, "faults", {"path": "message/send", "errcode": -1, "after": True})
    assert sender.send_due() == {"sent": 1}
    sent = read(sandbox, "sent")["app_messages"]
    assert len(sent) == 2 and [m["delivered"] for m in sent] == [True, False]
    assert all(m["enable_duplicate_check"] == 1 for m in sent)
