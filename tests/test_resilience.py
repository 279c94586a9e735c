"""Nothing a customer should get is silently lost, and nothing is sent twice: sends that get no
answer from WeCom (the sandbox answers late or drops the call), crashed workers, locked databases."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from bot.models import OutboxMessage, utcnow
from bot.outbox import enqueue
from tests.support import control, read

TIMEOUT = 1.5  # the bot's WeCom timeout here; the sandbox answers after LATE seconds
LATE = 2.0
LEASE = 0.6  # short claims, renewed every 0.2 s


@pytest.fixture
def overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    return {**overrides, "wecom": {**overrides["wecom"], "timeout_seconds": TIMEOUT},
            "outbox": {"resend_attempts": 3}, "worker": {**overrides["worker"], "lease_seconds": LEASE}}


def delay(sandbox, path: str, mode: str, count: int = 1) -> None:
    control(sandbox, "delays", {"path": path, "seconds": LATE, "mode": mode, "count": count})


def only_row(app) -> OutboxMessage:
    with app.extensions["scrm.db"].sessions() as s:
        [row] = s.scalars(select(OutboxMessage)).all()
        return row


@pytest.fixture
def staff(sandbox):
    control(sandbox, "seed", {"staff": [{"userid": "zhangsan", "name": "张三"}],
                              "kf_accounts": [{"open_kfid": "wkSHOP", "name": "官方客服"}]})


def drain(app) -> dict:
    return dict(app.extensions["scrm.processor"].drain())


# ---------------------------------------------------------------- welcome


def test_welcome_whose_answer_was_lost_is_resent_and_reaches_the_customer_once(wired, sandbox, staff):
    delay(sandbox, "externalcontact/send_welcome_msg", "late")  # WeCom sent it; the answer came too late
    control(sandbox, "contacts/add", {"userid": "zhangsan", "name": "李四"})
    assert drain(wired) == {"handled": 1}
    assert len(read(sandbox, "sent")["welcomes"]) == 1
    assert len(read(sandbox, "calls", path="externalcontact/send_welcome_msg")) == 2
    row = only_row(wired)
    assert (row.status, row.attempts) == ("sent", 2)
    assert "41051" in row.reason and "delivered it" in row.reason


def test_welcome_code_expired_after_an_unanswered_attempt_is_not_counted_as_delivered(wired, sandbox, staff):
    delay(sandbox, "externalcontact/send_welcome_msg", "drop")  # the call never reached WeCom
    control(sandbox, "faults", {"path": "externalcontact/send_welcome_msg", "errcode": 41050})  # then too late
    control(sandbox, "contacts/add", {"userid": "zhangsan", "name": "李四"})
    drain(wired)
    assert read(sandbox, "sent")["welcomes"] == []
    row = only_row(wired)
    assert row.status == "failed" and "41050" in row.reason and "expired" in row.reason
    assert "may have delivered it" in row.reason  # the dropped attempt: nobody can tell


def test_kf_event_welcome_whose_answer_was_lost_is_resent_and_reaches_the_customer_once(wired, sandbox, staff):
    delay(sandbox, "kf/send_msg_on_event", "late")  # WeCom sent it; the answer came too late
    control(sandbox, "kf/enter_session", {"open_kfid": "wkSHOP", "external_userid": "wmENTER", "scene": "homepage"})
    drain(wired)
    assert len([m for m in read(sandbox, "sent")["kf"] if m["touser"] == "wmENTER"]) == 1
    assert len(read(sandbox, "calls", path="kf/send_msg_on_event")) == 2
    row = only_row(wired)
    assert (row.channel, row.status, row.attempts) == ("kf_event", "sent", 2)
    assert "40058" in row.reason and "delivered it" in row.reason


def test_welcome_lost_on_the_way_is_resent_within_its_window(wired, sandbox, staff):
    delay(sandbox, "externalcontact/send_welcome_msg", "drop")  # the call never reached WeCom
    control(sandbox, "contacts/add", {"userid": "zhangsan", "name": "李四"})
    drain(wired)
    [welcome] = read(sandbox, "sent")["welcomes"]
    assert welcome["sent_at"] - welcome["issued_at"] < 20
    row = only_row(wired)
    assert (row.status, row.reason, row.attempts) == ("sent", None, 2)


def test_welcome_is_not_resent_once_its_window_has_closed(wired, sandbox, sandbox_state, staff):
    delay(sandbox, "externalcontact/send_welcome_msg", "drop")
    sender = wired.extensions["scrm.processor"].sender
    # The unanswered attempt ends 25 s after the add event (the clock jumps once WeCom saw the call).
    sender.clock = lambda: utcnow() + (timedelta(seconds=25) if sandbox_state.calls and any(
        c["path"] == "externalcontact/send_welcome_msg" for c in sandbox_state.calls) else timedelta(0))
    control(sandbox, "contacts/add", {"userid": "zhangsan", "name": "李四"})
    drain(wired)
    sender.send_due()
    assert len(read(sandbox, "calls", path="externalcontact/send_welcome_msg")) == 1
    row = only_row(wired)
    assert row.status == "failed" and "window closed" in row.reason


# ---------------------------------------------------------------- kf


def kf_say(sandbox, external_userid: str, content: str) -> None:
    control(sandbox, "kf/text", {"open_kfid": "wkSHOP", "external_userid": external_userid, "contents": [content]})


def test_kf_reply_whose_answer_was_lost_is_not_sent_twice(wired, sandbox, staff):
    delay(sandbox, "kf/send_msg", "late")
    kf_say(sandbox, "wmLATE", "多少钱")
    assert drain(wired) == {"handled": 1}
    assert len([m for m in read(sandbox, "sent")["kf"] if m["touser"] == "wmLATE"]) == 1
    calls = read(sandbox, "calls", path="kf/send_msg")
    assert len(calls) == 2 and calls[0]["body"]["msgid"] == calls[1]["body"]["msgid"]
    row = only_row(wired)
    assert row.status == "sent" and row.wecom_msgid == row.content["msgid"]
    assert row.expires_at is not None  # the 48-hour window bounds the resends


def test_kf_resends_are_bounded(wired, sandbox, staff):
    delay(sandbox, "kf/send_msg", "drop", count=5)
    kf_say(sandbox, "wmGONE", "多少钱")
    drain(wired)
    wired.extensions["scrm.processor"].sender.send_due()
    assert len(read(sandbox, "calls", path="kf/send_msg")) == 3
    row = only_row(wired)
    assert (row.status, row.attempts) == ("failed", 3)
    assert "in 3 attempts" in row.reason and "outcome unknown" in row.reason


# ---------------------------------------------------------------- non-idempotent channels


def test_app_message_without_an_answer_is_never_resent(wired, sandbox, staff):
    db = wired.extensions["scrm.db"]
    with db.begin() as s:
        row = enqueue(s, channel="app_message", dedupe_key="alert:1", recipient="zhangsan",
                      trigger_kind="churn_alert", trigger_ref="t", content={"text": "客户流失提醒"})
        outbox_id = row.id
    delay(sandbox, "message/send", "drop")
    sender = wired.extensions["scrm.processor"].sender
    assert sender.send([outbox_id]) == {"failed": 1}
    sender.send_due()
    assert len(read(sandbox, "calls", path="message/send")) == 1
    row = only_row(wired)
    assert row.status == "failed" and "not resent" in row.reason


# ---------------------------------------------------------------- leases: crashed vs slow workers


class Clock:
    """A clock the test moves (claims and their renewals are stamped with it)."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> Any:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def wait_for(condition, seconds: float = 10.0) -> bool:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_default_lease_lets_a_crash_cost_seconds_not_minutes():
    from bot.core.config import WorkerSettings

    assert WorkerSettings().lease_seconds + WorkerSettings().poll_seconds <= 10  # a welcome has 20 s


def test_event_of_a_killed_worker_is_taken_over_in_time_for_the_welcome(wired, sandbox, staff):
    from dataclasses import replace

    from bot.core.config import WorkerSettings
    from bot.models import InboxEvent

    processor = wired.extensions["scrm.processor"]
    clock = Clock()
    processor.clock = clock
    control(sandbox, "contacts/add", {"userid": "zhangsan", "name": "李四"})
    with wired.extensions["scrm.db"].sessions() as s:
        event_id = s.scalar(select(InboxEvent.id))
    assert processor._claim(event_id) is not None  # a worker claims it and is killed: no renewals follow
    assert processor.run_once() == {}
    processor.settings = replace(processor.settings, worker=WorkerSettings())  # the default lease
    clock.advance(8)  # a few seconds later, the next poll takes it over
    assert processor.run_once() == {"handled": 1}
    [welcome] = read(sandbox, "sent")["welcomes"]
    assert welcome["sent_at"] - welcome["issued_at"] < 20


def test_slow_but_alive_worker_keeps_its_claim(overrides, callbacks):
    import threading

    from bot.inbox.dispatcher import make_key
    from bot.models import InboxEvent
    from bot.web.app import create_app
    from tests.support import Callbacks, contact_event

    app = create_app(overrides, environ={}, start_worker=False)
    processor, db = app.extensions["scrm.processor"], app.extensions["scrm.db"]
    clock = Clock()
    processor.clock = clock
    started, release, runs = threading.Event(), threading.Event(), []

    def slow_handler(event: Any, ctx: Any) -> None:
        runs.append(threading.current_thread().name)
        started.set()
        release.wait(10)

    processor.dispatcher.add(make_key("event", "slow_test"), slow_handler)
    try:
        assert Callbacks(app.test_client(), callbacks.corp).post(contact_event(Event="slow_test")).status_code == 200
        with db.sessions() as s:
            event_id = s.scalar(select(InboxEvent.id))
        worker = threading.Thread(target=processor.process, args=(event_id,), name="slow-worker")
        worker.start()
        assert started.wait(10)
        clock.advance(3 * LEASE)  # far past the lease: only the renewals keep the claim
        assert wait_for(lambda: _locked_at(db, event_id) == clock.now), "the claim was never renewed"
        assert processor.process(event_id) is None  # another worker may not take it
        release.set()
        worker.join(10)
        assert runs == ["slow-worker"]
        with db.sessions() as s:
            assert s.get(InboxEvent, event_id).status == "handled"
    finally:
        release.set()
        db.dispose()


def test_a_worker_whose_claim_was_taken_over_does_not_commit_the_event_too(overrides, callbacks):
    """A worker frozen past its lease (no renewals) wakes up after another worker took the event over: its
    handler's work must not commit as well (that would be the event done twice: two kf replies)."""
    from sqlalchemy import update

    from bot.inbox.dispatcher import make_key
    from bot.models import InboxEvent, SyncCursor
    from bot.web.app import create_app
    from tests.support import Callbacks, contact_event

    app = create_app(overrides, environ={}, start_worker=False)
    processor, db = app.extensions["scrm.processor"], app.extensions["scrm.db"]

    def handler_that_outlived_its_claim(event: Any, ctx: Any) -> None:
        with db.begin() as other:  # meanwhile another worker took the lapsed claim: a stamp of its own
            other.execute(update(InboxEvent).values(locked_at=utcnow() + timedelta(hours=1)))
        ctx.session.add(SyncCursor(name="done by the frozen worker", cursor="1"))

    processor.dispatcher.add(make_key("event", "frozen_test"), handler_that_outlived_its_claim)
    try:
        assert Callbacks(app.test_client(), callbacks.corp).post(contact_event(Event="frozen_test")).status_code == 200
        with db.sessions() as s:
            event_id = s.scalar(select(InboxEvent.id))
        assert processor.process(event_id) == "processing"  # left to the worker that holds it now
        with db.sessions() as s:
            assert s.scalar(select(SyncCursor).where(SyncCursor.name == "done by the frozen worker")) is None
    finally:
        db.dispose()


def _locked_at(db, event_id: int) -> Any:
    from bot.models import InboxEvent

    with db.sessions() as s:
        return s.scalar(select(InboxEvent.locked_at).where(InboxEvent.id == event_id))


def test_send_waiting_on_a_slow_wecom_is_not_taken_over(wired, sandbox, staff):
    """The sender renews its claim during a slow call; another sender's recovery leaves the row alone."""
    import threading

    db = wired.extensions["scrm.db"]
    sender = wired.extensions["scrm.processor"].sender
    clock = Clock()
    sender.clock = clock
    with db.begin() as s:
        outbox_id = enqueue(s, channel="app_message", dedupe_key="alert:slow", recipient="zhangsan",
                            trigger_kind="churn_alert", trigger_ref="t", content={"text": "提醒"}).id
    # Slow, not lost: an answer after 2 s, inside this client's timeout, leaves the claim's renewal (every
    # LEASE / 3) time to be seen even on a loaded machine (with 0.75 s it could finish first under CI).
    wired.extensions["scrm.processor"].clients.app.timeout = 6.0
    control(sandbox, "delays", {"path": "message/send", "seconds": 2.0, "mode": "late"})
    sending = threading.Thread(target=sender.send, args=([outbox_id],))
    sending.start()
    assert wait_for(lambda: read(sandbox, "calls", path="message/send"))
    clock.advance(LEASE * 3)
    assert wait_for(lambda: (only_row(wired).status, only_row(wired).updated_at) == ("sending", clock.now),
                    seconds=5), "the claim was never renewed during the call"
    assert sender.recover_stale() == 0
    sending.join(10)
    row = only_row(wired)
    assert row.status == "sent" and len(read(sandbox, "calls", path="message/send")) == 1


@pytest.mark.parametrize("channel,attempts,status", [("kf", 1, "sent"), ("kf", 3, "failed"),
                                                    ("app_message", 1, "failed")])
def test_send_interrupted_by_a_crash_is_resumed_only_where_safe_and_bounded(
        wired, sandbox, staff, channel, attempts, status):
    from sqlalchemy import update

    db = wired.extensions["scrm.db"]
    sender = wired.extensions["scrm.processor"].sender
    kf_say(sandbox, "wmCRASH", "在吗")  # opens the kf window in the sandbox
    with db.begin() as s:
        content = {"text": "您好", "open_kfid": "wkSHOP", "msgid": "scrm_crash_test"}
        outbox_id = enqueue(s, channel=channel, dedupe_key="crash", recipient="wmCRASH" if channel == "kf"
                            else "zhangsan", trigger_kind="reply", trigger_ref="t", content=content).id
        s.execute(update(OutboxMessage).where(OutboxMessage.id == outbox_id).values(
            status="sending", attempts=attempts, updated_at=utcnow() - timedelta(minutes=1)))
    assert sender.recover_stale() == 1
    sender.send_due()
    row = only_row(wired)
    assert row.status == status
    if status == "failed":
        assert "outcome unknown" in row.reason


# ---------------------------------------------------------------- the welcome comes first


def test_welcome_goes_out_even_when_the_contact_cannot_be_read_and_the_event_is_retried(wired, sandbox, staff):
    """externalcontact/get refused (here: no privilege) used to fail the whole event before the welcome
    was queued; its retry came after the 20 s. The welcome goes out from the event alone; the retry
    does the rest and sends no second welcome."""
    control(sandbox, "faults", {"path": "externalcontact/get", "errcode": 60011, "count": 1})
    added = control(sandbox, "contacts/add", {"userid": "zhangsan", "name": "李四"})
    assert drain(wired) == {"failed": 1}
    assert len(read(sandbox, "sent")["welcomes"]) == 1
    processor = wired.extensions["scrm.processor"]
    processor.clock = lambda: utcnow() + timedelta(minutes=10)  # past the event's back-off
    assert drain(wired) == {"handled": 1}
    assert len(read(sandbox, "sent")["welcomes"]) == 1
    assert only_row(wired).status == "sent"
    from bot.models import Customer
    with wired.extensions["scrm.db"].sessions() as s:
        customer = s.scalars(select(Customer).where(Customer.external_userid == added["external_userid"])).one()
        assert customer.name == "李四"  # the retry read the contact


def test_an_event_carrying_a_welcome_code_is_taken_before_older_events(wired, sandbox, staff):
    """A welcome code lasts 20 s: an add event waits behind no backlog (a long kf sync, a burst of edits)."""
    for n in range(3):
        control(sandbox, "kf/text", {"open_kfid": "wkSHOP", "external_userid": f"wmKF{n}", "contents": ["在吗"]})
    control(sandbox, "contacts/add", {"userid": "zhangsan", "name": "李四"})
    processor = wired.extensions["scrm.processor"]
    from bot.models import InboxEvent
    with wired.extensions["scrm.db"].sessions() as s:
        kinds = dict(s.execute(select(InboxEvent.id, InboxEvent.change_type)).all())
    first = processor.due_ids()[0]
    assert kinds[first] == "add_external_contact" and first == max(kinds)


def test_a_removal_handled_after_a_later_re_add_leaves_the_follow_live(wired, sandbox, staff):
    """Adds go first for their welcome codes, so a customer's delete (older) may be handled after their
    re-add (newer): the follow stays live and the owner gets no churn alert for a loss undone."""
    from bot.models import Follow, Interaction

    added = control(sandbox, "contacts/add", {"userid": "zhangsan", "name": "李四"})
    assert drain(wired) == {"handled": 1}
    who = added["external_userid"]
    control(sandbox, "contacts/delete", {"userid": "zhangsan", "external_userid": who, "by": "customer"})
    control(sandbox, "clock/advance", {"seconds": 2})
    control(sandbox, "contacts/add", {"userid": "zhangsan", "name": "李四", "external_userid": who})
    processor = wired.extensions["scrm.processor"]
    from bot.models import InboxEvent
    with wired.extensions["scrm.db"].sessions() as s:
        newest = s.scalar(select(InboxEvent.id).order_by(InboxEvent.id.desc()))
    assert processor.due_ids()[0] == newest  # the re-add goes first
    assert drain(wired) == {"handled": 2}
    with wired.extensions["scrm.db"].sessions() as s:
        follow = s.scalar(select(Follow))
        assert follow.ended_at is None
        churn = s.scalar(select(Interaction).where(Interaction.kind == "churn_signal"))
        assert churn is not None and churn.detail.get("re_added") is True
        assert s.scalar(select(OutboxMessage).where(OutboxMessage.channel == "app_message")) is None
