"""A small deterministic generator of staff, customers and orders for the demo and tests.
(The benchmark generator lives outside the product; this one needs nothing but the stdlib.)"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何林罗高"
GIVEN = ["伟", "芳", "娜", "敏", "静", "丽", "强", "磊", "洋", "艳",
         "勇", "军", "杰", "娟", "涛", "明", "超", "秀英", "霞", "平"]
CHANNELS = ["store_qr", "live_0618", "wechat_ad", "friend_referral", ""]
INTERACTION_KINDS = ["kf_message", "kf_message", "moment_like", "moment_comment", "coupon_redeem"]


@dataclass
class DemoData:
    staff: list[dict] = field(default_factory=list)
    customers: list[dict] = field(default_factory=list)
    orders: list[dict] = field(default_factory=list)
    interactions: list[dict] = field(default_factory=list)


def external_userid(seed: int, index: int) -> str:
    digest = hashlib.sha256(f"{seed}:{index}".encode()).hexdigest()
    return "wm" + digest[:26]


def generate(customers: int, seed: int = 7, staff: int = 20, now: datetime | None = None) -> DemoData:
    rng = random.Random(seed)
    now = now or datetime.now(UTC)
    data = DemoData()
    data.staff = [{"userid": f"staff{i:02d}", "name": rng.choice(SURNAMES) + rng.choice(GIVEN) + "（顾问）"}
                  for i in range(1, staff + 1)]
    order_seq = 0
    for index in range(customers):
        added_at = now - timedelta(days=rng.uniform(1, 730))
        customer = {
            "external_userid": external_userid(seed, index),
            "name": rng.choice(SURNAMES) + rng.choice(GIVEN),
            "owner_userid": rng.choice(data.staff)["userid"],
            "added_at": added_at,
            "state": rng.choice(CHANNELS),
            "birthday": date(rng.randint(1960, 2004), rng.randint(1, 12), rng.randint(1, 28)) if rng.random() < 0.6
            else None,
        }
        data.customers.append(customer)
        orders = _order_count(rng)
        for j in range(_interaction_count(rng, orders)):
            data.interactions.append({"external_userid": customer["external_userid"],
                                      "kind": rng.choice(INTERACTION_KINDS), "source_ref": f"demo-{index}-{j}",
                                      "occurred_at": now - timedelta(days=rng.uniform(0, 60) ** 1.2 / 2)})
        for _ in range(orders):
            order_seq += 1
            paid_at = added_at + (now - added_at) * rng.random() ** 0.5
            data.orders.append({
                "order_id": f"D{seed}-{order_seq:08d}",
                "external_userid": customer["external_userid"],
                "amount_fen": max(100, int(rng.lognormvariate(5.3, 0.9) * 100)),
                "paid_at": paid_at,
                "status": "refunded" if rng.random() < 0.03 else "paid",
            })
    return data


def _interaction_count(rng: random.Random, orders: int) -> int:
    """Buyers talk more; most customers are quiet."""
    if rng.random() < 0.5:
        return 0
    return min(30, int(rng.expovariate(1 / (2 + 2 * orders))))


def _order_count(rng: random.Random) -> int:
    """Heavy-tailed: many never buy, most buyers buy once, a few buy often."""
    roll = rng.random()
    if roll < 0.35:
        return 0
    if roll < 0.75:
        return 1
    return min(60, int(rng.paretovariate(1.3)) + 1)
