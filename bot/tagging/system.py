"""Local tag store: canonical tags (aliases folded), tagging and untagging customers with history,
rule application (per event and set-based over aggregates), merging and the consistency check."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, Select, String, and_, exists, func, insert, literal, select, update
from sqlalchemy.orm import Session

from bot.models import (
    CustomerAggregate,
    CustomerTag,
    CustomerTier,
    SyncCursor,
    Tag,
    TagAlias,
    TagGroup,
    UTCDateTime,
    utcnow,
)
from bot.tagging.rules import TagRef, TagRule, TagRules, parse_ref

FEN_PER_YUAN = 100


def canonical_ref(session: Session, rules: TagRules, ref: TagRef) -> TagRef:
    """Fold a synonym onto its canonical tag: config aliases first, then merged-tag aliases."""
    if ref.name in rules.aliases:
        return rules.aliases[ref.name]
    row = session.execute(
        select(TagGroup.name, Tag.name).join(Tag, Tag.group_id == TagGroup.id)
        .join(TagAlias, TagAlias.tag_id == Tag.id).where(TagAlias.alias == ref.name)
    ).first()
    return TagRef(row[0], row[1]) if row else ref


def ensure_tag(session: Session, ref: TagRef) -> Tag:
    group = session.scalar(select(TagGroup).where(TagGroup.name == ref.group))
    if group is None:
        group = TagGroup(name=ref.group)
        session.add(group)
        session.flush()
    tag = session.scalar(select(Tag).where(Tag.group_id == group.id, Tag.name == ref.name))
    if tag is None:
        tag = Tag(group_id=group.id, name=ref.name)
        session.add(tag)
        session.flush()
    return tag


def resolve(session: Session, rules: TagRules, text: str) -> Tag:
    return ensure_tag(session, canonical_ref(session, rules, parse_ref(text, rules.default_group)))


def tag_customer(session: Session, customer_id: int, tag: Tag, *, source: str, rule: str | None = None,
                 added_by: str | None = None, push: bool = True, at: datetime | None = None) -> bool:
    """Put ``tag`` on the customer; True if it was not there. A rule never re-adds a tag that was
    removed (a member's decision wins over automation); a member or WeCom may."""
    row = session.scalar(select(CustomerTag).where(CustomerTag.customer_id == customer_id,
                                                   CustomerTag.tag_id == tag.id))
    if row is not None and row.removed_at is None:
        return False
    if row is not None and source == "rule":
        return False
    if row is None:
        row = CustomerTag(customer_id=customer_id, tag_id=tag.id)
        session.add(row)
    row.source, row.rule, row.added_by = source, rule, added_by
    row.added_at, row.removed_at, row.removed_by = at or utcnow(), None, None
    row.push_state, row.push_error = ("add" if push else None), None
    session.flush()
    return True


def untag_customer(session: Session, customer_id: int, tag: Tag, *, removed_by: str | None,
                   push: bool = True) -> bool:
    row = session.scalar(select(CustomerTag).where(CustomerTag.customer_id == customer_id,
                                                   CustomerTag.tag_id == tag.id, CustomerTag.removed_at.is_(None)))
    if row is None:
        return False
    row.removed_at, row.removed_by = utcnow(), removed_by
    # A tag never pushed to WeCom needs no removal there.
    row.push_state = None if row.push_state == "add" or not push else "remove"
    session.flush()
    return True


def live_tag_names(session: Session, customer_id: int) -> list[str]:
    rows = session.execute(
        select(TagGroup.name, Tag.name).join(Tag, Tag.group_id == TagGroup.id)
        .join(CustomerTag, CustomerTag.tag_id == Tag.id)
        .where(CustomerTag.customer_id == customer_id, CustomerTag.removed_at.is_(None)).order_by(Tag.name)
    )
    return [f"{g}/{n}" for g, n in rows]


# ---------------------------------------------------------------- rules


def apply_rules(session: Session, rules: TagRules, customer_id: int, kind: str, *, text: str = "",
                state: str = "", push: bool = True) -> list[str]:
    """Apply every rule of one event kind to one customer; returns the tags newly put on."""
    applied = []
    for rule in rules.when(kind):
        if kind == "kf_keyword" and not rule.matches_text(text):
            continue
        if kind == "channel" and rule.state != state:
            continue
        tag = ensure_tag(session, canonical_ref(session, rules, rule.tag))
        if tag_customer(session, customer_id, tag, source="rule", rule=rule.name, push=push):
            applied.append(str(rule.tag))
    return applied


def apply_aggregate_rules(session: Session, rules: TagRules, push: bool = True,
                          customer_ids: list[int] | Select[Any] | None = None,
                          entered: Callable[[str, str], Any] | None = None,
                          progress: Callable[[str], None] | None = None) -> dict[str, int]:
    """Order-threshold and tier rules for every customer, or only for ``customer_ids`` (a list, or a
    SELECT of ids: the customers whose aggregates may have changed); a tier rule, given ``entered``,
    only for ``entered(dimension, value)`` (a SELECT: who entered it). One INSERT … SELECT per rule
    over the aggregates or the tier rows, no Python loop over customers. A rule set that differs from
    the one the last pass over every customer applied (a rule added or changed) is applied to every
    customer, since customers who already qualified did not change. Returns tags added per rule;
    ``progress`` is told each rule's name once it is done."""
    digest = _aggregate_rules_digest(rules)
    if customer_ids is not None and _cursor_value(session, AGGREGATE_RULES_CURSOR) != digest:
        customer_ids = None
    added: dict[str, int] = {}
    for rule in rules.rules:
        added_now = _apply_aggregate_rule(session, rules, rule, push, customer_ids, entered)
        if added_now is not None:
            added[rule.name] = added_now
        if progress:
            progress(rule.name)
    if customer_ids is None:
        _save_cursor_value(session, AGGREGATE_RULES_CURSOR, digest)
    return added


def _apply_aggregate_rule(session: Session, rules: TagRules, rule: Any, push: bool,
                          customer_ids: list[int] | Select[Any] | None,
                          entered: Callable[[str, str], Any] | None) -> int | None:
    """Tags one rule adds (None: the rule is not an order-threshold or tier rule)."""
    source = _aggregate_source(rule)
    if source is None:
        return None
    customer_id, condition = source
    wanted = customer_ids
    if wanted is not None and entered is not None and rule.when == "tier_entered":
        wanted = entered(rule.dimension, rule.value)
    if isinstance(wanted, list) and not wanted:
        return 0
    tag = ensure_tag(session, canonical_ref(session, rules, rule.tag))
    already = exists().where(CustomerTag.customer_id == customer_id, CustomerTag.tag_id == tag.id)
    rows = (select(customer_id, literal(tag.id, Integer), literal("rule", String), literal(rule.name, String),
                   literal(utcnow(), UTCDateTime), literal("add" if push else None, String))
            .where(condition, ~already))
    if wanted is not None:
        rows = rows.where(customer_id.in_(wanted))
    return _insert_counted(session, tag, rows)


def after_retier(rules: TagRules, push: bool = True) -> Callable[[Session, Any], dict[str, int]]:
    """For ``retier(after=…)``, inside its transaction: the tier-entered rules for those who entered a
    value (its segments.retier.Changed). The order rules are the order writers' (import, API): a re-tier
    changes no aggregate, so it applies them only when the rules changed (to everyone)."""
    return lambda session, changed: apply_aggregate_rules(session, rules, push, [], changed.entered)


def _insert_counted(session: Session, tag: Tag, rows: Any) -> int:
    """INSERT … SELECT the rows into customer_tags; how many. psycopg 3 reports no row count for it, so
    PostgreSQL counts the tag's rows (by its index) before and after; SQLite's count is exact."""
    statement = insert(CustomerTag.__table__).from_select(
        ["customer_id", "tag_id", "source", "rule", "added_at", "push_state"], rows)
    if session.get_bind().dialect.name == "sqlite":  # counting 1M rows of a tag twice cost more than the insert
        return max(session.execute(statement, execution_options={"preserve_rowcount": True}).rowcount or 0, 0)
    count = select(func.count()).select_from(CustomerTag).where(CustomerTag.tag_id == tag.id)
    before = session.scalar(count) or 0
    session.execute(statement)
    return (session.scalar(count) or 0) - before


AGGREGATE_RULES_CURSOR = "tags:aggregate_rules"  # the digest of the rules the last pass over everyone applied


def _aggregate_rules_digest(rules: TagRules) -> str:
    aggregate = [rule for rule in rules.rules if _aggregate_source(rule) is not None]
    return hashlib.sha256(repr((aggregate, sorted(rules.aliases.items()))).encode()).hexdigest()


def _cursor_value(session: Session, name: str) -> str | None:
    return session.scalar(select(SyncCursor.cursor).where(SyncCursor.name == name))


def _save_cursor_value(session: Session, name: str, value: str) -> None:
    """An upsert: two order requests may both find the digest missing and both save it."""
    if _cursor_value(session, name) == value:
        return
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as upsert
    else:
        from sqlalchemy.dialects.sqlite import insert as upsert
    statement = upsert(SyncCursor).values(name=name, cursor=value, updated_at=utcnow())
    session.execute(statement.on_conflict_do_update(index_elements=[SyncCursor.name],
                                                    set_={"cursor": value, "updated_at": utcnow()}))


def _aggregate_source(rule: TagRule) -> tuple[Any, Any] | None:
    """(customer id column, condition) of a rule over one narrow table: the order aggregates, or the
    tier rows (read through them, not the wide customer rows); None for an event rule."""
    a = CustomerAggregate
    if rule.when == "first_order":
        return a.customer_id, a.order_count >= 1
    if rule.when == "order_count":
        return a.customer_id, a.order_count >= int(rule.gte)
    if rule.when == "order_amount":
        return a.customer_id, a.paid_amount_fen >= int(rule.gte * FEN_PER_YUAN)
    if rule.when == "tier_entered":
        return CustomerTier.customer_id, getattr(CustomerTier, rule.dimension) == rule.value
    return None


# ---------------------------------------------------------------- merge and check


@dataclass
class MergeResult:
    moved: int = 0
    already_had: int = 0


def merge_tags(session: Session, rules: TagRules, source_text: str, target_text: str,
               by: str = "merge") -> MergeResult:
    """Move every customer from tag A to tag B, keep A's rows as history, fold A onto B."""
    source_ref = parse_ref(source_text, rules.default_group, "tag A")
    target = ensure_tag(session, canonical_ref(session, rules, parse_ref(target_text, rules.default_group, "tag B")))
    source = session.scalar(select(Tag).join(TagGroup).where(TagGroup.name == source_ref.group,
                                                              Tag.name == source_ref.name))
    if source is None:
        raise LookupError(f"no tag {source_ref}")
    if source.deleted and session.scalar(select(TagAlias.tag_id).where(TagAlias.alias == source.name)) is not None:
        raise ValueError(f"{source_ref} was merged already: it is an alias now, nothing to move")
    if source.id == target.id:
        if target_text.strip() != source_text.strip():
            raise ValueError(f"{target_text.strip()} is an alias of {source_ref} (merged into it); a merge is not "
                             "undone by merging back")
        raise ValueError("a tag cannot be merged into itself")
    result = MergeResult()
    holders = session.scalars(select(CustomerTag).where(CustomerTag.tag_id == source.id,
                                                        CustomerTag.removed_at.is_(None))).all()
    for row in holders:
        if tag_customer(session, row.customer_id, target, source=row.source, rule=row.rule,
                        added_by=row.added_by or by):
            result.moved += 1
        else:
            result.already_had += 1
        untag_customer(session, row.customer_id, source, removed_by=by)
    if session.scalar(select(TagAlias).where(TagAlias.alias == source.name)) is None:
        session.add(TagAlias(alias=source.name, tag_id=target.id))
    source.deleted = True
    session.flush()
    return result


_SUFFIXES = ("客户", "用户", "人群", "会员", "类", "型", "的")


def normalize_tag_name(name: str) -> str:
    """Same after folding width, case, spaces, punctuation and common suffixes → near-duplicate."""
    text = unicodedata.normalize("NFKC", name).casefold()
    text = re.sub(r"[\s\W_]+", "", text)
    for suffix in _SUFFIXES:
        if text.endswith(suffix) and len(text) > len(suffix):
            text = text[: -len(suffix)]
            break
    return text


@dataclass
class TagReport:
    near_duplicates: list[list[tuple[str, int]]] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    aliases: list[tuple[str, str]] = field(default_factory=list)


def check_tags(session: Session) -> TagReport:
    usage = dict(session.execute(
        select(CustomerTag.tag_id, func.count()).where(CustomerTag.removed_at.is_(None)).group_by(CustomerTag.tag_id)
    ).all())
    rows = session.execute(select(Tag.id, TagGroup.name, Tag.name).join(TagGroup)
                           .where(Tag.deleted.is_(False)).order_by(TagGroup.name, Tag.name)).all()
    groups: dict[str, list[tuple[str, int]]] = defaultdict(list)
    report = TagReport()
    for tag_id, group, name in rows:
        groups[normalize_tag_name(name)].append((f"{group}/{name}", usage.get(tag_id, 0)))
        if not usage.get(tag_id):
            report.unused.append(f"{group}/{name}")
    report.near_duplicates = [names for names in groups.values() if len(names) > 1]
    report.aliases = [(a, f"{g}/{n}") for a, g, n in session.execute(
        select(TagAlias.alias, TagGroup.name, Tag.name).join(Tag, Tag.id == TagAlias.tag_id).join(TagGroup)
        .order_by(TagAlias.alias))]
    return report


def mark_pushed(session: Session, customer_id: int, tag_ids: list[int], error: str | None = None) -> None:
    if not tag_ids:
        return
    values: dict[str, Any] = {"push_error": error} if error else {"push_state": None, "push_error": None}
    session.execute(update(CustomerTag).where(and_(CustomerTag.customer_id == customer_id,
                                                   CustomerTag.tag_id.in_(tag_ids))).values(**values))
