"""With Redis, the webhook enqueues ids and RQ workers (`scrm worker`) run them: each stored event is
handled once and each message sent once, however many jobs, sweeps and in-process workers meet it;
a lost job is re-enqueued by the sweep; with Redis down, the webhook still stores and answers 200 and
the worker does the work in-process. An in-memory Redis (fakeredis) stands in for the server."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import fakeredis
import pytest
from sqlalchemy import select

from bot.models import InboxEvent, OutboxMessage
from bot.outbox import OutboxSender
from bot.outbox.queue import enqueue
from bot.tasks.queue import TaskQueue, connect
from bot.tasks.worker import QueueWorker


def no_handler_event(n: int) -> dict[str, Any]:
    """An authentic event no handler reacts to: handling it needs no WeCom."""
    return {"ToUserName": "corp", "FromUserName": "sys", "CreateTime": 1700000000 + n, "MsgType": "event",
            "Event": "scrm_test_only", "Ref": str(n)}


@pytest.fixture
def tasks(app: Any) -> TaskQueue:
    queue = TaskQueue(fakeredis.FakeRedis(), key_prefix="t")
    app.extensions["scrm.tasks"] = queue
    return queue


@pytest.fixture
def redis_down() -> TaskQueue:
    return TaskQueue(connect("redis://127.0.0.1:1/0", timeout_seconds=0.2), key_prefix="t")


def events(db: Any) -> list[InboxEvent]:
    with db.sessions() as session:
        return list(session.scalars(select(InboxEvent).order_by(InboxEvent.id)))


def test_the_webhook_enqueues_only_the_id_and_a_worker_handles_each_event_once(callbacks, db, processor, tasks):
    for n in (1, 2, 3, 2):  # the second 2 is a WeCom retry
        assert callbacks.post(no_handler_event(n)).status_code == 200
    ids = [e.id for e in events(db)]
    assert tasks.queue.count == 3
    assert [job.args for job in tasks.queue.get_jobs()] == [(i,) for i in ids]  # ids only, no payload
    tasks.enqueue_event(ids[0])  # the same job twice (a sweep racing the webhook)

    QueueWorker(processor, tasks, sweep_seconds=60).run(burst=True)

    assert [(e.status, e.attempts) for e in events(db)] == [("unhandled", 1)] * 3


def test_a_callback_carrying_a_welcome_code_goes_to_the_front_of_the_queue(callbacks, db, tasks):
    """Its code lasts 20 s: it does not wait behind the jobs already queued."""
    from tests.support import contact_event

    for n in (1, 2):
        assert callbacks.post(no_handler_event(n)).status_code == 200
    assert callbacks.post(contact_event(WelcomeCode="WELCOME1")).status_code == 200
    ids = [e.id for e in events(db)]
    assert [job.args for job in tasks.queue.get_jobs()] == [(ids[2],), (ids[0],), (ids[1],)]


def test_a_lost_job_is_enqueued_again_by_the_sweep_and_runs_once(callbacks, db, processor, tasks):
    assert callbacks.post(no_handler_event(1)).status_code == 200
    worker = QueueWorker(processor, tasks, sweep_seconds=60)
    assert worker.sweep_once() == {"events": 0, "sends": 0}  # its job is still queued
    tasks.connection.flushall()  # Redis restarted without its data: the job is lost
    assert worker.sweep_once() == {"events": 1, "sends": 0}
    worker.run(burst=True)
    assert [(e.status, e.attempts) for e in events(db)] == [("unhandled", 1)]
    assert worker.sweep_once() == {"events": 0, "sends": 0}  # handled: nothing is due


def test_a_killed_workers_job_is_queued_again_once_its_lease_has_run_out(callbacks, db, processor, tasks):
    """kill -9 leaves its RQ job "started" until RQ's own clean-up minutes later, and a sweep that took a
    started job for a live one left the event (and its welcome, whose code lives 20 s) with it."""
    from datetime import UTC, datetime, timedelta

    from rq.job import JobStatus

    assert callbacks.post(no_handler_event(1)).status_code == 200
    [job] = tasks.queue.get_jobs()
    tasks.queue.remove(job.id)  # what the dead worker took: started 30 s ago, its claim never renewed
    job.set_status(JobStatus.STARTED)
    job.started_at = datetime.now(UTC) - timedelta(seconds=30)
    job.save()
    lease = processor.settings.worker.lease_seconds
    with db.begin() as s:
        event = s.scalar(select(InboxEvent))
        event.status, event.attempts = "processing", 1
        event.locked_at = processor.clock() - timedelta(seconds=lease + 1)
    worker = QueueWorker(processor, tasks, sweep_seconds=60)
    assert worker.sweep_once() == {"events": 1, "sends": 0}
    assert worker.sweep_once() == {"events": 0, "sends": 0}  # queued once, not on every sweep
    worker.run(burst=True)
    assert [(e.status, e.attempts) for e in events(db)] == [("unhandled", 2)]


def test_with_redis_down_the_webhook_stores_and_answers_200_and_the_worker_works_in_process(
        app, callbacks, db, processor, redis_down, caplog):
    app.extensions["scrm.tasks"] = redis_down
    with caplog.at_level(logging.WARNING):
        assert callbacks.post(no_handler_event(1)).status_code == 200
    assert any("not queued, Redis unreachable" in r.getMessage() for r in caplog.records)
    tried: list[int] = []
    redis_down.queue.enqueue = lambda *args, **kwargs: tried.append(1)  # type: ignore[method-assign]
    assert callbacks.post(no_handler_event(2)).status_code == 200
    assert tried == []  # the next callbacks do not wait on Redis's timeout again
    first, second = events(db)
    assert (first.status, second.status) == ("pending", "pending")

    worker = QueueWorker(processor, redis_down, sweep_seconds=60)
    assert worker.sweep_once() == {"unhandled": 2}
    assert worker.degraded

    assert callbacks.post(no_handler_event(3)).status_code == 200
    worker.run(burst=True)  # RQ's worker cannot be made without Redis: the round in-process was the work
    assert events(db)[2].status == "unhandled"

    # Redis is back with the jobs the webhook would have queued: they find the events done.
    back = TaskQueue(fakeredis.FakeRedis(), key_prefix="t")
    back.enqueue_event(first.id)
    back.enqueue_event(second.id)
    QueueWorker(processor, back, sweep_seconds=60).run(burst=True)
    assert [(e.status, e.attempts) for e in events(db)] == [("unhandled", 1)] * 3


class CountingKf:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def send_msg(self, touser: str, open_kfid: str, msgtype: str, body: dict, msgid: str | None = None) -> dict:
        self.calls.append(touser)
        return {"errcode": 0, "msgid": msgid}


def test_a_message_is_sent_once_by_jobs_sweeps_and_in_process_senders_together(app, db, tasks, overrides):
    kf = CountingKf()
    processor = app.extensions["scrm.processor"]
    processor.sender = OutboxSender(db, SimpleNamespace(kf=SimpleNamespace(kf=kf)), app.extensions["scrm.settings"])
    with db.begin() as session:
        row = enqueue(session, channel="kf", dedupe_key="kf-reply:m1", recipient="wm_customer",
                      trigger_kind="kf", trigger_ref="m1", content={"text": "您好", "open_kfid": "wk1", "msgid": "m1"})
        outbox_id = row.id
    worker = QueueWorker(processor, tasks, sweep_seconds=60)
    assert worker.sweep_once() == {"events": 0, "sends": 1}  # the sweep finds the pending send
    tasks.enqueue_send(outbox_id)  # and a second job for it
    worker.run(burst=True)
    processor.sender.send_due()  # an in-process sender comes by as well
    assert kf.calls == ["wm_customer"]
    with db.sessions() as session:
        assert session.get(OutboxMessage, outbox_id).status == "sent"


def test_without_redis_the_app_has_no_queue_and_wakes_its_own_worker(app):
    assert "scrm.tasks" not in app.extensions


def test_scrm_worker_with_redis_runs_the_queued_jobs(callbacks, db, tasks, database_url, monkeypatch):
    """`scrm worker --burst` with redis.url set: an RQ worker on the queue the webhook fills."""
    from click.testing import CliRunner

    import bot.tasks.queue
    from bot.cli import main

    for n in (1, 2):
        assert callbacks.post(no_handler_event(n)).status_code == 200
    monkeypatch.setattr(bot.tasks.queue, "connect", lambda url, timeout_seconds=1.0: tasks.connection)
    result = CliRunner(env={"SCRM_CONFIG": None}).invoke(
        main, ["worker", "--burst"], catch_exceptions=False,
        env={"SCRM_DATABASE_URL": database_url, "SCRM_REDIS_URL": "redis://fake/0", "SCRM_REDIS_KEY_PREFIX": "t"})
    assert result.exit_code == 0, result.output
    assert "RQ worker on queue t-tasks" in result.output
    assert [(e.status, e.attempts) for e in events(db)] == [("unhandled", 1)] * 2


def test_scrm_worker_without_redis_polls_the_database(callbacks, db, database_url):
    from click.testing import CliRunner

    from bot.cli import main

    assert callbacks.post(no_handler_event(1)).status_code == 200
    result = CliRunner(env={"SCRM_CONFIG": None}).invoke(
        main, ["worker", "--burst"], catch_exceptions=False, env={"SCRM_DATABASE_URL": database_url})
    assert result.exit_code == 0, result.output
    assert "polling" in result.output
    assert [(e.status, e.attempts) for e in events(db)] == [("unhandled", 1)]


def test_a_worker_runs_worker_threads_jobs_at_once(callbacks, db, processor, tasks):
    """One RQ SimpleWorker took one job at a time, so a burst of adds (each waiting on WeCom) waited in line
    past the welcome code's 20 s; `scrm worker` runs worker.threads of them."""
    import threading
    import time

    from bot.inbox.dispatcher import make_key

    running, most, lock = [0], [0], threading.Lock()

    def slow_handler(event: Any, ctx: Any) -> None:  # as a welcome waits on externalcontact/get
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.3)
        with lock:
            running[0] -= 1

    processor.dispatcher.add(make_key("event", "slow_queue_test"), slow_handler)
    for n in range(6):
        assert callbacks.post({**no_handler_event(n), "Event": "slow_queue_test"}).status_code == 200
    started = time.perf_counter()
    QueueWorker(processor, tasks, sweep_seconds=60, threads=3).run(burst=True)
    assert time.perf_counter() - started < 1.5  # one at a time: 1.8 s at least
    assert most[0] == 3 and [(e.status, e.attempts) for e in events(db)] == [("handled", 1)] * 6
