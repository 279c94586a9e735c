"""Why a customer sits where it does: metrics, each dimension's value, and the rule behind it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bot.models import Customer, Follow, Interaction
from segments.incremental import last_run
from segments.money import fen_to_yuan
from segments.policy import TierPolicy
from segments.retier import local_midnight_utc, metrics_source, with_channel_stages
from segments.rfm import SEGMENT_NAMES, PopulationStats, aggregate_stats, population_stats, quintile_of, segment_of


@dataclass(frozen=True)
class Explanation:
    """``header``: who, as of when, the metrics; ``why``: one line per dimension (keys ``r``, ``f``,
    ``m`` and ``rfm_segment`` — only ``rfm_segment`` without paid orders —, ``value_tier``, ``stage``,
    ``activity``, ``engagement``), in the order ``scrm customer show`` prints them; ``why_zh``: the same
    reasons in Chinese for staff pages, without the value itself (the page shows it beside them)."""

    header: list[str]
    why: dict[str, str]
    why_zh: dict[str, str] = field(default_factory=dict)

    @property
    def lines(self) -> list[str]:
        return self.header + list(self.why.values())


def explain(session: Session, customer: Customer, policy: TierPolicy, as_of: date, tz: ZoneInfo) -> list[str]:
    return explanation(session, customer, policy, as_of, tz).lines


def stored_stats(session: Session) -> PopulationStats | None:
    """The population statistics the last re-tier compared customers with (what their stored tiers
    rest on), or None when no run kept them. Reading them is one indexed row, where computing them
    scans every buyer: a page that explains one customer uses these."""
    run = last_run(session)
    return PopulationStats(**run.stats) if run is not None and run.stats else None


def explanation(session: Session, customer: Customer, policy: TierPolicy, as_of: date, tz: ZoneInfo,
                stats: PopulationStats | None = None, tier_names: Mapping[str, str] | None = None) -> Explanation:
    """``stats``: the population to compare with (e.g. :func:`stored_stats`); default: computed now.
    ``tier_names``: value tier codes as the Chinese lines name them (default: the codes)."""
    as_of_day = as_of.toordinal()
    metrics, from_aggregates = metrics_source(session, as_of_day, tz)
    if stats is None:
        stats = aggregate_stats(session) if from_aggregates else population_stats(session, metrics)
    row = session.execute(select(metrics).where(metrics.c.customer_id == customer.id)).one_or_none()
    orders, amount, last_day = (int(row.order_count), int(row.paid_amount_fen), row.last_order_day) if row and \
        row.order_count else (0, 0, None)
    activity_score = _activity_score(session, customer.id, policy, as_of, tz)
    policy = with_channel_stages(session, policy)
    floor = _channel_floor(session, customer.id, policy) if not orders else None
    activity = "high" if activity_score >= policy.activity_high else "mid" if activity_score >= policy.activity_mid \
        else "low"
    touches = _last_touches(customer, last_day, as_of, tz)
    live = _Live(segment=segment_of(last_day, orders, amount, stats) if orders and last_day is not None and stats.n
                 else None, value_tier=_value_rule(policy, amount, orders, activity),
                 engagement=_engagement_of(policy, touches["days"]))
    header = [f"customer {customer.external_userid} {customer.name or ''}".rstrip(),
              f"as of {as_of.isoformat()} (stored values from the last re-tier are shown in brackets)",
              f"metrics: {orders} paid orders, {fen_to_yuan(amount)} 元 paid"
              + (f", last paid order {date.fromordinal(last_day).isoformat()}" if last_day else "")]
    why = _rfm_lines(orders, amount, last_day, as_of_day, stats, customer)
    why["value_tier"] = _value_line(policy, amount, orders, activity, customer)
    why["stage"] = (f"stage: [{customer.stage or '-'}] ({orders} paid orders, {fen_to_yuan(amount)} 元; path "
                    f"{policy.stage_path}, super from {policy.super_min_orders} orders"
                    + (f" and {fen_to_yuan(policy.super_min_amount_fen)} 元" if policy.super_min_amount_fen else "")
                    + ("" if policy.stage_path == "ecommerce" else
                       "; without an order: intent with an intent tag, potential once they have interacted, else "
                       "stranger") + (f"; at least {floor[1]}: came through channel {floor[0]}" if floor else "") + ")")
    why["activity"] = (f"activity: {activity} [{customer.activity or '-'}] — score {activity_score} in the last "
                       f"{policy.activity_window_days} days (high ≥ {policy.activity_high}, "
                       f"mid ≥ {policy.activity_mid})")
    why["engagement"] = (f"engagement: {live.engagement} [{customer.engagement or '-'}] — {touches['en']}; "
                         f"active if an order, interaction or joining within {policy.active_days} days, silent within "
                         f"{policy.silent_days}, else churned")
    facts = _Facts(orders, amount, last_day, as_of_day, activity, activity_score, touches["zh"], floor)
    why_zh = _why_zh(facts, stats, policy, customer, tier_names or {})
    names = {**SEGMENT_NAMES, **ENGAGEMENT_ZH, **(tier_names or {})}
    for key, now_, stored in (("rfm_segment", live.segment, customer.rfm_segment),
                              ("value_tier", live.value_tier, customer.value_tier),
                              ("engagement", live.engagement, customer.engagement)):
        why_zh[key] += _pending_zh(now_, stored, names)
    return Explanation(header, why, why_zh)


ENGAGEMENT_ZH = {"active": "活跃", "silent": "沉默", "churned": "流失"}


@dataclass(frozen=True)
class _Live:
    """What the reasons conclude from today's data; the shown tiers are the last re-tier's."""

    segment: str | None
    value_tier: str
    engagement: str


def _pending_zh(live: str | None, stored: str | None, names: Mapping[str, str]) -> str:
    """A note when today's data points elsewhere than the stored tier (orders since the last re-tier)."""
    if live is None or live == stored:
        return ""
    if stored is None:
        return f"（尚未分层：下次重算后为「{names.get(live, live)}」）"
    shown, next_ = names.get(stored, stored), names.get(live, live)
    return f"（显示的「{shown}」来自上次重算；依据最新数据，下次重算后为「{next_}」）"


def _value_rule(policy: TierPolicy, amount: int, orders: int, activity: str) -> str:
    return next((r.name for r in policy.value_rules if r.matches(amount, orders, activity)), policy.value_default)


def _engagement_of(policy: TierPolicy, days: int | None) -> str:
    """The engagement rule on the days since the latest order, interaction or joining (retier's _engagement)."""
    if days is not None and days <= policy.active_days:
        return "active"
    return "silent" if days is not None and days <= policy.silent_days else "churned"


_FLOOR_ZH = {"potential": "潜在", "intent": "意向"}


def _channel_floor(session: Session, customer_id: int, policy: TierPolicy) -> tuple[str, str] | None:
    """The channel (state, starting stage) that holds this customer's stage up, the highest if several."""
    stages = dict(policy.channel_stages)
    if not stages:
        return None
    states = session.scalars(select(Follow.state).where(Follow.customer_id == customer_id,
                                                        Follow.state.in_(list(stages)),
                                                        Follow.ended_at.is_(None))).all()
    order = {"potential": 1, "intent": 2}
    return max(((state, stages[state]) for state in states), key=lambda pair: order[pair[1]], default=None)


def _last_touches(customer: Customer, last_day: int | None, as_of: date, tz: ZoneInfo) -> dict[str, Any]:
    """Days since the last paid order, the last interaction and joining, as the engagement rule reads
    them (English and Chinese)."""
    def days_since(moment: datetime | None) -> int | None:
        if moment is None:
            return None
        aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        return (as_of - aware.astimezone(tz).date()).days

    order = as_of.toordinal() - last_day if last_day is not None else None
    touch, joined = days_since(customer.last_interaction_at), days_since(customer.created_at)
    facts = [("last paid order", "最近下单", order), ("last interaction", "最近互动", touch),
             ("joined", "添加", joined)]
    en = ", ".join(f"{name} {n} days ago" if n is not None else f"no {name}" for name, _, n in facts if n is not None
                   or name != "joined")
    zh = "，".join(f"{name} {n} 天前" if n is not None else f"无{name.removeprefix('最近')}" for _, name, n in facts
                  if n is not None or name != "添加")
    return {"en": en, "zh": zh, "days": min((n for _, _, n in facts if n is not None), default=None)}


@dataclass(frozen=True)
class _Facts:
    orders: int
    amount_fen: int
    last_day: int | None
    as_of_day: int
    activity: str
    activity_score: int
    touches: str = ""
    floor: tuple[str, str] | None = None


_LEVELS = {"high": "高", "mid": "中", "low": "低"}


def _why_zh(f: _Facts, stats: Any, policy: TierPolicy, customer: Customer,
            tier_names: Mapping[str, str]) -> dict[str, str]:
    why: dict[str, str] = {}
    if f.orders and f.last_day is not None and stats.n:
        mean_r = stats.mean_r_days(f.as_of_day)
        mean_f, mean_m = stats.sum_orders / stats.n, stats.sum_amount_fen / stats.n
        high = {"r": f.last_day * stats.n > stats.sum_last_day, "f": f.orders * stats.n > stats.sum_orders,
                "m": f.amount_fen * stats.n > stats.sum_amount_fen}
        word = {k: "高" if v else "低" for k, v in high.items()}
        why["r"] = (f"R {word['r']}：最近一次下单在 {f.as_of_day - f.last_day} 天前，平均 {mean_r:.1f} 天"
                    f"（{quintile_of(f.last_day, stats.cuts_last_day)}/5 分）")
        why["f"] = (f"F {word['f']}：{f.orders} 笔实付订单，平均 {mean_f:.2f} 笔"
                    f"（{quintile_of(f.orders, stats.cuts_orders)}/5 分）")
        why["m"] = (f"M {word['m']}：累计 {fen_to_yuan(f.amount_fen)} 元，平均 {mean_m / 100:.2f} 元"
                    f"（{quintile_of(f.amount_fen, stats.cuts_amount_fen)}/5 分）")
        segment = segment_of(f.last_day, f.orders, f.amount_fen, stats)
        why["rfm_segment"] = f"R/F/M 各与全体买家的平均比高低，得出「{SEGMENT_NAMES[segment]}」"
    else:
        why["rfm_segment"] = "暂无实付订单，未分群"
    def name(code: str) -> str:
        return tier_names.get(code, code)

    rule = next((r for r in policy.value_rules if r.matches(f.amount_fen, f.orders, f.activity)), None)
    bought = (f"累计实付 {fen_to_yuan(f.amount_fen)} 元、{f.orders} 笔订单、"
              f"互动活跃度{_LEVELS.get(f.activity, f.activity)}")
    if rule is not None:
        why["value_tier"] = f"{bought}，满足{name(rule.name)}的条件：{rule.describe_zh()}"
    else:
        needs = "；".join(f"{name(r.name)}需{r.describe_zh()}" for r in policy.value_rules)
        why["value_tier"] = f"{bought}，未满足任何规则（{needs}），归为{name(policy.value_default)}"
    why["stage"] = (f"{f.orders} 笔实付订单、{fen_to_yuan(f.amount_fen)} 元；满 {policy.super_min_orders} 笔"
                    + (f"且满 {fen_to_yuan(policy.super_min_amount_fen)} 元" if policy.super_min_amount_fen else "")
                    + "为超级用户"
                    + ("" if policy.stage_path == "ecommerce" or f.orders else
                       "；未下单时，有意向标签为意向，互动过为潜在，否则为陌生")
                    + (f"；经渠道「{f.floor[0]}」添加，至少为{_FLOOR_ZH[f.floor[1]]}" if f.floor else "")
                    + ("" if customer.stage else "（尚未分层）"))
    why["activity"] = (f"近 {policy.activity_window_days} 天互动得分 {f.activity_score}"
                       f"（≥ {policy.activity_high} 为高，≥ {policy.activity_mid} 为中）")
    why["engagement"] = (f"{f.touches}；{policy.active_days} 天内有订单、互动或新添加为活跃，"
                         f"{policy.silent_days} 天内为沉默，更久为流失")
    return why


def _rfm_lines(orders: int, amount: int, last_day: int | None, as_of_day: int, stats: Any,
               customer: Customer) -> dict[str, str]:
    if not orders or last_day is None or not stats.n:
        return {"rfm_segment": "RFM: no segment (no paid orders)"}
    r_days = as_of_day - last_day
    mean_r, mean_f, mean_m = stats.mean_r_days(as_of_day), stats.sum_orders / stats.n, stats.sum_amount_fen / stats.n
    r_high, f_high = last_day * stats.n > stats.sum_last_day, orders * stats.n > stats.sum_orders
    m_high = amount * stats.n > stats.sum_amount_fen
    segment = segment_of(last_day, orders, amount, stats)
    return {
        "r": f"R {'high' if r_high else 'low'}: last order {r_days} days ago, mean {mean_r:.1f} "
        f"(score {quintile_of(last_day, stats.cuts_last_day)}/5)",
        "f": f"F {'high' if f_high else 'low'}: {orders} paid orders, mean {mean_f:.2f} "
        f"(score {quintile_of(orders, stats.cuts_orders)}/5)",
        "m": f"M {'high' if m_high else 'low'}: {fen_to_yuan(amount)} 元, mean {mean_m / 100:.2f} "
        f"(score {quintile_of(amount, stats.cuts_amount_fen)}/5)",
        "rfm_segment": f"RFM segment: {SEGMENT_NAMES[segment]} {segment} [{customer.rfm_segment or '-'}], "
        f"customer score [{customer.score if customer.score is not None else '-'}]/100",
    }


def _value_line(policy: TierPolicy, amount: int, orders: int, activity: str, customer: Customer) -> str:
    for rule in policy.value_rules:
        if rule.matches(amount, orders, activity):
            return f"value tier: {rule.name} [{customer.value_tier or '-'}] — {rule.describe()}"
    missed = "; ".join(f"{r.name} needs {r.describe()}" for r in policy.value_rules)
    return f"value tier: {policy.value_default} [{customer.value_tier or '-'}] — no rule matched ({missed})"


def _activity_score(session: Session, customer_id: int, policy: TierPolicy, as_of: date, tz: ZoneInfo) -> int:
    from datetime import timedelta

    from sqlalchemy import case

    start = local_midnight_utc(as_of - timedelta(days=policy.activity_window_days - 1), tz)
    end = local_midnight_utc(as_of + timedelta(days=1), tz)
    weight = case(*[(Interaction.kind == k, w) for k, w in policy.activity_weights], else_=0)
    return int(session.scalar(select(func.coalesce(func.sum(weight), 0)).where(
        Interaction.customer_id == customer_id, Interaction.occurred_at >= start, Interaction.occurred_at < end)) or 0)
