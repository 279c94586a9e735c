"""The tier policy: every threshold, weight and window, validated from ``[tiers]`` settings."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

from segments.money import fen_to_yuan, number_to_fen

ACTIVITY_LEVELS = ("high", "mid", "low")
STAGE_PATHS = {
    "ecommerce": ("new", "first_purchase", "repeat", "super"),
    "high_ticket": ("stranger", "potential", "intent", "first_purchase", "repeat", "super"),
}
# The stages of a path a customer holds before a first order, lowest first.
PRE_PURCHASE = {"ecommerce": ("new",), "high_ticket": ("stranger", "potential", "intent")}
ENGAGEMENT_STATES = ("active", "silent", "churned")
RULE_KEYS = {"name", "amount_gt", "amount_gte", "orders_gt", "orders_gte", "activity_in"}


def local_midnight_utc(day: date, tz: ZoneInfo) -> datetime:
    """The UTC instant the local day begins."""
    return datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)


class PolicyError(ValueError):
    """A tier setting is invalid; the message names the key."""


@dataclass(frozen=True)
class ValueRule:
    name: str
    amount_gt_fen: int | None = None
    amount_gte_fen: int | None = None
    orders_gt: int | None = None
    orders_gte: int | None = None
    activity_in: tuple[str, ...] | None = None

    def describe(self) -> str:
        parts = []
        if self.amount_gt_fen is not None:
            parts.append(f"amount > {fen_to_yuan(self.amount_gt_fen)}")
        if self.amount_gte_fen is not None:
            parts.append(f"amount ≥ {fen_to_yuan(self.amount_gte_fen)}")
        if self.orders_gt is not None:
            parts.append(f"orders > {self.orders_gt}")
        if self.orders_gte is not None:
            parts.append(f"orders ≥ {self.orders_gte}")
        if self.activity_in is not None:
            parts.append(f"activity in {'/'.join(self.activity_in)}")
        return " and ".join(parts) or "always"

    def describe_zh(self) -> str:
        """The rule in Chinese, for staff pages."""
        levels = {"high": "高", "mid": "中", "low": "低"}
        parts = []
        if self.amount_gt_fen is not None:
            parts.append(f"累计实付 > {fen_to_yuan(self.amount_gt_fen)} 元")
        if self.amount_gte_fen is not None:
            parts.append(f"累计实付 ≥ {fen_to_yuan(self.amount_gte_fen)} 元")
        if self.orders_gt is not None:
            parts.append(f"订单 > {self.orders_gt} 笔")
        if self.orders_gte is not None:
            parts.append(f"订单 ≥ {self.orders_gte} 笔")
        if self.activity_in is not None:
            parts.append("互动活跃度为" + "/".join(levels.get(a, a) for a in self.activity_in))
        return "且".join(parts) or "无条件"

    def matches(self, paid_fen: int, orders: int, activity: str) -> bool:
        """The same test the SQL CASE makes (used to explain one customer)."""
        return ((self.amount_gt_fen is None or paid_fen > self.amount_gt_fen)
                and (self.amount_gte_fen is None or paid_fen >= self.amount_gte_fen)
                and (self.orders_gt is None or orders > self.orders_gt)
                and (self.orders_gte is None or orders >= self.orders_gte)
                and (self.activity_in is None or activity in self.activity_in))


@dataclass(frozen=True)
class TierPolicy:
    value_rules: tuple[ValueRule, ...]
    value_default: str
    stage_path: str
    super_min_orders: int
    super_min_amount_fen: int
    intent_tags: tuple[str, ...]
    activity_window_days: int
    activity_weights: tuple[tuple[str, int], ...]
    activity_high: int
    activity_mid: int
    active_days: int
    silent_days: int
    score_weights: tuple[int, int, int]
    # (channel state, starting stage) for the stages before a first order above the path's first: on the
    # high-ticket path a customer a channel brings in never drops below its stage until they buy.
    channel_stages: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, settings: Any) -> TierPolicy:
        """The policy of ``[tiers]``, with the starting stages of ``[contacts] channels``."""
        return cls.from_settings(settings.tiers, getattr(settings.contacts, "channels", None))

    @classmethod
    def from_settings(cls, t: Any, channels: Mapping[str, Any] | None = None) -> TierPolicy:
        rules = tuple(_rule(i, spec) for i, spec in enumerate(_list("tiers.value_rules", t.value_rules)))
        names = [r.name for r in rules] + [t.value_default]
        if len(set(names)) != len(names) or not t.value_default:
            raise PolicyError("tiers.value_rules names and tiers.value_default must be distinct and non-empty")
        if t.stage_path not in STAGE_PATHS:
            raise PolicyError(f"tiers.stage_path must be one of {sorted(STAGE_PATHS)}, got {t.stage_path!r}")
        weights = t.activity_weights
        if not isinstance(weights, dict) or not all(isinstance(k, str) and _nonneg_int(v) for k, v in weights.items()):
            raise PolicyError("tiers.activity_weights must map interaction kinds to whole numbers ≥ 0")
        _require(t.activity_high > t.activity_mid >= 0, "tiers.activity_high must be > tiers.activity_mid ≥ 0")
        _require(t.activity_window_days >= 1, "tiers.activity_window_days must be ≥ 1")
        reply_days = getattr(t, "campaign_reply_days", 0)
        _require(isinstance(reply_days, int) and 0 <= reply_days <= 30, "tiers.campaign_reply_days must be 0–30 days")
        _require(0 < t.active_days < t.silent_days, "tiers.active_days must be > 0 and < tiers.silent_days")
        _require(t.super_min_orders >= 2, "tiers.super_min_orders must be ≥ 2")
        score = (t.score_weight_r, t.score_weight_f, t.score_weight_m)
        _require(all(w >= 0 for w in score) and sum(score) > 0, "tiers.score_weight_r/f/m must be ≥ 0, not all 0")
        tags = _list("tiers.intent_tags", t.intent_tags)
        _require(all(isinstance(x, str) and x for x in tags), "tiers.intent_tags must be tag names")
        return cls(
            value_rules=rules, value_default=t.value_default, stage_path=t.stage_path,
            super_min_orders=t.super_min_orders,
            super_min_amount_fen=_fen("tiers.super_min_amount", t.super_min_amount),
            intent_tags=tuple(tags), activity_window_days=t.activity_window_days,
            activity_weights=tuple(sorted(weights.items())), activity_high=t.activity_high,
            activity_mid=t.activity_mid, active_days=t.active_days, silent_days=t.silent_days, score_weights=score,
            channel_stages=floor_stages(t.stage_path, ((state, (entry or {}).get("stage"))
                                                       for state, entry in (channels or {}).items())))

    @property
    def value_tiers(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.value_rules) + (self.value_default,)

    @property
    def stages(self) -> tuple[str, ...]:
        return STAGE_PATHS[self.stage_path]


def floor_stages(stage_path: str, channel_stages: Iterable[tuple[str, str | None]]) -> tuple[tuple[str, str], ...]:
    """The (state, stage) pairs that raise a customer without orders above the path's first stage; a buyer
    stage a channel names is left to the orders (a channel cannot make anyone a buyer)."""
    above_first = PRE_PURCHASE.get(stage_path, ())[1:]
    return tuple(sorted((state, stage) for state, stage in channel_stages if stage in above_first))


def _rule(index: int, spec: Any) -> ValueRule:
    key = f"tiers.value_rules[{index}]"
    if not isinstance(spec, dict):
        raise PolicyError(f"{key} must be a table")
    unknown = set(spec) - RULE_KEYS
    if unknown:
        raise PolicyError(f"{key} has unknown keys {sorted(unknown)} (known: {sorted(RULE_KEYS)})")
    name = spec.get("name")
    if not isinstance(name, str) or not name or len(name) > 32:
        raise PolicyError(f"{key}.name must be a name of 1–32 characters")
    activity = spec.get("activity_in")
    if activity is not None and (not isinstance(activity, list) or not set(activity) <= set(ACTIVITY_LEVELS)):
        raise PolicyError(f"{key}.activity_in must be a list of {list(ACTIVITY_LEVELS)}")
    for count_key in ("orders_gt", "orders_gte"):
        if count_key in spec and not _nonneg_int(spec[count_key]):
            raise PolicyError(f"{key}.{count_key} must be a whole number ≥ 0")
    return ValueRule(
        name=name,
        amount_gt_fen=_fen(f"{key}.amount_gt", spec["amount_gt"]) if "amount_gt" in spec else None,
        amount_gte_fen=_fen(f"{key}.amount_gte", spec["amount_gte"]) if "amount_gte" in spec else None,
        orders_gt=spec.get("orders_gt"), orders_gte=spec.get("orders_gte"),
        activity_in=tuple(activity) if activity is not None else None)


def _fen(key: str, value: Any) -> int:
    if isinstance(value, bool):
        raise PolicyError(f"{key} must be an amount in 元")
    try:
        fen = number_to_fen(value)
    except ValueError as exc:
        raise PolicyError(f"{key}: {exc}") from None
    if fen < 0:
        raise PolicyError(f"{key} must not be negative")
    return fen


def _list(key: str, value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise PolicyError(f"{key} must be a list")
    return value


def _nonneg_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise PolicyError(message)
