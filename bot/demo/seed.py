"""Loading demo data into the database (set-based inserts) and into the sandbox."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session
from tqdm import tqdm

from bot.demo.data import DemoData
from bot.models import Customer, Follow, Interaction, Staff
from segments.orders import OrderRow, OrderWriter

CHUNK = 1000


def _chunks(rows: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(rows), CHUNK):
        yield rows[start:start + CHUNK]


def load_database(session: Session, data: DemoData, tz: ZoneInfo, progress: bool = True) -> dict[str, int]:
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
        interaction_rows = [{"customer_id": customer_ids[i["external_userid"]], "kind": i["kind"],
                             "occurred_at": i["occurred_at"], "source_ref": i["source_ref"]}
                            for i in data.interactions]
        for chunk in _chunks(interaction_rows):
            session.execute(insert(Interaction), chunk)
        latest = (select(func.max(Interaction.occurred_at)).where(Interaction.customer_id == Customer.id)
                  .scalar_subquery())
        session.execute(update(Customer).values(last_interaction_at=latest))
        writer = OrderWriter(session)
        rows = [OrderRow(o["order_id"], o["external_userid"], o["amount_fen"], o["paid_at"],
                         o["paid_at"].astimezone(tz).date().toordinal(), o["status"]) for o in data.orders]
        for start in range(0, len(rows), CHUNK * 10):
            writer.write(rows[start:start + CHUNK * 10])
            bar.update(len(rows[start:start + CHUNK * 10]))
    return {"staff": len(data.staff), "customers": len(data.customers), "orders": len(data.orders)}


def sandbox_seed(data: DemoData, open_kfid: str) -> dict[str, Any]:
    return {
        "staff": [{"userid": s["userid"], "name": s["name"]} for s in data.staff],
        "contacts": [{"userid": c["owner_userid"], "external_userid": c["external_userid"], "name": c["name"],
                      "state": c["state"], "created_at": int(c["added_at"].timestamp())} for c in data.customers],
        "kf_accounts": [{"open_kfid": open_kfid, "name": "品牌客服"}],
    }
