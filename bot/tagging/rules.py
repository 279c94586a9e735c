"""Auto-tag rules from config: which event or threshold puts which tag on a customer.

Each rule has a ``name`` (recorded on every tag it applies), a ``when`` and a ``tag`` written
``组/标签`` (or just ``标签`` for ``tags.default_group``). Rules are idempotent: a rule tags a
customer once, and never re-adds a tag a member removed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

WHEN_KEYS: dict[str, frozenset[str]] = {
    "kf_keyword": frozenset({"keywords"}),
    "channel": frozenset({"state"}),
    "moment_like": frozenset(),
    "moment_comment": frozenset(),
    "first_order": frozenset(),
    "order_count": frozenset({"gte"}),
    "order_amount": frozenset({"gte"}),
    "coupon_redeemed": frozenset(),
    "tier_entered": frozenset({"dimension", "value"}),
    "group_member": frozenset({"group"}),  # joined the customer group whose chat_id or name is ``group``
}
TIER_DIMENSIONS = ("value_tier", "rfm_segment", "stage", "engagement", "activity")
MAX_TAG_NAME = 30  # WeCom: group and tag names are at most 30 characters
MAX_GTE = 10**12


class RuleError(ValueError):
    """A tag rule or tag name in config is invalid; the message names it."""


@dataclass(frozen=True)
class TagRef:
    group: str
    name: str

    def __str__(self) -> str:
        return f"{self.group}/{self.name}"


def parse_ref(text: Any, default_group: str, where: str = "tag") -> TagRef:
    """``"组/标签"`` or ``"标签"`` → :class:`TagRef` (names trimmed, 1–30 characters)."""
    if not isinstance(text, str) or not text.strip():
        raise RuleError(f"{where} must be a tag name like 组/标签")
    group, _, name = text.strip().rpartition("/")
    group, name = (group.strip() or default_group), name.strip()
    for part in (group, name):
        if not part or len(part) > MAX_TAG_NAME:
            raise RuleError(f"{where}: group and tag names must be 1–{MAX_TAG_NAME} characters, got {text!r}")
    return TagRef(group, name)


@dataclass(frozen=True)
class TagRule:
    name: str
    when: str
    tag: TagRef
    keywords: tuple[str, ...] = ()
    state: str = ""
    gte: Decimal = Decimal(0)
    dimension: str = ""
    value: str = ""
    group: str = ""

    def matches_text(self, text: str) -> bool:
        folded = text.casefold()
        return any(k.casefold() in folded for k in self.keywords)


@dataclass(frozen=True)
class TagRules:
    rules: tuple[TagRule, ...]
    default_group: str
    aliases: dict[str, TagRef]

    def when(self, kind: str) -> list[TagRule]:
        return [r for r in self.rules if r.when == kind]

    @classmethod
    def from_settings(cls, settings: Any) -> TagRules:
        tags = settings.tags
        default_group = tags.default_group.strip()
        if not default_group or len(default_group) > MAX_TAG_NAME:
            raise RuleError(f"tags.default_group must be 1–{MAX_TAG_NAME} characters")
        rules, names = [], set()
        for i, raw in enumerate(tags.rules):
            rule = _parse_rule(raw, default_group, f"tags.rules[{i}]")
            if rule.name in names:
                raise RuleError(f"tags.rules[{i}]: rule name {rule.name!r} is used twice")
            names.add(rule.name)
            rules.append(rule)
        aliases = {}
        for alias, target in tags.aliases.items():
            if not isinstance(alias, str) or not alias.strip() or len(alias.strip()) > MAX_TAG_NAME:
                raise RuleError(f"tags.aliases: alias {alias!r} must be a tag name of 1–{MAX_TAG_NAME} characters")
            aliases[alias.strip()] = parse_ref(target, default_group, f"tags.aliases.{alias}")
        return cls(tuple(rules), default_group, aliases)


def _parse_rule(raw: Any, default_group: str, where: str) -> TagRule:
    if not isinstance(raw, dict):
        raise RuleError(f"{where} must be a table with name, when and tag")
    name, when = raw.get("name"), raw.get("when")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_]{1,64}", name):
        raise RuleError(f"{where}.name must be 1–64 letters, digits or _")
    if when not in WHEN_KEYS:
        raise RuleError(f"{where}.when must be one of {sorted(WHEN_KEYS)}, got {when!r}")
    allowed = {"name", "when", "tag"} | WHEN_KEYS[when]
    unknown, missing = set(raw) - allowed, WHEN_KEYS[when] - set(raw)
    if unknown or missing:
        raise RuleError(f"{where} ({when}): unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
    rule: dict[str, Any] = {"name": name, "when": when, "tag": parse_ref(raw.get("tag"), default_group, f"{where}.tag")}
    if when == "kf_keyword":
        keywords = raw["keywords"]
        if not isinstance(keywords, list) or not keywords or not all(
                isinstance(k, str) and k.strip() for k in keywords):
            raise RuleError(f"{where}.keywords must be a non-empty list of words")
        rule["keywords"] = tuple(k.strip() for k in keywords)
    elif when == "channel":
        if not isinstance(raw["state"], str) or not raw["state"]:
            raise RuleError(f"{where}.state must be the channel's State")
        rule["state"] = raw["state"]
    elif when in ("order_count", "order_amount"):
        try:
            gte = Decimal(str(raw["gte"]))
        except InvalidOperation:
            raise RuleError(f"{where}.gte must be a number") from None
        if isinstance(raw["gte"], bool) or not gte.is_finite() or gte < 0 or (
                when == "order_count" and gte != gte.to_integral_value()):
            raise RuleError(f"{where}.gte must be a non-negative {'whole ' if when == 'order_count' else ''}number")
        if gte > MAX_GTE:  # beyond any order count or amount, and beyond a database integer
            raise RuleError(f"{where}.gte must be at most {MAX_GTE:,}")
        rule["gte"] = gte
    elif when == "tier_entered":
        if raw["dimension"] not in TIER_DIMENSIONS:
            raise RuleError(f"{where}.dimension must be one of {list(TIER_DIMENSIONS)}")
        if not isinstance(raw["value"], str) or not raw["value"]:
            raise RuleError(f"{where}.value must be a tier value such as high or important_value")
        rule["dimension"], rule["value"] = raw["dimension"], raw["value"]
    elif when == "group_member":
        if not isinstance(raw["group"], str) or not raw["group"].strip():
            raise RuleError(f"{where}.group must be a customer group's chat_id or name")
        rule["group"] = raw["group"].strip()
    return TagRule(**rule)
