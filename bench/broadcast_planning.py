"""Broadcast planning benchmark: one run to a large audience (filter, contact policy, hold-out,
render, outbox rows) on SQLite, against a baseline in the same run.

    python bench/broadcast_planning.py --customers 1000000 [--db-url sqlite:////tmp/bench.db]

It builds its own customers (tiers, owners who follow them, 1% opted out, 3% already pushed today
so the brand cap skips them), then times:
  - baseline: the bare INSERT … SELECT of one outbox row per customer, no policy, no hold-out
    (the floor any planner writing one row per customer pays);
  - preview: counts per tier, skip reasons, hold-out, samples (writes nothing);
  - plan, tier texts: the full planner with one template per tier (rendered once per tier);
  - plan, personal texts: the same with a template that names the customer (rendered per row);
and prints each figure, the ratio to the baseline, and the check that every customer got exactly
one row. Goal (issue #5): the tier-text plan of 1M customers ≤ 20 s on SQLite.
"""

from __future__ import annotations

import argparse
import random
import resource
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import String, cast, delete, func, insert, literal, select

from bot.campaigns.broadcasts import BroadcastSpec, create_broadcast, plan_run, preview
from bot.core.config import load_settings
from bot.core.db import Database
from bot.models import Broadcast, BroadcastRun, Customer, CustomerTier, Follow, OutboxMessage, Staff

TZ = ZoneInfo("Asia/Shanghai")
RUN_AT = datetime(2026, 11, 24, 10, 0, tzinfo=TZ)
TIERS = [("high", 0.08), ("mid", 0.27), ("low", 0.65)]
SEGMENTS = ["important_value", "important_develop", "important_keep", "important_retain", "general_value",
            "general_develop", "general_keep", "general_retain", None]
TIER_TEMPLATES = {"default": "{{ brand }}：本周上新，回复「退订」不再接收。",
                  "high": "{{ tier_name }}会员专享：新品抢先看，专属客服为您服务。",
                  "important_retain": "好久不见！{{ brand }}为您准备了回归礼。"}
PERSONAL_TEMPLATES = {"default": "{{ customer.name }}您好，{{ brand }}本周上新。",
                      "high": "尊敬的{{ customer.name }}，{{ tier_name }}会员专享新品抢先看。"}


def build(db: Database, customers: int, staff: int, chunk: int = 100_000) -> None:
    rng = random.Random(7)
    weights = [w for _, w in TIERS]
    names = [t for t, _ in TIERS]
    with db.begin() as s:
        s.execute(insert(Staff), [{"userid": f"staff{i:03d}", "name": f"员工{i}"} for i in range(staff)])
        staff_ids = list(s.scalars(select(Staff.id).order_by(Staff.id)))
    added = RUN_AT - timedelta(days=100)
    for start in range(0, customers, chunk):
        rows, tiers, follows = [], [], []
        for n in range(start, min(start + chunk, customers)):
            owner = n % staff
            rows.append({"id": n + 1, "external_userid": f"wm{n:08d}", "name": f"客户{n}",
                         "owner_userid": f"staff{owner:03d}", "opted_out": rng.random() < 0.01,
                         "contact_type": 1, "gender": 0})
            tiers.append({"customer_id": n + 1, "value_tier": rng.choices(names, weights)[0],
                          "rfm_segment": rng.choice(SEGMENTS)})
            follows.append({"customer_id": n + 1, "staff_id": staff_ids[owner], "remark": "", "description": "",
                            "added_at": added})
        with db.begin() as s:
            s.execute(insert(Customer), rows)
            s.execute(insert(CustomerTier), tiers)
            s.execute(insert(Follow), follows)
    with db.begin() as s:  # 3% already had a push today: the brand's daily cap skips them
        capped = rng.sample(range(1, customers + 1), customers * 3 // 100)
        s.execute(insert(OutboxMessage), [
            {"dedupe_key": f"earlier:{cid}", "channel": "mass_message", "customer_id": cid, "recipient": "x",
             "trigger_kind": "greeting", "trigger_ref": "earlier", "content": {"text": "t"}, "status": "confirmed",
             "scheduled_at": RUN_AT - timedelta(hours=1)} for cid in capped])


def timed(label: str, fn, results: dict) -> object:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    value = fn()
    results[label] = time.perf_counter() - started
    return value


def baseline(db: Database) -> None:
    with db.begin() as s:
        s.execute(insert(OutboxMessage).from_select(
            ["dedupe_key", "channel", "customer_id", "recipient", "sender_userid", "trigger_kind", "trigger_ref",
             "content", "status", "attempts", "scheduled_at", "created_at", "updated_at"],
            select(literal("baseline:") + cast(Customer.id, String), literal("mass_message"), Customer.id,
                   Customer.external_userid, Customer.owner_userid, literal("baseline"), literal("baseline"),
                   literal('{"text": "本周上新"}'), literal("pending"), literal(0),
                   literal(RUN_AT.replace(tzinfo=None)), literal(RUN_AT.replace(tzinfo=None)),
                   literal(RUN_AT.replace(tzinfo=None)))))


def drop_baseline(db: Database) -> None:
    with db.begin() as s:
        s.execute(delete(OutboxMessage).where(OutboxMessage.trigger_kind == "baseline"))


def plan(db: Database, settings, name: str, templates: dict, run_at: datetime) -> BroadcastRun:  # type: ignore[no-untyped-def]
    with db.begin() as s:
        broadcast = create_broadcast(s, settings, BroadcastSpec(name, {}, templates, send_at=run_at), run_at)
        run = plan_run(s, settings, broadcast, run_at, now=run_at).run
        s.expunge(run)
        return run


def trace(db: Database) -> None:
    from sqlalchemy import event

    @event.listens_for(db.engine, "before_cursor_execute")
    def started(conn, cursor, statement, params, context, executemany):  # type: ignore[no-untyped-def]
        conn.info["started"] = time.perf_counter()

    @event.listens_for(db.engine, "after_cursor_execute")
    def finished(conn, cursor, statement, params, context, executemany):  # type: ignore[no-untyped-def]
        took = time.perf_counter() - conn.info.pop("started", time.perf_counter())
        if took > 0.2:
            print(f"  [sql {took:6.2f}s] {' '.join(statement.split())[:100]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--staff", type=int, default=200)
    parser.add_argument("--db-url", help="default: a fresh SQLite file in a temporary directory")
    parser.add_argument("--trace", action="store_true", help="print every SQL statement that took over 0.2 s")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="scrm-bench-"))
    url = args.db_url or f"sqlite:///{work / 'bench.db'}"
    settings = load_settings(overrides={"database": {"url": url}}, environ={})
    db = Database(settings.database)
    db.upgrade()
    if args.trace:
        trace(db)
    results: dict[str, float] = {}
    timed("build", lambda: build(db, args.customers, args.staff), results)
    print(f"{args.customers:,} customers, {args.staff} staff on {db.dialect}; built in {results['build']:.1f}s")
    timed("baseline", lambda: baseline(db), results)
    drop_baseline(db)
    with db.sessions() as s:
        spec = BroadcastSpec("preview", {}, TIER_TEMPLATES, send_at=RUN_AT)
        shown = timed("preview", lambda: preview(s, settings, spec, RUN_AT), results)
    run = timed("plan_tier", lambda: plan(db, settings, "上新", TIER_TEMPLATES, RUN_AT), results)
    later = RUN_AT + timedelta(days=7)  # a week on: the first run's rows do not cap the second
    personal = timed("plan_personal", lambda: plan(db, settings, "点名", PERSONAL_TEMPLATES, later), results)
    with db.sessions() as s:
        rows = s.scalar(select(func.count()).select_from(OutboxMessage).where(OutboxMessage.trigger_ref.like(
            "broadcast_run:%")))
        broadcasts = s.scalar(select(func.count()).select_from(Broadcast))
    base = results["baseline"]
    print(f"baseline INSERT … SELECT of {args.customers:,} bare rows: {base:.2f}s")
    for key, label in (("preview", "preview (counts, skips, hold-out, samples)"),
                       ("plan_tier", "plan, one text per tier"), ("plan_personal", "plan, text per customer")):
        print(f"{label:44s} {results[key]:7.2f}s  ({results[key] / base:.1f}× baseline)")
    print(f"tier-text plan: audience {run.audience:,}, to send {run.to_send:,}, held out {run.held_out:,}, "
          f"skipped {dict(run.skipped)}")
    print(f"preview said: audience {shown.audience:,}, to send ≈{shown.to_send:,}, held out ≈"  # type: ignore[attr-defined]
          f"{sum(shown.held_out.values()):,}")  # type: ignore[attr-defined]
    print(f"personal plan: to send {personal.to_send:,}, held out {personal.held_out:,}")  # type: ignore[attr-defined]
    print(f"one row per customer per run: {rows == 2 * args.customers} ({rows:,} rows, {broadcasts} broadcasts)")
    goal = results["plan_tier"] <= 20 if args.customers >= 1_000_000 else None
    print(f"goal ≤ 20 s for 1M (tier texts): {'met' if goal else 'not met' if goal is False else 'n/a (<1M)'}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB; data in {work}")


if __name__ == "__main__":
    main()
