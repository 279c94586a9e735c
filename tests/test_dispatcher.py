"""Stored events reach their handlers; failures are recorded, retried with back-off, and isolated."""

from __future__ import annotations

import types
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from bot.inbox.dispatcher import Dispatcher, on
from bot.inbox.processor import InboxProcessor
from bot.models import InboxEvent
from tests.support import contact_event


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def dispatcher() -> Dispatcher:
    return Dispatcher()


@pytest.fixture
def inbox(app, db, dispatcher, clock) -> InboxProcessor:
    return InboxProcessor(db, dispatcher, app.extensions["scrm.settings"], clock=clock)


def event_row(db: Any, event_id: int) -> InboxEvent:
    with db.sessions() as session:
        row = session.get(InboxEvent, event_id)
        assert row is not None
        return row


def post(callbacks, **extra: Any) -> None:
    assert callbacks.post(contact_event(**extra)).status_code == 200


def test_handler_receives_wechatpy_event_and_marks_handled(callbacks, db, inbox, dispatcher):
    seen = []

    @dispatcher.on("event", "change_external_contact", "add_external_contact")
    def handle(event, ctx):
        seen.append((type(event).__name__, event.external_user_id, event.state, ctx.fields["UserID"]))

    post(callbacks, State="teststate")
    assert inbox.run_once() == {"handled": 1}
    assert seen == [("ChangeExternalContactEvent", "woAJ2GCAAAXtWyujaWJHDDGi0mAAAA", "teststate", "zhangsan")]
    assert event_row(db, 1).status == "handled"


def test_more_general_registrations_also_run_in_order(callbacks, inbox, dispatcher):
    order = []
    dispatcher.on("event")(lambda e, c: order.append("any event"))
    dispatcher.on("event", "change_external_contact")(lambda e, c: order.append("any change"))
    dispatcher.on("event", "change_external_contact", "add_external_contact")(lambda e, c: order.append("exact"))
    dispatcher.on("event", "change_external_contact", "del_follow_user")(lambda e, c: order.append("other"))
    post(callbacks)
    inbox.run_once()
    assert order == ["exact", "any change", "any event"]


def test_unknown_event_is_kept_and_marked_unhandled(callbacks, db, inbox):
    callbacks.post({"ToUserName": "c", "CreateTime": 5, "MsgType": "event", "Event": "brand_new_event", "X": "1"})
    assert inbox.run_once() == {"unhandled": 1}
    row = event_row(db, 1)
    assert row.status == "unhandled" and "brand_new_event" in row.payload


def test_failing_handler_is_recorded_retried_with_backoff_and_does_not_block(callbacks, db, inbox, dispatcher, clock):
    calls = {"n": 0}

    @dispatcher.on("event", "change_external_contact", "add_external_contact")
    def flaky(event, ctx):
        calls["n"] += 1
        if calls["n"] < 3:
            raise RuntimeError("WeCom said no")

    @dispatcher.on("event", "change_external_contact", "del_follow_user")
    def fine(event, ctx):
        pass

    post(callbacks)
    post(callbacks, ChangeType="del_follow_user")
    assert inbox.run_once() == {"failed": 1, "handled": 1}
    failed = event_row(db, 1)
    assert failed.status == "failed" and "RuntimeError: WeCom said no" in failed.last_error
    assert failed.next_attempt_at == clock.now + timedelta(seconds=10)
    assert inbox.run_once() == {}  # not due yet
    clock.advance(10)
    assert inbox.run_once() == {"failed": 1}
    assert event_row(db, 1).next_attempt_at == clock.now + timedelta(seconds=20)  # doubled
    clock.advance(20)
    assert inbox.run_once() == {"handled": 1}
    row = event_row(db, 1)
    assert (row.status, row.attempts, row.last_error) == ("handled", 3, None)


def test_handler_failure_rolls_back_its_writes(callbacks, db, inbox, dispatcher):
    from bot.models import Staff

    @dispatcher.on("event", "change_external_contact")
    def half_done(event, ctx):
        ctx.session.add(Staff(userid="ghost"))
        ctx.session.flush()
        raise ValueError("boom")

    post(callbacks)
    inbox.run_once()
    with db.sessions() as session:
        assert session.scalars(select(Staff)).all() == []


def test_event_gives_up_after_max_attempts(callbacks, db, inbox, dispatcher, clock):
    dispatcher.on("event")(lambda e, c: 1 / 0)
    post(callbacks)
    statuses = []
    for _ in range(3):
        statuses += list(inbox.run_once())
        clock.advance(3600)
    assert statuses == ["failed", "failed", "dead"]
    assert inbox.run_once() == {}


def test_retry_and_replay(callbacks, db, inbox, dispatcher, clock):
    runs = []

    @dispatcher.on("event")
    def fails_first_time(event, ctx):
        runs.append(1)
        if len(runs) == 1:
            raise KeyError("x")

    post(callbacks)
    inbox.run_once()
    assert event_row(db, 1).status == "failed"
    inbox.retry(1)
    assert inbox.run_once() == {"handled": 1}  # due at once, no back-off wait
    with pytest.raises(ValueError):
        inbox.retry(1)  # handled events are replayed, not retried
    inbox.replay(1)
    assert inbox.run_once() == {"handled": 1}
    assert len(runs) == 3 and event_row(db, 1).attempts == 1
    with pytest.raises(LookupError):
        inbox.replay(999)


def test_a_claimed_event_is_not_processed_twice(callbacks, db, inbox, dispatcher, clock):
    ran = []
    dispatcher.on("event")(lambda e, c: ran.append(1))
    post(callbacks)
    assert inbox._claim(1)
    assert inbox.process(1) is None  # another worker holds it
    clock.advance(301)  # lease expired: the holder is presumed dead
    assert inbox.process(1) == "handled"
    assert ran == [1]


def test_decorated_module_functions_register_explicitly():
    module = types.ModuleType("fake_handlers")

    @on("event", "kf_msg_or_event")
    def kf(event, ctx):
        pass

    module.kf = kf
    dispatcher = Dispatcher()
    assert dispatcher.handlers_for("event", "kf_msg_or_event", None) == []
    dispatcher.register_module(module)
    dispatcher.register_module(module)  # idempotent
    assert dispatcher.handlers_for("EVENT", "KF_MSG_OR_EVENT", None) == [kf]


def test_either_kind_of_add_runs_the_same_handlers():
    """WeCom reports an add as add_external_contact or add_half_external_contact; each completes a
    hand-over as well as adding the contact."""
    from bot.web.inbox import build_dispatcher

    dispatcher = build_dispatcher()
    full = dispatcher.handlers_for("event", "change_external_contact", "add_external_contact")
    half = dispatcher.handlers_for("event", "change_external_contact", "add_half_external_contact")
    assert [h.__name__ for h in half] == [h.__name__ for h in full] and "takeover_added" in [h.__name__ for h in half]


def test_worker_thread_processes_events_off_the_request(overrides, corp):
    import time

    from bot.web.app import create_app
    from tests.support import Callbacks

    settings = {**overrides, "worker": {"poll_seconds": 30.0}}
    app = create_app(settings, environ={}, start_worker=True)
    try:
        app.extensions["scrm.processor"].dispatcher.on("event")(lambda e, c: None)
        assert Callbacks(app.test_client(), corp).post(contact_event(ChangeType="transfer_fail")).status_code == 200
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # woken by the webhook, not by the 30 s poll
            if event_row(app.extensions["scrm.db"], 1).status == "handled":
                break
            time.sleep(0.05)
        assert event_row(app.extensions["scrm.db"], 1).status == "handled"
    finally:
        app.extensions["scrm.worker"].stop()
        app.extensions["scrm.db"].dispose()
