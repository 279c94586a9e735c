"""Loading demo data into the database (set-based inserts) and into the sandbox."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session
from tqdm import tqdm

from bot.demo.data import DemoData
from bot.models import Customer, CustomerAggregate, Follow, Order, Staff

CHUNK = 1000


def _chunks(rows: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(rows), CHUNK):
        yield rows[start:start + CHUNK]


def load_database(session: Session, data: DemoData, progress: bool = True) -> dict[str, int]:
    total = len(data.staff) + 2 * len(data.customers) + len(data.orders)
    with tqdm(total=total, desc="seeding database", unit="row", disable=not progress) as bar:
        session.execute(insert(Staff), [{"userid": s["userid"], "name": s["name"]} for s in data.staff])
        bar.update(len(data.staff))
        staff_ids = dict(session.execute(select(Staff.userid, Staff.id)).all())
        customer_rows = [{"external_userid": c["external_userid"], "name": c["name"], "owner_userid": c["owner_userid"],
                          "birthday": c["birthday"], "created_at": c["added_at"]} for c in data.customers]
        for chunk in _chunks(customer_rows):
            session.execute(insert(Customer), chunk)
            bar.update(len(chunk))
        customer_ids = dict(session.execute(select(Customer.external_userid, Customer.id)).all())
        follow_rows = [{"customer_id": customer_ids[c["external_userid"]], "staff_id": staff_ids[c["owner_userid"]],
                        "state": c["state"] or None, "added_at": c["added_at"], "add_way": 1}
                       for c in data.customers]
        for chunk in _chunks(follow_rows):
            session.execute(insert(Follow), chunk)
            bar.update(len(chunk))
        order_rows = [{"order_id": o["order_id"], "customer_id": customer_ids[o["external_userid"]],
                       "amount_fen": o["amount_fen"], "paid_at": o["paid_at"], "status": o["status"]}
                      for o in data.orders]
        for chunk in _chunks(order_rows):
            session.execute(insert(Order), chunk)
            bar.update(len(chunk))
    rebuild_aggregates(session)
    return {"staff": len(data.staff), "customers": len(data.customers), "orders": len(data.orders)}


def rebuild_aggregates(session: Session) -> None:
    """Recompute every customer's order aggregate in one INSERT … SELECT … GROUP BY."""
    paid = Order.status == "paid"
    refunded = Order.status == "refunded"
    summary = (
        select(
            Order.customer_id,
            func.count().filter(paid),
            func.coalesce(func.sum(Order.amount_fen).filter(paid), 0),
            func.count().filter(refunded),
            func.coalesce(func.sum(Order.amount_fen).filter(refunded), 0),
            func.min(Order.paid_at).filter(paid),
            func.max(Order.paid_at).filter(paid),
            func.max(Order.updated_at),
        ).group_by(Order.customer_id)
    )
    session.execute(delete(CustomerAggregate))
    session.execute(insert(CustomerAggregate).from_select(
        ["customer_id", "order_count", "paid_amount_fen", "refund_count", "refunded_amount_fen", "first_order_at",
         "last_order_at", "updated_at"], summary))


def sandbox_seed(data: DemoData, open_kfid: str) -> dict[str, Any]:
    return {
        "staff": [{"userid": s["userid"], "name": s["name"]} for s in data.staff],
        "contacts": [{"userid": c["owner_userid"], "external_userid": c["external_userid"], "name": c["name"],
                      "state": c["state"], "created_at": int(c["added_at"].timestamp())} for c in data.customers],
        "kf_accounts": [{"open_kfid": open_kfid, "name": "品牌客服"}],
    }
