"""A broadcast's effect by value tier: for each tier, the planned recipients (intent to treat) against
the held-out customers — conversion and revenue per customer with the lifts and their 95% intervals,
as :func:`bot.campaigns.broadcasts.effect_report` gives them for the whole audience. The hold-out is
drawn per value tier, so each tier's comparison is a fair one.

A customer counts in the tier they had at the run: their current tier, unless a re-tier as of a later
day (local) changed it, in which case the tier the first such change moved them from."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Numeric, and_, case, cast, exists, func, select
from sqlalchemy.orm import Session

from bot.campaigns.broadcasts import GroupFigures, Lift, conversion_lift, revenue_lift, run_ref
from bot.models import Broadcast, BroadcastRun, CustomerTier, Order, OutboxMessage, TierChange, utcnow


@dataclass
class TierEffect:
    tier: str  # "" for customers without a value tier
    sent: GroupFigures
    held_out: GroupFigures
    conversion_lift: Lift | None
    revenue_lift_fen: Lift | None


def effect_by_tier(session: Session, broadcast: Broadcast, days: int, tz: ZoneInfo, now: datetime | None = None,
                   tier_order: tuple[str, ...] = ()) -> list[TierEffect]:
    now = now or utcnow()
    groups: dict[str, dict[str, GroupFigures]] = defaultdict(lambda: {"sent": GroupFigures(),
                                                                      "held_out": GroupFigures()})
    for run in session.scalars(select(BroadcastRun).where(BroadcastRun.broadcast_id == broadcast.id)):
        rows = session.execute(_run_query(run, days, now, tz))
        for tier, name, customers, converters, orders, revenue, revenue_sq in rows:
            g = groups[tier or ""][name]
            g.customers += customers
            g.converters += converters
            g.orders += int(orders)
            g.revenue_fen += int(revenue)
            g.revenue_sq_fen += int(revenue_sq)
    rank = {code: i for i, code in enumerate(tier_order)}
    return [TierEffect(tier, g["sent"], g["held_out"], conversion_lift(g["sent"], g["held_out"]),
                       revenue_lift(g["sent"], g["held_out"]))
            for tier, g in sorted(groups.items(), key=lambda item: (rank.get(item[0], len(rank)), item[0]))]


def _run_query(run: BroadcastRun, days: int, now: datetime, tz: ZoneInfo) -> Any:
    start, end = run.send_after, min(run.send_after + timedelta(days=days), now)
    members = (select(OutboxMessage.customer_id, OutboxMessage.status)
               .where(OutboxMessage.trigger_ref == run_ref(run.id), OutboxMessage.status != "skipped").subquery())
    later = and_(TierChange.customer_id == members.c.customer_id, TierChange.dimension == "value_tier",
                 TierChange.as_of > run.run_at.astimezone(tz).date())
    tier_then = (select(TierChange.from_value).where(later).order_by(TierChange.as_of, TierChange.id)
                 .limit(1).scalar_subquery())
    current = select(CustomerTier.value_tier).where(CustomerTier.customer_id == members.c.customer_id).scalar_subquery()
    tier = case((exists().where(later), tier_then), else_=current).label("tier")
    per_customer = (select(Order.customer_id, func.count().label("orders"), func.sum(Order.amount_fen).label("revenue"))
                    .where(Order.customer_id.in_(select(members.c.customer_id)), Order.status == "paid",
                           Order.paid_at >= start, Order.paid_at < end)
                    .group_by(Order.customer_id).subquery())
    group = case((members.c.status == "held_out", "held_out"), else_="sent").label("grp")
    revenue = func.coalesce(per_customer.c.revenue, 0)
    exact = cast(revenue, Numeric(38, 0))  # squares of big spenders' fen overflow BIGINT
    rows = (select(tier, group, members.c.customer_id, per_customer.c.customer_id.label("buyer"),
                   func.coalesce(per_customer.c.orders, 0).label("orders"), revenue.label("revenue"),
                   (exact * exact).label("revenue_sq"))
            .select_from(members).outerjoin(per_customer, per_customer.c.customer_id == members.c.customer_id)
            .subquery())
    return (select(rows.c.tier, rows.c.grp, func.count(), func.count(rows.c.buyer),
                   func.coalesce(func.sum(rows.c.orders), 0), func.coalesce(func.sum(rows.c.revenue), 0),
                   func.coalesce(func.sum(rows.c.revenue_sq), 0))
            .group_by(rows.c.tier, rows.c.grp))
