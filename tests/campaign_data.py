"""Small constructed audiences for the campaign tests: staff, customers with tiers, follows."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import insert, select

from bot.models import Customer, CustomerTier, Follow, Staff

SHANGHAI = ZoneInfo("Asia/Shanghai")
MORNING = datetime(2026, 11, 24, 10, 0, tzinfo=SHANGHAI)  # a Tuesday, outside quiet hours
TIER_FIELDS = {column.name for column in CustomerTier.__table__.columns} - {"customer_id"}


def seed_audience(db: Any, tiers: dict[str, int], *, owner: str = "zhangsan", start: int = 0,
                  **fields: Any) -> list[int]:
    """``tiers`` = {value_tier: how many}; every customer followed by ``owner``. Returns ids."""
    with db.begin() as s:
        staff = s.scalar(select(Staff).where(Staff.userid == owner))
        if staff is None:
            staff = Staff(userid=owner, name=owner)
            s.add(staff)
            s.flush()
        rows, tier_rows, n = [], [], start
        for tier, count in tiers.items():
            for _ in range(count):
                rows.append({"external_userid": f"wm{n:06d}", "name": f"客户{n}",
                             "owner_userid": owner, "opted_out": False, "contact_type": 1, "gender": 0,
                             **{k: v for k, v in fields.items() if k not in TIER_FIELDS}})
                tier_rows.append({"value_tier": tier, **{k: v for k, v in fields.items() if k in TIER_FIELDS}})
                n += 1
        s.execute(insert(Customer), rows)
        ids = list(s.scalars(select(Customer.id).where(Customer.external_userid.in_([r["external_userid"]
                                                                                     for r in rows]))
                             .order_by(Customer.id)))
        s.execute(insert(CustomerTier), [{"customer_id": i, **t} for i, t in zip(ids, tier_rows, strict=True)])
        s.execute(insert(Follow), [{"customer_id": i, "staff_id": staff.id, "remark": "", "description": "",
                                    "added_at": MORNING} for i in ids])
    return sorted(ids)
