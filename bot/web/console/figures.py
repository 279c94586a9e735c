"""The dashboard's figures: grouped SQL over the tier table, the aggregates and the tier changes —
a handful of GROUP BY statements whatever the number of customers."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from bot.campaigns.broadcasts import effect_report
from bot.models import (
    Broadcast,
    ConsoleFigures,
    Customer,
    CustomerAggregate,
    CustomerTier,
    Follow,
    OutboxMessage,
    TierChange,
    TierRun,
)
from bot.outbox.messages import STAGE_NAMES, TIER_NAMES
from bot.web.console.words import reason_zh
from segments.rfm import SEGMENT_NAMES, SEGMENTS

logger = logging.getLogger(__name__)
ENGAGEMENT_NAMES = {"active": "活跃", "silent": "沉默", "churned": "流失"}
ACTIVITY_NAMES = {"high": "高活跃", "mid": "中活跃", "low": "低活跃"}
UNTIERED = "未分层"
LATEST_BROADCASTS = 5
DAILY_DAYS = 30
TIER_COLORS = {"high": "#2f6fed", "mid": "#36b37e", "low": "#ffab00"}  # a tier has one colour on both sides
OTHER_COLOR = "#8993a4"
SHANGHAI = ZoneInfo("Asia/Shanghai")


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
    new_by_channel: dict[str, Any] = field(default_factory=dict)
    messages_by_outcome: dict[str, Any] = field(default_factory=dict)
    stale: bool = False  # outdated figures shown while newer ones are computed


def tier_label(code: str | None, names: dict[str, str]) -> str:
    if not code:
        return UNTIERED
    return f"{names.get(code, code)}（{code}）"


@dataclass
class FiguresCache:
    """The tier figures of the last computation, reused while nothing they count can have changed
    (same last re-tier, same last tier change, same newest customer) and for at most ``ttl``: they
    take a scan of the whole tier table (1–9 s at 1M customers on SQLite), the key three primary-key
    lookups. With ``sessions`` (a session factory) they are also kept in the database
    (``console_figures``), so that a restarted or second web process starts from them, and outdated
    figures are shown, marked stale, while a background thread recomputes them: only the very first
    view on a new database waits for the scan."""

    ttl: timedelta = timedelta(minutes=5)
    sessions: Callable[[], Any] | None = None
    _key: tuple[Any, ...] | None = None
    _at: datetime | None = None
    _value: Dashboard | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _refresh: threading.Thread | None = None

    def tier_figures(self, session: Session, now: datetime, tz: ZoneInfo) -> Dashboard:
        key = tuple(session.execute(select(
            select(func.max(TierRun.id)).scalar_subquery(), select(func.max(TierChange.id)).scalar_subquery(),
            select(func.max(Customer.id)).scalar_subquery())).one())
        with self._lock:
            if self._current(key, now):
                return self._value  # type: ignore[return-value]
        if self.sessions is not None:  # another process (or this one before a restart) may have newer ones
            self._load(session)
        with self._lock:
            if self._current(key, now):
                return self._value  # type: ignore[return-value]
            if self._value is not None and self.sessions is not None:
                if self._refresh is None or not self._refresh.is_alive():
                    self._refresh = threading.Thread(target=self._recompute, args=(key, now, tz), daemon=True,
                                                     name="console-figures")
                    self._refresh.start()
                return replace(self._value, stale=True)
        value = tier_figures(session, now, tz)
        self._store(key, now, value)
        return value

    def wait(self, timeout: float = 30.0) -> None:
        """Until a background recomputation (if any) has finished."""
        if self._refresh is not None:
            self._refresh.join(timeout)

    def _current(self, key: tuple[Any, ...], now: datetime) -> bool:
        return self._value is not None and self._key == key and self._at is not None and now - self._at < self.ttl

    def _recompute(self, key: tuple[Any, ...], now: datetime, tz: ZoneInfo) -> None:
        assert self.sessions is not None
        try:
            with self.sessions() as session:
                value = tier_figures(session, now, tz)
            self._store(key, now, value)
        except Exception:  # noqa: BLE001 - the next view tries again; the stale figures stay shown
            logger.exception("console: recomputing the dashboard's tier figures failed")

    def _store(self, key: tuple[Any, ...], now: datetime, value: Dashboard) -> None:
        with self._lock:
            self._key, self._at, self._value = key, now, value
        if self.sessions is None:
            return
        try:
            with self.sessions() as session:
                session.merge(ConsoleFigures(id=1, key=json.dumps(list(key)), computed_at=now,
                                             figures=figures_to_json(value)))
                session.commit()
        except Exception:  # noqa: BLE001 - kept in memory all the same; the next computation stores them
            logger.exception("console: storing the dashboard's tier figures failed")

    def _load(self, session: Session) -> None:
        """The stored figures, when they were computed after the ones in memory."""
        try:
            row = session.get(ConsoleFigures, 1)
        except Exception:  # noqa: BLE001 - a database not upgraded yet: computed as before
            logger.exception("console: reading the stored dashboard figures failed")
            return
        if row is None:
            return
        with self._lock:
            if self._at is None or row.computed_at > self._at:
                self._key = tuple(json.loads(row.key))
                self._at, self._value = row.computed_at, figures_from_json(row.figures)


def figures_to_json(value: Dashboard) -> dict[str, Any]:
    return {f.name: [asdict(c) for c in value.rfm] if f.name == "rfm" else getattr(value, f.name)
            for f in fields(value) if f.name not in ("broadcasts", "stale")}


def figures_from_json(data: dict[str, Any]) -> Dashboard:
    known = {f.name for f in fields(Dashboard)} - {"broadcasts", "stale", "rfm"}
    return Dashboard(**{k: v for k, v in data.items() if k in known},
                     rfm=[RfmCell(**cell) for cell in data.get("rfm", [])])


def dashboard(session: Session, now: datetime, report_days: int, cache: FiguresCache | None = None,
              tz: ZoneInfo = SHANGHAI) -> Dashboard:
    """The tier and daily figures (from ``cache`` when given) and the latest broadcasts' effect (fresh)."""
    figures = cache.tier_figures(session, now, tz) if cache is not None else tier_figures(session, now, tz)
    return replace(figures, broadcasts=latest_broadcasts(session, now, report_days))


def tier_figures(session: Session, now: datetime, tz: ZoneInfo) -> Dashboard:
    """Every tier figure from one pass over the tier table (each dimension's counts, and the segments'
    revenue), the moves of the latest re-tier day, and the last days' new customers by channel and
    messages by outcome."""
    result = Dashboard(customers=session.scalar(select(func.count()).select_from(Customer)) or 0)
    per_tier, per_stage, per_engagement, per_segment = tier_marginals(session)
    result.value_tiers = _counts(per_tier, TIER_NAMES, result.customers)
    result.stages = _counts(per_stage, STAGE_NAMES, result.customers)
    result.engagement = _counts(per_engagement, ENGAGEMENT_NAMES, result.customers)
    result.rfm = rfm_grid(per_segment)
    result.flows = tier_flows(session, per_tier)
    bounds = day_bounds(now, tz, DAILY_DAYS)
    result.new_by_channel = new_customers_by_channel(session, bounds)
    result.messages_by_outcome = messages_by_outcome(session, bounds)
    return result


Marginal = dict[str | None, int]


def tier_marginals(session: Session) -> tuple[Marginal, Marginal, Marginal, dict[str | None, tuple[int, int]]]:
    """Tier rows per value tier, stage and engagement, and per RFM segment with its paid revenue (None:
    no value). One pass of filtered counts over the known codes rather than a GROUP BY, which SQLite
    answers by sorting every row (1M customers: about half the CPU time); codes outside the known ones
    (an older policy's) are grouped apart, only when the known ones do not add up to every row."""
    revenue = func.coalesce(CustomerAggregate.paid_amount_fen, 0)
    dimensions = [(CustomerTier.value_tier, list(TIER_NAMES)), (CustomerTier.stage, list(STAGE_NAMES)),
                  (CustomerTier.engagement, list(ENGAGEMENT_NAMES)), (CustomerTier.rfm_segment, list(SEGMENT_NAMES))]
    segment = CustomerTier.rfm_segment

    def matches(column: Any, code: str | None) -> Any:
        return column.is_(None) if code is None else column == code

    columns = [func.count().filter(matches(column, code)) for column, codes in dimensions for code in [*codes, None]]
    columns += [func.coalesce(func.sum(revenue).filter(matches(segment, code)), 0)
                for code in [*SEGMENT_NAMES, None]]
    joined = (select(*columns, func.count()).select_from(CustomerTier)
              .outerjoin(CustomerAggregate, CustomerAggregate.customer_id == CustomerTier.customer_id))
    row = list(session.execute(joined).one())
    total = int(row.pop())
    marginals: list[dict[str | None, Any]] = []
    for column, codes in dimensions:
        counted = {code: int(row.pop(0)) for code in [*codes, None]}
        if sum(counted.values()) < total:
            others = select(column, func.count(), func.coalesce(func.sum(revenue), 0)).select_from(CustomerTier) \
                .outerjoin(CustomerAggregate, CustomerAggregate.customer_id == CustomerTier.customer_id) \
                .where(column.not_in(codes)).group_by(column)
            counted.update({code: (int(n), int(rev)) if column is segment else int(n)
                            for code, n, rev in session.execute(others)})
        marginals.append({code: n for code, n in counted.items() if n})
    known_revenue = dict(zip([*SEGMENT_NAMES, None], (int(v) for v in row), strict=True))
    per_segment = {code: n if isinstance(n, tuple) else (n, known_revenue[code]) for code, n in marginals[3].items()}
    return marginals[0], marginals[1], marginals[2], per_segment


def day_bounds(now: datetime, tz: ZoneInfo, days: int) -> list[datetime]:
    """Local midnights from ``days`` − 1 days ago to tomorrow: ``days`` + 1 bounds of ``days`` days."""
    today = now.astimezone(tz).date()
    return [datetime.combine(today - timedelta(days=days - 1 - i), time(0), tzinfo=tz) for i in range(days + 1)]


def _day_of(column: Any, bounds: list[datetime]) -> Any:
    """The index of the local day a moment falls on — a CASE over the day bounds, the same on SQLite and
    PostgreSQL and right in any time zone (no date functions of either database)."""
    return case(*[(column < bounds[i + 1], i) for i in range(len(bounds) - 1)], else_=None)


def _series(rows: list[tuple[int, str, int]], bounds: list[datetime], top: int) -> dict[str, Any]:
    """{"days": ["11-20", …], "series": [{"name", "data": [per day]}]}; beyond ``top`` names, "其他"."""
    totals: dict[str, int] = {}
    for _, name, n in rows:
        totals[name] = totals.get(name, 0) + n
    kept = sorted(totals, key=lambda k: -totals[k])[:top]
    data = {name: [0] * (len(bounds) - 1) for name in [*kept, "其他"]}
    for day, name, n in rows:
        data[name if name in kept else "其他"][day] += n
    return {"days": [b.strftime("%m-%d") for b in bounds[:-1]],
            "series": [{"name": k, "data": v} for k, v in data.items() if any(v)]}


def new_customers_by_channel(session: Session, bounds: list[datetime]) -> dict[str, Any]:
    # Grouped over a subquery's columns: PostgreSQL does not match a GROUP BY expression whose bound
    # parameters (the day bounds) are other parameters than the SELECT's.
    each = (select(_day_of(Follow.added_at, bounds).label("day"), Follow.state.label("channel"))
            .where(Follow.added_at >= bounds[0], Follow.added_at < bounds[-1], Follow.is_an_add()).subquery())
    rows = session.execute(select(each.c.day, each.c.channel, func.count())
                           .group_by(each.c.day, each.c.channel)).all()
    return _series([(d, c or "（无渠道）", int(n)) for d, c, n in rows], bounds, top=6)


def messages_by_outcome(session: Session, bounds: list[datetime]) -> dict[str, Any]:
    """Messages due each day: sent (sent or confirmed) or skipped / failed with the reason."""
    each = (select(_day_of(OutboxMessage.scheduled_at, bounds).label("day"), OutboxMessage.status,
                   OutboxMessage.reason)
            .where(OutboxMessage.status.in_(("sent", "confirmed", "skipped", "failed")),
                   OutboxMessage.scheduled_at >= bounds[0], OutboxMessage.scheduled_at < bounds[-1]).subquery())
    rows = session.execute(select(each.c.day, each.c.status, each.c.reason, func.count())
                           .group_by(each.c.day, each.c.status, each.c.reason)).all()
    # reason_zh drops the per-message parts (a deadline, an attempt): _series adds up the rows of one cause.
    named = [(d, "已发送" if status in ("sent", "confirmed") else
              f"{'跳过' if status == 'skipped' else '失败'}：{(reason_zh(reason) or '-')[:40]}", int(n))
             for d, status, reason, n in rows]
    return _series(named, bounds, top=6)


def _counts(counted: dict[str | None, int], names: dict[str, str], total: int) -> list[dict[str, Any]]:
    """Customers per value of one tier column; customers without a tier row count as 未分层."""
    counted = dict(counted)
    untiered = total - sum(counted.values()) + counted.pop(None, 0)
    ordered = [code for code in names if code in counted] + sorted(c for c in counted if c not in names)
    out = [{"code": code, "label": tier_label(code, names), "count": counted[code]} for code in ordered]
    if untiered:
        out.append({"code": "", "label": UNTIERED, "count": untiered})
    return out


def rfm_grid(per_segment: dict[str | None, tuple[int, int]]) -> list[RfmCell]:
    """The eight RFM segments with their customers and paid revenue (and its share of all segments')."""
    found = {code: counted for code, counted in per_segment.items() if code is not None}
    total_revenue = sum(revenue for _, revenue in found.values())
    cells = []
    for (r, f, m), code in SEGMENTS.items():
        customers, revenue = found.get(code, (0, 0))
        cells.append(RfmCell(code, SEGMENT_NAMES[code], r, f, m, customers, revenue,
                             revenue / total_revenue if total_revenue else 0.0))
    return cells


def tier_flows(session: Session, per_tier: dict[str | None, int]) -> dict[str, Any]:
    """Value-tier flows across the latest re-tier day, as Sankey nodes and links: the moves recorded
    that day (TierChange rows) plus, per tier, the customers who stayed in it (its customers now less
    those who arrived that day). "之前·X" → "之后·Y", so a tier on both sides is two nodes (a Sankey
    has no cycles)."""
    latest: date | None = session.scalar(select(func.max(TierChange.as_of))
                                         .where(TierChange.dimension == "value_tier"))
    if latest is None:  # never re-tiered, or only the first (baseline) run, which records no moves
        baseline: date | None = session.scalar(select(func.min(TierRun.as_of)))
        return {"as_of": None, "baseline": baseline.isoformat() if baseline else None, "nodes": [], "links": [],
                "moved": 0}
    moves = [(before, after, int(n)) for before, after, n in session.execute(
        select(TierChange.from_value, TierChange.to_value, func.count())
        .where(TierChange.dimension == "value_tier", TierChange.as_of == latest)
        .group_by(TierChange.from_value, TierChange.to_value))]
    arrived: dict[str | None, int] = {}
    for _, after, n in moves:
        arrived[after] = arrived.get(after, 0) + n
    stays = [(tier, tier, n - arrived.get(tier, 0)) for tier, n in per_tier.items()
             if tier is not None and n > arrived.get(tier, 0)]
    links, nodes = [], {}
    for before, after, n in [*stays, *moves]:
        source = "之前·" + (TIER_NAMES.get(before, before) if before else "新客户")
        target = "之后·" + (TIER_NAMES.get(after, after) if after else UNTIERED)
        nodes[source], nodes[target] = TIER_COLORS.get(before, OTHER_COLOR), TIER_COLORS.get(after, OTHER_COLOR)
        links.append({"source": source, "target": target, "value": n})
    return {"as_of": latest.isoformat(), "links": links, "moved": sum(n for _, _, n in moves),
            "nodes": [{"name": name, "itemStyle": {"color": color}} for name, color in nodes.items()]}


def latest_broadcasts(session: Session, now: datetime, report_days: int) -> list[dict[str, Any]]:
    out = []
    for broadcast in session.scalars(select(Broadcast).order_by(Broadcast.id.desc()).limit(LATEST_BROADCASTS)):
        report = effect_report(session, broadcast, report_days, now)
        out.append({"id": broadcast.id, "name": broadcast.name, "status": broadcast.status, "report": report})
    return out
