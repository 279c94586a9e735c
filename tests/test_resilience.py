"""Nothing a customer should get is silently lost, and nothing is sent twice: sends that get no
answer from WeCom (the sandbox answers late or drops the call), crashed workers, locked databases."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import requests
from sqlalchemy import select

from bot.models import OutboxMessage, utcnow
from bot.outbox import enqueue

TIMEOUT = 0.8  # the bot's WeCom timeout here; the sandbox answers after LATE seconds
LATE = 1.5


@pytest.fixture
def overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    return {**overrides, "wecom": {**overrides["wecom"], "timeout_seconds": TIMEOUT},
            "outbox": {"resend_attempts": 3}}


def control(sandbox, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
    response = requests.post(f"{sandbox.url}/_sandbox/{path}", json=payload or {}, timeout=30)
    response.raise_for_status()
    return response.json()


def read(sandbox, what: str, **params: Any) -> Any:
    response = requests.get(f"{sandbox.url}/_sandbox/{what}", params=params, timeout=10)
    response.raise_for_status()
    return response.json()


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
