"""The dashboard's figures: grouped SQL over the tier table, the aggregates and the tier changes —
a handful of GROUP BY statements whatever the number of customers."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bot.campaigns.broadcasts import effect_report
from bot.models import Broadcast, Customer, CustomerAggregate, CustomerTier, TierChange
from bot.outbox.messages import STAGE_NAMES, TIER_NAMES
from segments.rfm import SEGMENT_NAMES, SEGMENTS

ENGAGEMENT_NAMES = {"active": "活跃", "silent": "沉默", "churned": "流失"}
ACTIVITY_NAMES = {"high": "高活跃", "mid": "中活跃", "low": "低活跃"}
UNTIERED = "未分层"
LATEST_BROADCASTS = 5


@dataclass
class RfmCell:
    code: str
    name: str
    r_high: bool
    f_high: bool
    m_high: bool
    customers: int = 0
    revenue_fen: int = 0
    revenue_share: float = 0.0


@dataclass
class Dashboard:
    customers: int = 0
    value_tiers: list[dict[str, Any]] = field(default_factory=list)
    rfm: list[RfmCell] = field(default_factory=list)
    stages: list[dict[str, Any]] = field(default_factory=list)
    engagement: list[dict[str, Any]] = field(default_factory=list)
    flows: dict[str, Any] = field(default_factory=dict)
    broadcasts: list[dict[str, Any]] = field(default_factory=list)


def tier_label(code: str | None, names: dict[str, str]) -> str:
    if not code:
        return UNTIERED
    return f"{names.get(code, code)}（{code}）"


def dashboard(session: Session, now: datetime, report_days: int) -> Dashboard:
    result = Dashboard(customers=session.scalar(select(func.count()).select_from(Customer)) or 0)
    result.value_tiers = _counts(session, CustomerTier.value_tier, TIER_NAMES, result.customers)
    result.stages = _counts(session, CustomerTier.stage, STAGE_NAMES, result.customers)
    result.engagement = _counts(session, CustomerTier.engagement, ENGAGEMENT_NAMES, result.customers)
    result.rfm = rfm_grid(session)
    result.flows = tier_flows(session)
    result.broadcasts = latest_broadcasts(session, now, report_days)
    return result


def _counts(session: Session, column: Any, names: dict[str, str], total: int) -> list[dict[str, Any]]:
    """Customers per value of one tier column; customers without a tier row count as 未分层."""
    rows = session.execute(select(column, func.count()).group_by(column)).all()
    counted = {code: n for code, n in rows}
    untiered = total - sum(counted.values()) + counted.pop(None, 0)
    ordered = [code for code in names if code in counted] + sorted(c for c in counted if c not in names)
    out = [{"code": code, "label": tier_label(code, names), "count": counted[code]} for code in ordered]
    if untiered:
        out.append({"code": "", "label": UNTIERED, "count": untiered})
    return out


def rfm_grid(session: Session) -> list[RfmCell]:
    """The eight RFM segments with their customers and paid revenue (and its share of all segments')."""
    query = (select(CustomerTier.rfm_segment, func.count(),
                    func.coalesce(func.sum(CustomerAggregate.paid_amount_fen), 0))
             .select_from(CustomerTier)
             .outerjoin(CustomerAggregate, CustomerAggregate.customer_id == CustomerTier.customer_id)
             .where(CustomerTier.rfm_segment.is_not(None))
             .group_by(CustomerTier.rfm_segment))
    found = {code: (int(n), int(revenue)) for code, n, revenue in session.execute(query)}
    total_revenue = sum(revenue for _, revenue in found.values())
    cells = []
    for (r, f, m), code in SEGMENTS.items():
        customers, revenue = found.get(code, (0, 0))
        cells.append(RfmCell(code, SEGMENT_NAMES[code], r, f, m, customers, revenue,
                             revenue / total_revenue if total_revenue else 0.0))
    return cells


def tier_flows(session: Session) -> dict[str, Any]:
    """Value-tier flows across the latest re-tier day, as Sankey nodes and links: the moves recorded
    that day (TierChange rows) plus, per tier, the customers who stayed in it. "之前·X" → "之后·Y", so a
    tier on both sides is two nodes (a Sankey has no cycles)."""
    latest: date | None = session.scalar(select(func.max(TierChange.as_of))
                                         .where(TierChange.dimension == "value_tier"))
    if latest is None:
        return {"as_of": None, "nodes": [], "links": [], "moved": 0}
    that_day = (TierChange.dimension == "value_tier", TierChange.as_of == latest)
    moves = session.execute(select(TierChange.from_value, TierChange.to_value, func.count())
                            .where(*that_day).group_by(TierChange.from_value, TierChange.to_value)).all()
    moved_ids = select(TierChange.customer_id).where(*that_day)
    stays = session.execute(select(CustomerTier.value_tier, CustomerTier.value_tier, func.count())
                            .where(CustomerTier.value_tier.is_not(None), CustomerTier.customer_id.not_in(moved_ids))
                            .group_by(CustomerTier.value_tier)).all()
    links, nodes = [], {}
    for before, after, n in [*stays, *moves]:
        source = "之前·" + (TIER_NAMES.get(before, before) if before else "新客户")
        target = "之后·" + (TIER_NAMES.get(after, after) if after else UNTIERED)
        nodes[source] = nodes[target] = True
        links.append({"source": source, "target": target, "value": int(n)})
    return {"as_of": latest.isoformat(), "nodes": [{"name": n} for n in nodes], "links": links,
            "moved": sum(int(n) for _, _, n in moves)}


def latest_broadcasts(session: Session, now: datetime, report_days: int) -> list[dict[str, Any]]:
    out = []
    for broadcast in session.scalars(select(Broadcast).order_by(Broadcast.id.desc()).limit(LATEST_BROADCASTS)):
        report = effect_report(session, broadcast, report_days, now)
        out.append({"id": broadcast.id, "name": broadcast.name, "status": broadcast.status, "report": report})
    return out
