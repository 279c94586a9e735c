"""Which customers a re-tier must look at again, given the run before it.

A customer's tiers are a function of its own inputs (order aggregates, interactions, its own row) and
of the population statistics (the means and quintile cut points of R, F and M) under the policy. So
after a run, a customer's result can only differ if

* its aggregates changed — every order writer marks it in ``tier_dirty``;
* it has an interaction the last run did not see (interaction ids after the last run's highest);
* its own row was edited after it was tiered, or it was never tiered;
* its R, F or M compares differently with a mean or cut point that moved (the statistics moved);
* the as-of day moved and one of its clocks (last order, last interaction, joined) or an interaction
  crossed an engagement or activity-window boundary on the way.

Everything else needs a full run: another policy or time zone, an as-of day before the last one or
before some order (metrics then come from the orders), the high-ticket stage path (tag-driven), or a
population that was or became empty. The customer-row rules are one scan of customers, the others
index ranges; the union is the scope.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import BigInteger, Column, Integer, MetaData, Table, func, select, text
from sqlalchemy.orm import Session

from bot.models import Interaction, TierRun
from segments.policy import TierPolicy, local_midnight_utc
from segments.rfm import PopulationStats

EDIT_MARGIN = timedelta(minutes=10)  # edits stamped before the last run began but committed after it
INTERACTION_MARGIN = 10_000  # ids allocated before the last run's highest but committed after it
# A customer id key for temporary tables: SQLite makes INTEGER PRIMARY KEY the rowid (no separate index).
ROW_ID = BigInteger().with_variant(Integer(), "sqlite")


def policy_digest(policy: TierPolicy, tz: ZoneInfo) -> str:
    return hashlib.sha256(repr((policy, tz.key)).encode()).hexdigest()


def last_run(session: Session) -> TierRun | None:
    return session.scalar(select(TierRun).order_by(TierRun.id.desc()).limit(1))


def record_run(session: Session, result: Any, digest: str, started_at: datetime, from_aggregates: bool) -> None:
    """``from_aggregates``: the run tiered by the maintained aggregates. A run as of a day before some
    order (metrics from the orders up to that day) keeps no statistics, so the next run is full."""
    stats = asdict(result.stats) if result.stats and from_aggregates else {}
    session.add(TierRun(as_of=result.as_of, policy_digest=digest, full=not result.incremental,
                        stats=stats, max_interaction_id=session.scalar(select(func.max(Interaction.id))) or 0,
                        recomputed=result.recomputed, started_at=started_at, seconds=result.seconds))
    session.flush()


class Scope:
    """The customers a run recomputes, in a temporary table."""

    def __init__(self, session: Session, name: str = "retier_scope") -> None:
        self.session = session
        self.dialect = session.get_bind().dialect.name
        self.table = Table(name, MetaData(), Column("customer_id", ROW_ID, primary_key=True),
                           prefixes=["TEMPORARY"])
        self.table.create(session.connection())

    def clear_marks(self) -> None:
        """A full run reads everything after this: the marks are no longer needed."""
        self.session.connection().exec_driver_sql("DELETE FROM tier_dirty")

    def claim_marks(self) -> None:
        """Take the dirty marks into the scope and remove them, before any data is read: a writer
        committing later marks its customers again, for the next run."""
        conn = self.session.connection()
        if self.dialect == "postgresql":
            conn.exec_driver_sql("WITH taken AS (DELETE FROM tier_dirty RETURNING customer_id) "
                                 "INSERT INTO retier_scope SELECT customer_id FROM taken")
        else:  # one writer at a time: the marks read are the marks deleted
            conn.exec_driver_sql("INSERT INTO retier_scope SELECT customer_id FROM tier_dirty")
            conn.exec_driver_sql("DELETE FROM tier_dirty WHERE customer_id IN (SELECT customer_id FROM retier_scope)")

    @staticmethod
    def possible(previous: TierRun | None, digest: str, policy: TierPolicy, as_of: date,
                 stats: PopulationStats) -> bool:
        """Whether a run can be incremental after ``previous`` (see the module's docstring)."""
        if previous is None or not previous.stats or previous.policy_digest != digest \
                or as_of < previous.as_of or policy.stage_path != "ecommerce":
            return False
        old = PopulationStats(**previous.stats)
        return bool(old.n and stats.n and len(old.cuts_orders) == len(stats.cuts_orders))

    def widen(self, previous: TierRun, policy: TierPolicy, as_of: date, tz: ZoneInfo,
              stats: PopulationStats) -> None:
        """Add every customer whose result may differ from ``previous`` (after :meth:`claim_marks`)."""
        old = PopulationStats(**previous.stats)
        self._add_customer_rows(previous, policy, as_of, tz)
        self._add("SELECT DISTINCT customer_id FROM interactions WHERE id > :after",
                  after=previous.max_interaction_id - INTERACTION_MARGIN)
        self._add_moved_statistics(old, stats)
        if as_of > previous.as_of:
            self._add_moved_orders_and_interactions(policy, previous.as_of, as_of, tz)

    def _add_moved_statistics(self, old: PopulationStats, new: PopulationStats) -> None:
        """Buyers whose comparison with a threshold flips: every comparison is ``v > t`` on integers
        (a quintile's ``v > cut``; ``v · n > sum``, the mean's, is ``v > floor(sum / n)``), so moving t
        from t0 to t1 flips exactly v in (min, max]. A value on the lower threshold compares the same
        both times, and a mean whose floor stays put flips nobody (after 1% more orders at 1M
        customers the inclusive ranges took in about 250,000 customers whose result could not move)."""
        for column, old_sum, new_sum, old_cuts, new_cuts in (
                ("last_order_day", old.sum_last_day, new.sum_last_day, old.cuts_last_day, new.cuts_last_day),
                ("order_count", old.sum_orders, new.sum_orders, old.cuts_orders, new.cuts_orders),
                ("paid_amount_fen", old.sum_amount_fen, new.sum_amount_fen, old.cuts_amount_fen,
                 new.cuts_amount_fen)):
            thresholds = [*zip(old_cuts, new_cuts, strict=True), (old_sum // old.n, new_sum // new.n)]
            for low, high in sorted({(min(pair), max(pair)) for pair in thresholds if pair[0] != pair[1]}):
                self._add(f"SELECT customer_id FROM customer_aggregates WHERE order_count > 0 "
                          f"AND {column} > :low AND {column} <= :high", low=low, high=high)

    def _add_customer_rows(self, previous: TierRun, policy: TierPolicy, as_of: date, tz: ZoneInfo) -> None:
        """One pass over the customers (cheaper, over a night's worth of tier writes, than keeping
        four more indexes current on every customer update): never tiered, edited after tiered, or —
        when the as-of day moved — last interaction or join time across an engagement boundary."""
        conditions = ["t.tiered_at IS NULL", "(c.updated_at >= :since AND c.updated_at > t.tiered_at)"]
        params: dict[str, Any] = {"since": _stored_time(previous.started_at - EDIT_MARGIN, self.dialect)}
        if as_of > previous.as_of:
            for i, days in enumerate((policy.active_days, policy.silent_days)):
                params[f"low{i}"], params[f"high{i}"] = self._instants(
                    previous.as_of - timedelta(days=days), as_of - timedelta(days=days - 1), tz)
                conditions += [f"({column} >= :low{i} AND {column} < :high{i})"
                               for column in ("c.last_interaction_at", "c.created_at")]
        self._add("SELECT c.id FROM customers c LEFT JOIN customer_tiers t ON t.customer_id = c.id "
                  f"WHERE {' OR '.join(conditions)}", **params)

    def _add_moved_orders_and_interactions(self, policy: TierPolicy, before: date, after: date,
                                           tz: ZoneInfo) -> None:
        """Buyers whose last order crossed an engagement boundary between the days, and customers with
        an interaction that entered or left the activity window."""
        for days in (policy.active_days, policy.silent_days):
            self._add("SELECT customer_id FROM customer_aggregates WHERE order_count > 0 "
                      "AND last_order_day BETWEEN :low AND :high",
                      low=(before - timedelta(days=days)).toordinal(), high=(after - timedelta(days=days)).toordinal())
        window = policy.activity_window_days
        for since, until in ((before - timedelta(days=window - 1), after - timedelta(days=window - 1)),
                             (before + timedelta(days=1), after + timedelta(days=1))):
            low, high = self._instants(since, until, tz)
            self._add("SELECT DISTINCT customer_id FROM interactions WHERE occurred_at >= :low AND occurred_at < :high",
                      low=low, high=high)

    def _instants(self, since: date, until: date, tz: ZoneInfo) -> tuple[Any, Any]:
        return (_stored_time(local_midnight_utc(since, tz), self.dialect),
                _stored_time(local_midnight_utc(until, tz), self.dialect))

    def _add(self, select_sql: str, **params: Any) -> None:
        self.session.execute(text(f"INSERT INTO {self.table.name} (customer_id) SELECT * FROM ({select_sql}) AS s "
                                  "WHERE TRUE ON CONFLICT (customer_id) DO NOTHING"), params)

    def add_from(self, table: Table, where: str = "TRUE") -> None:
        """Add the customers of another temporary table (the re-tier's result, another scope)."""
        self._add(f"SELECT customer_id FROM {table.name} WHERE {where}")

    def size(self) -> int:
        return self.session.scalar(select(func.count()).select_from(self.table)) or 0

    def drop(self) -> None:
        self.table.drop(self.session.connection())


def _stored_time(moment: datetime, dialect: str) -> Any:
    """A UTC instant as UTCDateTime stores it, for hand-written SQL (SQLite: SQLAlchemy's text format)."""
    naive = moment.astimezone(UTC).replace(tzinfo=None)
    return naive.isoformat(sep=" ", timespec="microseconds") if dialect == "sqlite" else naive
