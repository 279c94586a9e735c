"""The re-tier job: every customer's value tier, RFM segment and scores, stage, engagement and
activity, computed in SQL over the per-customer aggregates (no Python loop over customers).

One INSERT … SELECT fills a temporary table with the new values; one more records a TierChange for
each changed dimension of each customer (customers tiered for the first time get a baseline, not a
change); the rows that differ are written to customer_tiers (updated, or inserted for customers
without tiers yet). A first run inserts every customer's values straight into the empty tier table.
Same statements on SQLite and PostgreSQL.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import (
    BigInteger,
    Column,
    Integer,
    MetaData,
    String,
    Table,
    and_,
    case,
    cast,
    exists,
    false,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from bot.core.db import sqlite_foreign_keys_off
from bot.models import (
    Channel,
    Customer,
    CustomerAggregate,
    CustomerTag,
    CustomerTier,
    Follow,
    Interaction,
    Order,
    Tag,
    TierChange,
    utcnow,
)
from segments.incremental import ROW_ID, Scope, last_run, policy_digest, record_run
from segments.localdays import keep_local_days
from segments.policy import TierPolicy, floor_stages, local_midnight_utc
from segments.rfm import PopulationStats, aggregate_stats, flag, high, population_stats, quintile, segment_case

DIMENSIONS = ("value_tier", "rfm_segment", "stage", "engagement", "activity")
SCORE_COLUMNS = ("r_score", "f_score", "m_score", "score", "activity_score")
COLUMNS = DIMENSIONS + SCORE_COLUMNS
MASS_CHANGE_ROWS = 100_000
INDEX_BUILD_MEMORY = "256MB"
WORK_MEM = "64MB"
TIERED_BIT = 1 << len(DIMENSIONS)  # in the result table's change mask: the customer had been tiered before
Move = tuple[str, str | None, str | None, int]  # dimension, from (None: not tiered before), to, customers


@dataclass(frozen=True)
class Changed:
    """Whom a re-tier changed, for rules that react to tier changes (the tier-entered auto-tags), as
    SELECTs of customer ids valid inside its transaction (see :meth:`entered`)."""

    first_time: Any  # tiered for the first time in a run that is not a first tiering (TierChanges too, after one)
    as_of: date
    last_change: int  # the highest TierChange id before the run
    first: bool  # a first tiering: every customer entered its values

    def entered(self, dimension: str, value: str) -> Any:
        """The customers who took ``value`` on ``dimension`` in this run: by its TierChanges (through
        their index), or tiered for the first time."""
        if self.first:
            return select(CustomerTier.customer_id).where(getattr(CustomerTier, dimension) == value)
        moved = select(TierChange.customer_id).where(
            TierChange.dimension == dimension, TierChange.to_value == value, TierChange.as_of == self.as_of,
            TierChange.id > self.last_change)
        return union_all(moved, self.first_time)


# Run inside the re-tier's transaction, before its temporary tables go: the auto-tag rules of
# bot.tagging.system, say. Returns counts (of tags added per rule).
AfterRetier = Callable[[Session, Changed], dict[str, int]]


@dataclass
class RetierResult:
    as_of: date
    customers: int = 0
    updated: int = 0
    changes: dict[str, int] = field(default_factory=dict)
    stats: PopulationStats | None = None
    seconds: float = 0.0
    recomputed: int = 0  # customers looked at: all of them in a full run
    incremental: bool = False
    mass_change: bool = False  # most tier rows were written (PostgreSQL: vacuumed after, see tidy_after_commit)
    first: bool = False  # no customer had tiers before: every one was tiered for the first time (a baseline)
    moves: list[Move] = field(default_factory=list)  # not in a first tiering: every customer moved from None
    after: dict[str, int] = field(default_factory=dict)  # what the ``after`` hook returned
    relocalized: int = 0  # orders moved to their local day after app.timezone changed (segments/localdays.py)


def metrics_source(session: Session, as_of_day: int, tz: ZoneInfo) -> tuple[Any, bool]:
    """Per-customer paid-order metrics as of the day, and whether they are the maintained aggregates
    (else: the as-of day lies before some recorded order, so orders after it are left out)."""
    latest = session.scalar(select(func.max(CustomerAggregate.last_order_at)))  # an index lookup
    if latest is None or latest.astimezone(tz).date().toordinal() <= as_of_day:
        a = CustomerAggregate
        return select(a.customer_id, a.order_count, a.paid_amount_fen, a.last_order_day).subquery("metrics"), True
    return (select(Order.customer_id, func.count().label("order_count"),
                    func.sum(Order.amount_fen).label("paid_amount_fen"),
                    func.max(Order.paid_day).label("last_order_day"))
            .where(Order.status == "paid", Order.paid_day <= as_of_day)
            .group_by(Order.customer_id).subquery("metrics")), False


def retier(session: Session, policy: TierPolicy, as_of: date, tz: ZoneInfo, full: bool = False,
           after: AfterRetier | None = None) -> RetierResult:
    """Recompute tiers as of the local day. Unless ``full``, a run that follows one with the same policy
    recomputes only the customers whose result may differ (segments/incremental.py) — the same result
    as a full run, which tests check. ``after`` runs in the same transaction with whom the run may have
    changed (:class:`Changed`)."""
    started, started_at = time.perf_counter(), utcnow()
    result = RetierResult(as_of=as_of)
    policy = with_channel_stages(session, policy)
    # SQLite: every customer id the run writes (tier rows, TierChanges) comes from the customer table
    # read in this transaction, and a WAL transaction that writes holds the newest snapshot and the only
    # write lock until it commits, so no check per row (first run of 1M customers: the insert
    # 1.80–2.11 s → 1.51–1.63 s). Checks are back on when the connection returns to the pool.
    sqlite_foreign_keys_off(session)
    if session.get_bind().dialect.name == "postgresql":  # hash joins over the population without spilling
        session.connection().exec_driver_sql(f"SET LOCAL work_mem = '{WORK_MEM}'")
    result.relocalized = keep_local_days(session, tz)
    metrics, from_aggregates = metrics_source(session, as_of.toordinal(), tz)
    stats = aggregate_stats(session) if from_aggregates else population_stats(session, metrics)
    result.stats = stats
    digest = policy_digest(policy, tz)
    scope = Scope(session)
    first_time = Scope(session, "retier_first_time")
    previous = last_run(session)
    last_change = session.scalar(select(func.max(TierChange.id))) or 0
    try:
        result.incremental = not full and from_aggregates and Scope.possible(previous, digest, policy, as_of, stats)
        if result.incremental and previous is not None:
            scope.claim_marks()
            scope.widen(previous, policy, as_of, tz, stats)
        else:
            scope.clear_marks()
        result.recomputed = _compute_and_write(session, policy, as_of, tz, metrics, stats, result, scope,
                                               first_time, last_change,
                                               joined_since=previous.started_at if previous is not None else None)
        if after is not None:
            result.after = after(session, Changed(select(first_time.table.c.customer_id), as_of, last_change,
                                                  result.first))
    finally:
        scope.drop()
        first_time.drop()
    result.seconds = time.perf_counter() - started
    record_run(session, result, digest, started_at, from_aggregates)
    return result


def _compute_and_write(session: Session, policy: TierPolicy, as_of: date, tz: ZoneInfo, metrics: Any,
                       stats: PopulationStats, result: RetierResult, scope: Scope, first_time: Scope,
                       last_change: int, joined_since: datetime | None = None) -> int:
    """The new values of every customer (or, in an incremental run, of those in ``scope``) into a
    temporary table, then the changes recorded and the differing rows written; customers tiered for the
    first time go into ``first_time``. Returns how many customers were looked at.

    ``joined_since`` (when the previous run started): customers tiered for the first time who added a
    member since then get TierChanges (from None, or from the stage their channel gave): a new contact
    who buys before the night's re-tier enters first_purchase, and the actions and sequences that start
    there read TierChanges. Every other first tiering is a baseline — the first run of all, contacts an
    import or a sync brings in (their joins are older), stubs of an order import (no follow) — so that
    loading a base never fires an action per customer."""
    looked_at = scope if result.incremental else None
    if looked_at is None and session.scalar(select(CustomerTier.customer_id).limit(1)) is None:
        result.first = True
        return _first_tiering(session, _computed(policy, as_of, tz, metrics, stats, None, with_current=False,
                                                 sqlite=_sqlite(session)),
                              policy, result)
    table = _result_table()
    table.create(session.connection())
    try:
        _fill_result(session, table, _computed(policy, as_of, tz, metrics, stats, looked_at, sqlite=_sqlite(session)),
                     policy)
        if session.get_bind().dialect.name == "postgresql":  # autovacuum never analyzes temporary tables
            session.connection().exec_driver_sql("ANALYZE retier_result")
        result.customers = session.scalar(select(func.count()).select_from(Customer)) or 0
        # A first tiering is a baseline, not a change: a first run has no history to record.
        recorded = _recorded_first_timers(table, joined_since)
        result.changes = _record_changes(session, table, as_of, policy, stats, recorded)
        result.moves = _moves(session, table, last_change, recorded)
        result.updated = _write_changed(session, table, result)
        first_time.add_from(table, f"changes & {TIERED_BIT} = 0")
    finally:
        table.drop(session.connection())
    return scope.size() if looked_at is not None else result.customers


def _recorded_first_timers(table: Table, joined_since: datetime | None) -> Any:
    """SQL on the result table: a customer tiered for the first time whose changes are recorded (one who
    added a member since ``joined_since``), or None when no first tiering is recorded."""
    if joined_since is None:
        return None
    t = table.c
    return and_(t.changes.op("&")(TIERED_BIT) == 0,
                exists().where(Follow.customer_id == t.customer_id, Follow.added_at >= joined_since))


def _moves(session: Session, table: Table, last_change: int, recorded_first_timers: Any = None) -> list[Move]:
    """Customers per (dimension, from, to) of this run, from its own TierChanges (after ``last_change``)
    and, for customers tiered for the first time without TierChanges (a baseline), from the result
    table (before the tier rows are written): no scan of the tier table."""
    recorded = session.execute(select(TierChange.dimension, TierChange.from_value, TierChange.to_value, func.count())
                               .where(TierChange.id > last_change)
                               .group_by(TierChange.dimension, TierChange.from_value, TierChange.to_value)).all()
    moves: list[Move] = [(d, f, t, n) for d, f, t, n in recorded]
    # Tiered for the first time: most have no tier row; a new contact's may hold the stage its channel gave.
    tiers = CustomerTier.__table__
    first_time = (select(table, *[tiers.c[name].label(f"old_{name}") for name in DIMENSIONS])
                  .select_from(table.outerjoin(tiers, tiers.c.customer_id == table.c.customer_id))
                  .where(table.c.changes.op("&")(TIERED_BIT) == 0,
                         *([~recorded_first_timers] if recorded_first_timers is not None else []))
                  .subquery("first_time"))
    for name in DIMENSIONS:
        old, new = first_time.c[f"old_{name}"], first_time.c[name]
        moves += [(name, f, t, n) for f, t, n in session.execute(
            select(old, new, func.count()).group_by(old, new)).all() if f != t]
    return moves


def _first_tiering(session: Session, computed: Any, policy: TierPolicy, result: RetierResult) -> int:
    """No customer has tiers yet (a first run): every customer's values go straight into the empty
    tier table — nothing to compare, no history to record (a first tiering is a baseline), and no
    temporary table."""
    result.customers = session.scalar(select(func.count()).select_from(Customer)) or 0
    result.changes = dict.fromkeys(DIMENSIONS, 0)
    values = {name: computed.c[name] for name in ("customer_id", *COLUMNS) if name != "score"} | {
        "score": case((computed.c.order_count > 0,
                       _score(policy, computed.c.r_score, computed.c.f_score, computed.c.m_score))),
        "tiered_at": literal(utcnow(), type_=CustomerTier.__table__.c.tiered_at.type)}
    result.mass_change = result.customers >= MASS_CHANGE_ROWS
    # No ORDER BY: the plans scan customers in key order already, and sorting 1M computed rows cost
    # SQLite 0.3–1.2 s (a temporary B-tree) and PostgreSQL 0.3–0.6 s (an external merge).
    with _foreign_key_checked_after(session, result.mass_change):
        written = session.execute(insert(CustomerTier.__table__).from_select(list(values), select(*values.values())),
                                  execution_options={"preserve_rowcount": True})
    result.updated = max(written.rowcount or 0, 0)
    return result.customers


def _sqlite(session: Session) -> bool:
    return session.get_bind().dialect.name == "sqlite"


def _computed(policy: TierPolicy, as_of: date, tz: ZoneInfo, metrics: Any, stats: PopulationStats,
              scope: Scope | None, with_current: bool = True, sqlite: bool = False) -> Any:
    """A subquery: each customer's new values (but the score), ``with_current`` beside its current ones."""
    activity = _activity_scores(policy, as_of, tz, scope)
    columns = _computed_columns(policy, as_of, tz, metrics, activity, stats, sqlite)
    tiers = CustomerTier.__table__
    joined = (Customer.__table__.outerjoin(metrics, metrics.c.customer_id == Customer.id)
              .outerjoin(activity, activity.c.customer_id == Customer.id))
    current = []
    if with_current:
        joined = joined.outerjoin(tiers, tiers.c.customer_id == Customer.id)
        current = [tiers.c.tiered_at.label("current_tiered_at")] + [
            tiers.c[name].label(f"current_{name}") for name in COLUMNS]
    # OFFSET 0 keeps the subquery from being merged into the statement that uses it, which would
    # evaluate each expression again wherever it is referred to (SQLite, 1M customers: 2.6 s → 5.4 s).
    # The scope as IN, not a join: SQLite then looks customers up by id instead of scanning them all.
    in_scope = Customer.id.in_(select(scope.table.c.customer_id)) if scope is not None else literal(True)
    return select(*[expr.label(name) for name, expr in columns.items()], *current).select_from(
        joined).where(in_scope).offset(0).subquery("computed")


def _fill_result(session: Session, table: Table, computed: Any, policy: TierPolicy) -> None:
    """Customers whose values differ (or who were never tiered) into the result table, with their
    change mask. The score is built from the r/f/m scores already computed."""
    values = {name: computed.c[name] for name in computed.c.keys() if not name.startswith("current_")} | {
        "score": case((computed.c.order_count > 0,
                       _score(policy, computed.c.r_score, computed.c.f_score, computed.c.m_score)))}
    changed = {name: values[name].is_distinct_from(computed.c[f"current_{name}"]) for name in COLUMNS}
    tiered = computed.c.current_tiered_at.is_not(None)
    masked = select(*[value.label(name) for name, value in values.items()],
                    _change_mask(changed, tiered, _sqlite(session)).label("changes"),
                    or_(~tiered, *(changed[name] for name in SCORE_COLUMNS)).label("scores_differ")
                    ).offset(0).subquery("masked")
    stored = [*values, "changes"]
    session.execute(insert(table).from_select(stored, select(*[masked.c[name] for name in stored]).where(
        or_(masked.c.changes != TIERED_BIT, masked.c.scores_differ))))


def _result_table() -> Table:
    return Table(
        "retier_result", MetaData(),
        Column("customer_id", ROW_ID, primary_key=True),
        *(Column(name, String(32)) for name in DIMENSIONS),
        *(Column(name, Integer) for name in SCORE_COLUMNS),
        Column("r_days", Integer), Column("order_count", Integer), Column("amount_fen", BigInteger),
        Column("changes", Integer),  # see _change_mask
        prefixes=["TEMPORARY"],
    )


def _activity_scores(policy: TierPolicy, as_of: date, tz: ZoneInfo, scope: Scope | None = None) -> Any:
    start, end = activity_window(policy, as_of, tz)
    weight = case(*[(Interaction.kind == kind, w) for kind, w in policy.activity_weights], else_=0) \
        if policy.activity_weights else literal(0)
    query = select(Interaction.customer_id, func.sum(weight).label("score")).where(
        Interaction.occurred_at >= start, Interaction.occurred_at < end)
    if scope is not None:
        query = query.where(Interaction.customer_id.in_(select(scope.table.c.customer_id)))
    return query.group_by(Interaction.customer_id).subquery("activity_scores")


def activity_window(policy: TierPolicy, as_of: date, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """[start, end) of the interactions that count towards activity as of the day."""
    return (local_midnight_utc(as_of - timedelta(days=policy.activity_window_days - 1), tz),
            local_midnight_utc(as_of + timedelta(days=1), tz))


def _computed_columns(policy: TierPolicy, as_of: date, tz: ZoneInfo, metrics: Any, activity_scores: Any,
                      stats: PopulationStats, sqlite: bool = False) -> dict[str, Any]:
    as_of_day = as_of.toordinal()
    orders = func.coalesce(metrics.c.order_count, 0)
    amount = func.coalesce(metrics.c.paid_amount_fen, 0)
    last_day = metrics.c.last_order_day
    activity_score = func.coalesce(activity_scores.c.score, 0)
    activity = case((activity_score >= policy.activity_high, "high"), (activity_score >= policy.activity_mid, "mid"),
                    else_="low")
    buyer = orders > 0
    # Only buyers get scores and a segment, so last_day is never NULL where these are read.
    r_score, f_score, m_score = (quintile(last_day, stats.cuts_last_day, sqlite),
                                 quintile(orders, stats.cuts_orders, sqlite),
                                 quintile(amount, stats.cuts_amount_fen, sqlite))
    return {
        "customer_id": Customer.id,
        "value_tier": _value_tier(policy, amount, orders, activity_score),
        "rfm_segment": case((buyer, segment_case(high(last_day, stats.n, stats.sum_last_day),
                                                 high(orders, stats.n, stats.sum_orders),
                                                 high(amount, stats.n, stats.sum_amount_fen), sqlite))),
        "stage": _stage(policy, orders, amount),
        "engagement": _engagement(policy, as_of, tz, last_day),
        "activity": activity,
        "r_score": case((buyer, r_score)),
        "f_score": case((buyer, f_score)),
        "m_score": case((buyer, m_score)),
        "activity_score": activity_score,
        "r_days": case((buyer, literal(as_of_day) - last_day)),
        "order_count": orders,
        "amount_fen": amount,
    }


def _activity_in(policy: TierPolicy, score: Any, levels: tuple[str, ...]) -> Any:
    """SQL: the activity level of ``score`` is one of ``levels``, compared on the score itself (not on
    the level's name computed from it again)."""
    high, mid = score >= policy.activity_high, score >= policy.activity_mid
    ranges = {"high": high, "mid": and_(mid, score < policy.activity_high),
              "low": and_(score < policy.activity_high, score < policy.activity_mid)}
    wanted = set(levels)
    if wanted >= {"high", "mid", "low"}:
        return literal(True)
    if wanted == {"high", "mid"}:
        return or_(high, mid)
    return or_(*[ranges[level] for level in ("high", "mid", "low") if level in wanted]) if wanted else literal(False)


def _value_tier(policy: TierPolicy, amount: Any, orders: Any, activity_score: Any) -> Any:
    whens = []
    for rule in policy.value_rules:
        conditions = []
        if rule.amount_gt_fen is not None:
            conditions.append(amount > rule.amount_gt_fen)
        if rule.amount_gte_fen is not None:
            conditions.append(amount >= rule.amount_gte_fen)
        if rule.orders_gt is not None:
            conditions.append(orders > rule.orders_gt)
        if rule.orders_gte is not None:
            conditions.append(orders >= rule.orders_gte)
        if rule.activity_in is not None:
            conditions.append(_activity_in(policy, activity_score, tuple(rule.activity_in)))
        whens.append((and_(literal(True), *conditions), rule.name))
    return case(*whens, else_=policy.value_default) if whens else literal(policy.value_default)


def _stage(policy: TierPolicy, orders: Any, amount: Any) -> Any:
    buyer_stages = [(orders == 1, "first_purchase"),
                    (and_(orders >= policy.super_min_orders, amount >= policy.super_min_amount_fen), "super"),
                    (orders >= 2, "repeat")]
    if policy.stage_path == "ecommerce":
        return case((orders == 0, "new"), *buyer_stages)
    intent = exists().where(CustomerTag.customer_id == Customer.id, CustomerTag.removed_at.is_(None),
                            CustomerTag.tag_id == Tag.id, Tag.name.in_(policy.intent_tags))
    return case((and_(orders == 0, or_(intent, _came_through(policy, {"intent"}))), "intent"),
                (and_(orders == 0, or_(Customer.last_interaction_at.is_not(None),
                                       _came_through(policy, {"potential", "intent"}))), "potential"),
                (orders == 0, "stranger"), *buyer_stages)


def _came_through(policy: TierPolicy, stages: set[str]) -> Any:
    """SQL: the customer follows a member they added through a channel whose starting stage is one of
    ``stages`` (a follow that ended — either side removed the other — no longer holds them up)."""
    states = sorted(state for state, stage in policy.channel_stages if stage in stages)
    if not states:
        return false()
    return exists().where(Follow.customer_id == Customer.id, Follow.state.in_(states), Follow.ended_at.is_(None))


def with_channel_stages(session: Session, policy: TierPolicy) -> TierPolicy:
    """The policy with the starting stages of the channel rows (`scrm channels`), which take the place of
    config entries with the same state (as for the add handler)."""
    if policy.stage_path == "ecommerce":
        return policy
    stages = dict(policy.channel_stages)
    for state, stage in session.execute(select(Channel.state, Channel.stage)).all():
        stages[state] = stage
    return replace(policy, channel_stages=floor_stages(policy.stage_path, stages.items()))


def _engagement(policy: TierPolicy, as_of: date, tz: ZoneInfo, last_day: Any) -> Any:
    def touched_since(days: int) -> Any:
        boundary = local_midnight_utc(as_of - timedelta(days=days), tz)
        return or_(last_day >= as_of.toordinal() - days, Customer.last_interaction_at >= boundary,
                   Customer.created_at >= boundary)

    return case((touched_since(policy.active_days), "active"), (touched_since(policy.silent_days), "silent"),
                else_="churned")


def _score(policy: TierPolicy, r: Any, f: Any, m: Any) -> Any:
    wr, wf, wm = policy.score_weights
    den = 4 * (wr + wf + wm)
    points = (r - 1) * wr + (f - 1) * wf + (m - 1) * wm
    return (points * 200 + den) // (2 * den)  # round(100 · points / den), in integers


def _yuan(fen: Any) -> Any:
    text = cast(fen // 100, String) + "." + case((fen % 100 < 10, "0"), else_="") + cast(fen % 100, String)
    return text


def _reason(dimension: str, table: Table, policy: TierPolicy, stats: PopulationStats, as_of: date) -> Any:
    t = table.c
    if dimension == "value_tier":
        return ("paid " + _yuan(t.amount_fen) + " 元 in " + cast(t.order_count, String) + " orders, activity "
                + t.activity)
    if dimension == "rfm_segment":
        if not stats.n:
            return literal("no paid orders")
        means = (f"{stats.mean_r_days(as_of.toordinal()):.1f}", f"{stats.sum_orders / stats.n:.2f}",
                 f"{stats.sum_amount_fen / stats.n / 100:.2f}")
        return case((t.order_count == 0, "no paid orders"), else_=(
            "R " + cast(t.r_days, String) + "d (mean " + means[0] + "), F " + cast(t.order_count, String)
            + " (mean " + means[1] + "), M " + _yuan(t.amount_fen) + " (mean " + means[2] + ")"))
    if dimension == "stage":
        super_rule = (f"super from {policy.super_min_orders} orders"
                      + (f" and {policy.super_min_amount_fen / 100:.2f} 元" if policy.super_min_amount_fen else ""))
        no_order = ("no paid order" if policy.stage_path == "ecommerce" else
                    "no paid order (intent: an intent tag; potential: has interacted; else stranger"
                    + ("; at least the starting stage of the channel they came through" if policy.channel_stages
                       else "") + ")")
        return case((t.order_count == 0, no_order), else_=(
            "paid orders " + cast(t.order_count, String) + ", " + _yuan(t.amount_fen) + " 元 (" + super_rule + ")"))
    if dimension == "activity":
        return ("activity score " + cast(t.activity_score, String) + f" in {policy.activity_window_days} days "
                f"(high ≥ {policy.activity_high}, mid ≥ {policy.activity_mid})")
    rule = (f" (active: an order, interaction or joining within {policy.active_days} days; "
            f"silent: within {policy.silent_days})")
    return case((t.order_count == 0, "no paid order" + rule),
                else_="last paid order " + cast(t.r_days, String) + " days ago" + rule)


def _record_changes(session: Session, table: Table, as_of: date, policy: TierPolicy,
                    stats: PopulationStats, recorded_first_timers: Any = None) -> dict[str, int]:
    """One TierChange per changed dimension of each customer that had been tiered (and of each tiered
    for the first time that ``recorded_first_timers`` selects: from its stored value or None), in one
    statement (one join of the result to the tier table, not one per dimension). Returns the count per
    dimension."""
    c, t = CustomerTier.__table__.c, table.c
    recorded = t.changes.op("&")(TIERED_BIT) == TIERED_BIT
    if recorded_first_timers is not None:
        recorded = or_(recorded, recorded_first_timers)
    counts = dict(zip(DIMENSIONS, session.execute(select(*[
        func.coalesce(func.sum(case((t.changes.op("&")(_bit(name)) == _bit(name), 1), else_=0)), 0)
        for name in DIMENSIONS]).where(recorded)).one(), strict=True))
    if not any(counts.values()):
        return counts
    dimensions = union_all(*[select(literal(name).label("dimension"), literal(_bit(name)).label("bit"))
                             for name, n in counts.items() if n]).subquery("dimensions")
    d = dimensions.c

    def per_dimension(values: dict[str, Any]) -> Any:
        return case(*[(d.dimension == name, value) for name, value in values.items()])

    changed = select(t.customer_id, d.dimension, per_dimension({name: c[name] for name in DIMENSIONS}),
                     per_dimension({name: t[name] for name in DIMENSIONS}), literal(as_of),
                     per_dimension({name: _reason(name, table, policy, stats, as_of) for name in DIMENSIONS}),
                     literal(utcnow())).select_from(
        (table.outerjoin(CustomerTier.__table__, c.customer_id == t.customer_id) if recorded_first_timers is not None
         else table.join(CustomerTier.__table__, c.customer_id == t.customer_id))
        .join(dimensions, t.changes.op("&")(d.bit) == d.bit)).where(recorded)
    session.execute(insert(TierChange).from_select(
        ["customer_id", "dimension", "from_value", "to_value", "as_of", "reason", "created_at"], changed))
    return counts


def _bit(column: str) -> int:
    """A dimension's bit in the change mask; score columns have none (they record no TierChange)."""
    return 1 << DIMENSIONS.index(column) if column in DIMENSIONS else 0


def _change_mask(changed: dict[str, Any], tiered: Any, sqlite: bool = False) -> Any:
    """SQL: a bit per dimension whose value changes, and TIERED_BIT (IS [NOT] DISTINCT comparisons are
    never NULL, so SQLite adds them as 0/1: see rfm.flag)."""
    mask: Any = flag(tiered, sqlite) * TIERED_BIT
    for name in DIMENSIONS:
        mask = mask + flag(changed[name], sqlite) * _bit(name)
    return mask


def _write_changed(session: Session, table: Table, result: RetierResult) -> int:
    """The result table holds only rows that differ, so every one of them is written: tier rows that
    exist are updated, the others inserted. No index holds a tier column (migration 0009), so one
    UPDATE writes them all; PostgreSQL updates them in place (HOT), and a run that wrote most of them
    is vacuumed after (tidy_after_commit)."""
    t, c = table.c, CustomerTier.__table__.c
    result.mass_change = _most_customers(session, select(func.count()).select_from(table))
    if session.get_bind().dialect.name == "sqlite":  # UPDATE … FROM scans every tier row: 0.42 s → 0.19 s
        sql = (f"UPDATE customer_tiers SET ({', '.join(COLUMNS)}, tiered_at) = (SELECT "
               f"{', '.join(f't.{n}' for n in COLUMNS)}, :now FROM retier_result t "
               "WHERE t.customer_id = customer_tiers.customer_id) "
               "WHERE customer_id IN (SELECT customer_id FROM retier_result)")
        written = max(session.execute(text(sql), {"now": _stored_now()}).rowcount or 0, 0)
    else:
        stmt = (update(CustomerTier.__table__).where(c.customer_id == t.customer_id)
                .values(**{name: t[name] for name in COLUMNS}, tiered_at=utcnow()))
        written = max(session.execute(stmt).rowcount or 0, 0)
    new = _untiered(session, table)
    with _foreign_key_checked_after(session, new >= MASS_CHANGE_ROWS):
        return written + _insert_new_rows(session, new)


def _most_customers(session: Session, count: Any) -> bool:
    """Whether the count reaches half of the customers, and 100k."""
    customers = session.scalar(select(func.max(Customer.id))) or 0
    return (session.scalar(count) or 0) >= max(MASS_CHANGE_ROWS, customers // 2)


def _untiered(session: Session, table: Table) -> int:
    """Customers of the result without a tier row (never tiered)."""
    return session.scalar(select(func.count()).where(table.c.changes.op("&")(TIERED_BIT) == 0)) or 0


def _insert_new_rows(session: Session, expected: int) -> int:
    """Tier rows for the ``expected`` customers of the result that have none yet, in key order (none
    expected: the search for them, 0.1–0.3 s after 1% new orders at 1M customers, is not made)."""
    if not expected:
        return 0
    columns = ", ".join(COLUMNS)
    sql = (f"INSERT INTO customer_tiers (customer_id, {columns}, tiered_at) SELECT t.customer_id, "
           f"{', '.join(f't.{n}' for n in COLUMNS)}, :now FROM retier_result t WHERE NOT EXISTS "
           "(SELECT 1 FROM customer_tiers c WHERE c.customer_id = t.customer_id) ORDER BY t.customer_id")
    now = _stored_now() if session.get_bind().dialect.name == "sqlite" else utcnow().replace(tzinfo=None)
    return max(session.execute(text(sql), {"now": now}).rowcount or 0, 0)


@contextmanager
def _foreign_key_checked_after(session: Session, drop: bool) -> Iterator[None]:
    """PostgreSQL, if ``drop`` (100k or more rows inserted): the tier table's foreign key dropped
    inside and validated in one pass after, instead of a check per inserted row, as PostgreSQL's
    "Populating a Database" advises (with any secondary index an operator added, built again after).
    Readers of the tier table wait for this transaction meanwhile (the drop locks it), which is why
    only a mass insert does it. SQLite checks no foreign key during a re-tier (see retier)."""
    if not drop or session.get_bind().dialect.name != "postgresql":
        yield
        return
    conn = session.connection()
    dropped = _postgresql_keys(conn)
    for statement, _ in dropped:
        conn.exec_driver_sql(statement)
    yield
    conn.exec_driver_sql(f"SET LOCAL maintenance_work_mem = '{INDEX_BUILD_MEMORY}'")
    for _, create in dropped:
        conn.exec_driver_sql(create)


def tidy_after_commit(engine: Engine, result: RetierResult) -> None:
    """After the re-tier's transaction committed: on PostgreSQL, when it wrote most tier rows,
    VACUUM (ANALYZE) the tier table, as PostgreSQL advises after bulk writes: the next run and every
    audience query then read neither dead row versions nor stale statistics (autovacuum would get
    there later). VACUUM cannot run inside a transaction, hence a separate step for the callers of
    retier()."""
    if not result.mass_change or engine.dialect.name != "postgresql":
        return
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("VACUUM (ANALYZE) customer_tiers")


def _postgresql_keys(conn: Any) -> list[tuple[str, str]]:
    """(drop, create) statements for every index of customer_tiers but the primary key, and for its
    foreign keys (validated once when added again, instead of a check per written row)."""
    indexes = conn.exec_driver_sql(
        "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE i.indrelid = 'customer_tiers'::regclass AND NOT i.indisprimary").all()
    foreign = conn.exec_driver_sql(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = 'customer_tiers'::regclass AND contype = 'f'").all()
    return [(f'DROP INDEX "{name}"', index_sql) for name, index_sql in indexes] + [
        (f'ALTER TABLE customer_tiers DROP CONSTRAINT "{name}"',
         f'ALTER TABLE customer_tiers ADD CONSTRAINT "{name}" {definition}') for name, definition in foreign]


def _stored_now() -> str:
    """Now as SQLAlchemy stores a DateTime on SQLite, for hand-written SQL."""
    return utcnow().replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def tier_counts(session: Session) -> dict[str, dict[str | None, int]]:
    """Customers per value of each dimension (for before/after tables). Counted over the narrow rows
    of the tier table (0.14–0.30 s per dimension at 1M customers on SQLite), customers without a tier
    row added to None: joining every customer to its tiers cost 0.7–2.4 s per dimension."""
    untiered = (session.scalar(select(func.count()).select_from(Customer)) or 0) - (
        session.scalar(select(func.count()).select_from(CustomerTier)) or 0)
    counts: dict[str, dict[str | None, int]] = {}
    for dimension in DIMENSIONS:
        column = getattr(CustomerTier, dimension)
        counts[dimension] = dict(session.execute(select(column, func.count()).group_by(column)).all())
        if untiered:
            counts[dimension][None] = counts[dimension].get(None, 0) + untiered
    return counts
