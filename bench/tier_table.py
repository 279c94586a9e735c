"""Should tiers live in their own narrow table? A first re-tier as the code does it now (UPDATE of
every customer row, indexes dropped and built again, VACUUM on PostgreSQL) against a prototype that
writes the same computed values into a new table of tiers only and builds its keys afterwards.

    pip install -e '.[bench]'
    python bench/tier_table.py --customers 1000000 --orders 10000000 \
        [--no-sqlite] [--pg-url postgresql://root@127.0.0.1:5432/test]   # uses (and resets) schema scrm_bench

Same data as bench/tiering.py (its generator and its files under --work). Per database: the orders
are imported once; then the prototype runs and commits into its own table ``tier_table_prototype``
(customers untouched); then the real first re-tier runs on the same state, and every customer's
values are compared with the prototype's before its table is dropped. Both
figures include the commit (and the prototype's ANALYZE / the re-tier's VACUUM on PostgreSQL). The
prototype records no history; a first run has none to record.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiering  # noqa: E402  (bench/tiering.py: data, fresh databases, the import phase)

PROTOTYPE = "tier_table_prototype"
TIER_INDEXES = ("value_tier, rfm_segment", "rfm_segment", "stage", "activity")


def prototype_first_run(db, policy, tz) -> float:
    """The computed values of every customer into a new narrow table, then its keys and indexes."""
    from sqlalchemy import MetaData, Table, case, insert, literal, select

    from bot.models import utcnow
    from segments import retier as engine
    from segments.rfm import aggregate_stats

    postgres = db.engine.dialect.name == "postgresql"
    started = time.perf_counter()
    with db.begin() as session:
        conn = session.connection()
        if postgres:
            conn.exec_driver_sql(f"SET LOCAL work_mem = '{engine.WORK_MEM}'")
        metrics, _ = engine.metrics_source(session, tiering.AS_OF.toordinal(), tz)
        computed = engine._computed(policy, tiering.AS_OF, tz, metrics, aggregate_stats(session), None)
        key = "customer_id bigint NOT NULL" if postgres else "customer_id INTEGER PRIMARY KEY"
        conn.exec_driver_sql(
            f"CREATE TABLE {PROTOTYPE} ({key}, value_tier varchar(32), rfm_segment varchar(32), "
            "r_score smallint, f_score smallint, m_score smallint, score smallint, stage varchar(32), "
            "engagement varchar(32), activity varchar(32), activity_score integer, tiered_at timestamp)")
        table = Table(PROTOTYPE, MetaData(), autoload_with=conn)
        c = computed.c
        values = {"customer_id": c.customer_id, "value_tier": c.value_tier, "rfm_segment": c.rfm_segment,
                  "r_score": c.r_score, "f_score": c.f_score, "m_score": c.m_score,
                  "score": case((c.order_count > 0, engine._score(policy, c.r_score, c.f_score, c.m_score))),
                  "stage": c.stage, "engagement": c.engagement, "activity": c.activity,
                  "activity_score": c.activity_score, "tiered_at": literal(utcnow())}
        session.execute(insert(table).from_select(list(values), select(*values.values())))
        if postgres:
            conn.exec_driver_sql(f"SET LOCAL maintenance_work_mem = '{engine.INDEX_BUILD_MEMORY}'")
            conn.exec_driver_sql(f"ALTER TABLE {PROTOTYPE} ADD PRIMARY KEY (customer_id)")
        for i, columns in enumerate(TIER_INDEXES):
            conn.exec_driver_sql(f"CREATE INDEX ix_{PROTOTYPE}_{i} ON {PROTOTYPE} ({columns})")
        if postgres:
            conn.exec_driver_sql(f"ALTER TABLE {PROTOTYPE} ADD FOREIGN KEY (customer_id) "
                                 "REFERENCES customers (id) ON DELETE CASCADE")
    if postgres:
        with db.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(f"ANALYZE {PROTOTYPE}")
    return time.perf_counter() - started


def compare(url: str) -> dict:
    from zoneinfo import ZoneInfo

    from bot.config import load_settings
    from bot.db import Database
    from segments.policy import TierPolicy
    from segments.retier import retier, tidy_after_commit

    settings = load_settings(overrides={"database": {"url": url}}, environ={})
    db = Database(settings.database)
    tz = ZoneInfo("Asia/Shanghai")
    policy = TierPolicy.from_settings(settings.tiers)
    narrow = prototype_first_run(db, policy, tz)
    started = time.perf_counter()
    with db.begin() as session:
        result = retier(session, policy, tiering.AS_OF, tz)
    tidy_after_commit(db.engine, result)
    current = time.perf_counter() - started
    with db.begin() as session:
        differing = session.scalar(_differing(session))
        session.connection().exec_driver_sql(f"DROP TABLE {PROTOTYPE}")
    db.dispose()
    return {"narrow": narrow, "current": current, "customers": result.customers, "differing": differing}


def _differing(session):
    """Customers whose prototype row differs from what the re-tier wrote (or who have none)."""
    from sqlalchemy import MetaData, Table, func, or_, select

    from bot.models import Customer
    from segments.retier import COLUMNS

    table = Table(PROTOTYPE, MetaData(), autoload_with=session.connection())
    c = Customer.__table__.c
    return select(func.count()).select_from(c.id.table.outerjoin(table, table.c.customer_id == c.id)).where(
        or_(table.c.customer_id.is_(None), *(table.c[name].is_distinct_from(c[name]) for name in COLUMNS)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--orders", type=int, default=10_000_000)
    parser.add_argument("--work", type=Path, default=Path("bench-data"))
    parser.add_argument("--gen", type=Path, default=tiering.GEN)
    parser.add_argument("--sqlite", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--pg-url", default="")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    orders, _ = tiering.generate(args.work, args.customers, args.orders, args.gen)
    targets = ([("SQLite", "sqlite")] if args.sqlite else []) + ([("PostgreSQL", args.pg_url)] if args.pg_url else [])
    for label, url in targets:
        url = tiering.fresh_database(url, args.work)
        imported = tiering.run_phase("import", url, orders)
        print(f"{label}: imported {imported['rows']:,} orders in {imported['seconds']:.1f}s", flush=True)
        figures = compare(url)
        print(f"{label}: first re-tier of {figures['customers']:,} customers — current (customer rows updated) "
              f"{figures['current']:.2f}s; prototype (new narrow tier table) {figures['narrow']:.2f}s; "
              f"{figures['current'] / figures['narrow']:.1f}× faster; customers whose values differ: "
              f"{figures['differing']:,}", flush=True)


if __name__ == "__main__":
    main()
