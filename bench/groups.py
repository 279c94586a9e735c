"""Customer groups at scale: `scrm groups list` (every group's tier mix) and `scrm groups broadcast
create` (its preview selects groups by members' tier mix and renders one text per group), run end to
end through the CLI, against a floor taken in the same run: the one SQL GROUP BY of members by group
and value tier that the tier mix needs at least.

    python bench/groups.py --groups 2000 --members 100 --customers 100000
    python bench/groups.py --database-url postgresql://USER@HOST:5432/SCRATCH_DB

It writes to the database it is given (SQLite in a temp dir by default): use a scratch database.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import func, insert, select, text

from bot.cli import main
from bot.core.db import make_engine, upgrade_schema
from bot.models import Customer, CustomerGroup, CustomerTier, GroupMember

TIERS = ("high", "mid", "low")
SEGMENTS = ("important_value", "important_develop", "general_retain", "general_develop")


def build(url: str, customers: int, groups: int, members: int, seed: int = 7) -> None:
    engine = make_engine(url)
    if url.startswith("postgresql"):
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    upgrade_schema(engine)
    rng = random.Random(seed)
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(insert(Customer), [{"id": i, "external_userid": f"wm{i:010d}", "name": "", "contact_type": 1,
                                         "gender": 0, "opted_out": False, "created_at": now, "updated_at": now}
                                        for i in range(1, customers + 1)])
        conn.execute(insert(CustomerTier), [{"customer_id": i, "value_tier": rng.choice(TIERS),
                                             "rfm_segment": rng.choice(SEGMENTS)} for i in range(1, customers + 1)])
        conn.execute(insert(CustomerGroup), [{"id": g, "chat_id": f"wr{g:08d}", "name": f"群{g}",
                                              "owner_userid": f"staff{g % 50}", "notice": "", "status": 0,
                                              "member_version": "v", "tags": [], "created_at": now,
                                              "updated_at": now} for g in range(1, groups + 1)])
        rows = []
        for g in range(1, groups + 1):
            for picked in rng.sample(range(1, customers + 1), members):
                known = rng.random() < 0.8
                rows.append({"group_id": g, "member_id": f"wm{picked:010d}" if known else f"wmX{g}_{picked}",
                             "member_type": 2, "customer_id": picked if known else None, "is_admin": False,
                             "name": "", "group_nickname": "", "join_time": now - timedelta(days=1)})
            if len(rows) >= 50_000:
                conn.execute(insert(GroupMember), rows)
                rows = []
        if rows:
            conn.execute(insert(GroupMember), rows)
    if url.startswith("postgresql"):
        with engine.connect() as conn:  # fresh statistics, as autovacuum would have after a real load
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("ANALYZE"))
    engine.dispose()


def timed(func_, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        func_()
        best = min(best, time.perf_counter() - started)
    return best


def main_(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=2000)
    parser.add_argument("--members", type=int, default=100)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--database-url")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'groups.db'}"
        started = time.perf_counter()
        build(url, args.customers, args.groups, args.members)
        print(f"built {args.groups} groups × {args.members} members over {args.customers} customers "
              f"in {time.perf_counter() - started:.1f} s ({url.split(':')[0]})")
        env = {"SCRM_CONFIG": None, "SCRM_DATABASE_URL": url}
        runner = CliRunner(env=env)

        def run(*command: str) -> None:
            result = runner.invoke(main, list(command), catch_exceptions=False)
            assert result.exit_code == 0, result.output

        engine = make_engine(url)

        def floor() -> None:
            with engine.connect() as conn:
                conn.execute(select(GroupMember.group_id, CustomerTier.value_tier, func.count())
                             .join(CustomerTier, CustomerTier.customer_id == GroupMember.customer_id)
                             .where(GroupMember.left_at.is_(None)).group_by(GroupMember.group_id,
                                                                            CustomerTier.value_tier)).all()

        at = (datetime.now(UTC) + timedelta(days=30)).strftime("%Y-%m-%d 10:00")
        counter = iter(range(1000))
        figures = [
            ("floor: one GROUP BY (group, value tier)", timed(floor)),
            ("scrm groups list (all groups, tier mix)", timed(lambda: run("groups", "list", "--limit",
                                                                          str(args.groups)))),
            ("scrm groups broadcast create (mix ≥ 35% high)",
             timed(lambda: run("groups", "broadcast", "create", f"bench{next(counter)}", "--audience",
                               '{"mix": {"tier": "high", "min_share": 0.35}}', "--template",
                               "default={{ group.name }}：新品上架", "--at", at, "--yes"))),
        ]
        engine.dispose()
        base = figures[0][1]
        for name, seconds in figures:
            print(f"{name:48s} {seconds:7.3f} s  ({seconds / base:5.1f}× the floor)")


if __name__ == "__main__":
    main_()
