"""End to end through the real webhook: the sandbox's encrypted callbacks update customers."""

from __future__ import annotations

from typing import Any

import requests
from sqlalchemy import func, select

from bot.models import Customer, Follow, InboxEvent, Interaction


def control(sandbox, path: str, payload: dict[str, Any]) -> dict[str, Any]:
    response = requests.post(f"{sandbox.url}/_sandbox/{path}", json=payload, timeout=30)
    response.raise_for_status()
    return response.json()


def drain(app) -> dict:
    return dict(app.extensions["scrm.processor"].drain())


def test_customer_add_edit_delete(wired, sandbox):
    control(sandbox, "seed", {"staff": [{"userid": "zhangsan", "name": "张三"}]})
    added = control(sandbox, "contacts/add", {"userid": "zhangsan", "name": "李四", "state": "live_0618"})
    assert added["delivery"]["delivered"]
    assert drain(wired) == {"handled": 1}
    db = wired.extensions["scrm.db"]
    with db.sessions() as s:
        customer = s.scalar(select(Customer).where(Customer.external_userid == added["external_userid"]))
        follow = s.scalar(select(Follow))
        assert (customer.name, customer.owner_userid, follow.state, follow.ended_at) == (
            "李四", "zhangsan", "live_0618", None)
    control(sandbox, "contacts/edit", {"userid": "zhangsan", "external_userid": added["external_userid"],
                                       "remark": "老客户"})
    assert drain(wired) == {"handled": 1}
    with db.sessions() as s:
        assert s.scalar(select(Follow)).remark == "老客户"
    control(sandbox, "contacts/delete", {"userid": "zhangsan", "external_userid": added["external_userid"],
                                         "by": "customer"})
    assert drain(wired) == {"handled": 1}
    with db.sessions() as s:
        follow = s.scalar(select(Follow))
        assert follow.ended_reason == "customer_deleted_staff" and follow.ended_at is not None
        assert follow.remark == "老客户"  # history kept


def test_edit_overtaken_by_delete_does_not_fail(wired, sandbox):
    """Processing lags behind WeCom: by the time an edit is handled the contact may be gone (84061)."""
    control(sandbox, "seed", {"staff": [{"userid": "zhangsan"}]})
    added = control(sandbox, "contacts/add", {"userid": "zhangsan", "name": "李四"})
    ids = {"userid": "zhangsan", "external_userid": added["external_userid"]}
    control(sandbox, "contacts/edit", {**ids, "remark": "新备注"})
    control(sandbox, "contacts/delete", {**ids, "by": "staff", "source": "DELETE_BY_TRANSFER"})
    assert drain(wired) == {"handled": 3}
    with wired.extensions["scrm.db"].sessions() as s:
        assert s.scalar(select(Follow)).ended_reason == "transferred"


def test_retried_delivery_is_processed_once(wired, sandbox):
    control(sandbox, "seed", {"staff": [{"userid": "zhangsan"}]})
    added = control(sandbox, "contacts/add", {"userid": "zhangsan", "name": "王五"})
    control(sandbox, f"deliveries/{added['delivery']['id']}/redeliver", {})
    drain(wired)
    db = wired.extensions["scrm.db"]
    with db.sessions() as s:
        assert s.scalar(select(func.count()).select_from(InboxEvent)) == 1
        assert s.scalar(select(func.count()).select_from(Interaction)) == 1
    calls = requests.get(f"{sandbox.url}/_sandbox/calls", params={"path": "externalcontact/get"}, timeout=5).json()
    assert len(calls) == 1


def test_handler_error_from_wecom_is_kept_for_retry(wired, sandbox):
    control(sandbox, "seed", {"staff": [{"userid": "zhangsan"}]})
    control(sandbox, "faults", {"path": "externalcontact/get", "errcode": 60011, "count": 1})
    control(sandbox, "contacts/add", {"userid": "zhangsan", "name": "赵六"})
    assert drain(wired) == {"failed": 1}
    with wired.extensions["scrm.db"].sessions() as s:
        event = s.scalar(select(InboxEvent))
        assert "60011" in event.last_error
    wired.extensions["scrm.processor"].retry(event.id)
    assert drain(wired) == {"handled": 1}
