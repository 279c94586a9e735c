"""Tiering benchmark: order import rate, first and incremental re-tier, against pandas on the same data.

    pip install -e '.[bench]'
    python bench/tiering.py --customers 1000000 --orders 10000000 \
        [--pg-url postgresql://root@127.0.0.1:5432/test]   # uses (and resets) schema scrm_bench

Data comes from ../shared/tools/gen_orders.py (deterministic). Each database phase runs in its own
process so its peak memory (max RSS) is its own. Printed: the insert-rate floor (ready-made rows into
the order table by the driver's fastest path: a ceiling for any importer; and the same with the bulk-load
measures the importer takes for a big load), import rows/s per database, first re-tier
and incremental re-tier (after 1% new orders) seconds, the pandas baseline (RFM eight segments from
an in-memory DataFrame), the ratios to it, peak memory, and whether both give the same segment counts.

SQLite also times the whole `scrm retier` command, as the nightly job runs it, from the same state as
each re-tier: the engine runs on a copy of the database file, the command (a process of its own:
start, imports, re-tier, auto-tags, report) on the database itself, with its clock at the as-of day
(a re-tier as of another day is a dry run). After each import the auto-tag rules are applied as
`scrm import-orders` applies them (not timed), so the command finds the database an operator has.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

PACKAGES = ("bot", "segments", "handlers", "templates")
AS_OF = date(2025, 6, 30)  # gen_orders.py's default window ends 2025-07-01 00:00 +08:00
GEN = Path(__file__).resolve().parents[2] / "shared" / "tools" / "gen_orders.py"
SEGMENTS = {(True, True, True): "important_value", (True, False, True): "important_develop",
            (False, True, True): "important_keep", (False, False, True): "important_retain",
            (True, True, False): "general_value", (True, False, False): "general_develop",
            (False, True, False): "general_keep", (False, False, False): "general_retain"}


def generate(work: Path, customers: int, orders: int, gen: Path) -> tuple[Path, Path]:
    out = work / f"orders_{customers}_{orders}.csv"
    extra = work / f"orders_{customers}_{orders}_plus1pct.csv"
    if not out.exists():
        subprocess.run([sys.executable, str(gen), "--customers", str(customers), "--orders", str(orders),
                        "--seed", "7", "--out", str(out), "--customers-out", str(work / "customers.csv")], check=True)
    if not extra.exists():
        import pandas as pd

        ids = pd.read_csv(out, usecols=["external_userid"], dtype="string").external_userid
        sample = ids.drop_duplicates().sample(frac=1.0, random_state=1).head(max(1, orders // 100))
        sample = sample.sample(n=max(1, orders // 100), replace=True, random_state=2)
        pd.DataFrame({"order_id": [f"new-{i}" for i in range(len(sample))], "external_userid": sample.values,
                      "amount": "128.00", "paid_at": "2025-06-30T20:00:00+08:00"}).to_csv(extra, index=False)
    return out, extra


def pandas_baseline(path: Path) -> dict:
    import numpy as np
    import pandas as pd

    started = time.perf_counter()
    df = pd.read_csv(path, dtype={"order_id": "string", "external_userid": "string", "amount": "string",
                                  "paid_at": "string"}, engine="pyarrow")
    df["amount_fen"] = (df.amount.astype("float64") * 100).round().astype("int64")
    df["day"] = (pd.to_datetime(df.paid_at.str.slice(0, 10)).values.astype("datetime64[D]").astype("int64")
                 + date(1970, 1, 1).toordinal())
    frame = df[["external_userid", "amount_fen", "day"]]
    parse = time.perf_counter() - started
    started = time.perf_counter()
    g = frame.groupby("external_userid", sort=False).agg(F=("day", "size"), M=("amount_fen", "sum"),
                                                           last=("day", "max"))
    r = AS_OF.toordinal() - g["last"].to_numpy()
    f, m = g.F.to_numpy(), g.M.to_numpy()
    code = (r < r.mean()).astype(np.int8) * 4 + (f > f.mean()).astype(np.int8) * 2 + (m > m.mean()).astype(np.int8)
    names = [SEGMENTS[(bool(c & 4), bool(c & 2), bool(c & 1))] for c in range(8)]
    counts = dict(zip(names, np.bincount(code, minlength=8).tolist(), strict=True))
    compute = time.perf_counter() - started
    return {"parse_s": parse, "compute_s": compute, "counts": counts}


def phase(kind: str, url: str, path: str) -> dict:
    """Runs inside a child process: one import or one re-tier, timed, with this process's peak RSS."""
    from zoneinfo import ZoneInfo

    from sqlalchemy import func, select

    from bot.core.config import load_settings
    from bot.core.db import Database
    from bot.models import CustomerTier
    from segments.imports import import_orders
    from segments.policy import TierPolicy
    from segments.retier import retier, tidy_after_commit

    settings = load_settings(overrides={"database": {"url": url}}, environ={})
    db = Database(settings.database)
    tz = ZoneInfo("Asia/Shanghai")
    out: dict = {}
    if kind in ("floor", "bulk-floor"):
        return insert_floor(db, int(path), bulk=kind == "bulk-floor")
    started, cpu_started = time.perf_counter(), time.process_time()
    with db.begin() as session:
        if kind == "import":
            summary = import_orders(session, Path(path), tz)
            out["rows"] = summary.read
            out["skipped"] = summary.skipped
        else:
            result = retier(session, TierPolicy.of(settings), AS_OF, tz)
            out.update(updated=result.updated, recomputed=result.recomputed, incremental=result.incremental)
    if kind == "retier":
        tidy_after_commit(db.engine, result)
    out["seconds"] = time.perf_counter() - started  # the work and its commit; not the check below
    out["cpu_seconds"] = time.process_time() - cpu_started  # on a shared machine, steadier than the wall clock
    if kind == "import":  # what `scrm import-orders` does after its import; not timed
        from bot.tagging.rules import TagRules
        from bot.tagging.system import apply_aggregate_rules

        with db.begin() as session:
            apply_aggregate_rules(session, TagRules.from_settings(settings), settings.tags.push_to_wecom)
    if kind == "retier":
        with db.sessions() as session:
            out["counts"] = {k: v for k, v in session.execute(select(CustomerTier.rfm_segment, func.count())
                                                              .group_by(CustomerTier.rfm_segment)).all() if k}
    out["max_rss_mb"] = peak_rss_mb()
    db.dispose()
    return out


def insert_floor(db, rows: int, bulk: bool = False) -> dict:
    """The database's own rate for writing ready-made order rows (values already parsed, customers
    already known) into the order table with its indexes and foreign key, by the driver's fastest
    path: a ceiling for any importer on this machine. ``bulk``: with what the importer does for a big
    load — the secondary index built afterwards, the foreign key not checked row by row (SQLite) or
    validated once afterwards (PostgreSQL) — that work included in the time."""
    from datetime import datetime

    from bot.core.db import sqlite_foreign_keys_off

    customers = max(1, rows // 10)
    with db.begin() as session:
        conn = session.connection()
        dialect = conn.dialect.name
        mark = "%s" if dialect == "postgresql" else "?"
        conn.exec_driver_sql("INSERT INTO customers (external_userid, name, contact_type, gender, opted_out, "
                             f"created_at, updated_at) VALUES ({mark}, '', 1, 0, FALSE, {mark}, {mark})",
                             [(f"floor{i:09d}", datetime(2025, 1, 1), datetime(2025, 1, 1)) for i in range(customers)])
        first_id = conn.exec_driver_sql("SELECT min(id) FROM customers").scalar()
    stamp = "2025-01-01 10:00:00.000000"
    values = ((str(i), first_id + (i * 7919) % customers, 8883, stamp, 739252, "paid", stamp, stamp)
              for i in range(rows))
    columns = "order_id, customer_id, amount_fen, paid_at, paid_day, status, created_at, updated_at"
    started = time.perf_counter()
    with db.begin() as session:
        if bulk:
            sqlite_foreign_keys_off(session)
        conn = session.connection()
        index = "CREATE INDEX ix_orders_customer_id_paid_at ON orders (customer_id, paid_at)"
        foreign_key = "fk_orders_customer_id_customers"
        if bulk:
            conn.exec_driver_sql("DROP INDEX ix_orders_customer_id_paid_at")
            if dialect == "postgresql":
                conn.exec_driver_sql(f"ALTER TABLE orders DROP CONSTRAINT {foreign_key}")
        if dialect == "postgresql":
            with conn.connection.dbapi_connection.cursor().copy(f"COPY orders ({columns}) FROM STDIN") as copy:
                for row in values:
                    copy.write_row(row)
        else:
            conn.connection.dbapi_connection.cursor().executemany(
                f"INSERT INTO orders ({columns}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", values)
        if bulk:
            conn.exec_driver_sql(index)
            if dialect == "postgresql":
                conn.exec_driver_sql(f"ALTER TABLE orders ADD CONSTRAINT {foreign_key} FOREIGN KEY (customer_id) "
                                     "REFERENCES customers (id) ON DELETE CASCADE NOT VALID")
                conn.exec_driver_sql(f"ALTER TABLE orders VALIDATE CONSTRAINT {foreign_key}")
    seconds = time.perf_counter() - started
    return {"rows": rows, "seconds": seconds, "max_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    """This process's own peak resident memory. Linux carries ru_maxrss across fork + exec, so a
    phase started from a parent holding the pandas DataFrame would report the parent's size;
    VmHWM belongs to the new address space alone."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_phase(kind: str, url: str, path: Path | str = "") -> dict:
    proc = subprocess.run([sys.executable, __file__, "--phase", kind, "--url", url, "--path", str(path)],
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"phase {kind} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def whole_command(url: str) -> dict:
    """`scrm retier` in a process of its own, timed from start to exit; its clock at the as-of day."""
    code = ("from datetime import datetime; from zoneinfo import ZoneInfo; from bot.cli import run; "
            f"run(['retier'], obj=lambda: datetime({AS_OF.year}, {AS_OF.month}, {AS_OF.day}, 12, "
            "tzinfo=ZoneInfo('Asia/Shanghai')))")
    # As an installed package runs: from compiled bytecode (pip compiles a wheel's modules; a checkout
    # caches them on first import), even where PYTHONDONTWRITEBYTECODE is set, as on the bench machine.
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "compileall", "-q", *(str(root / d) for d in PACKAGES)], check=True,
                   env={k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"})
    env = {**os.environ, "SCRM_DATABASE_URL": url, "SCRM_CONFIG": ""}
    started, children = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=Path(__file__).resolve().parents[1])
    seconds = time.perf_counter() - started
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = used.ru_utime - children.ru_utime + used.ru_stime - children.ru_stime
    if proc.returncode:
        raise SystemExit(f"scrm retier failed:\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}")
    inside = re.search(r" in ([0-9.]+)s: ", proc.stdout)
    return {"seconds": seconds, "cpu_seconds": cpu, "engine_inside": float(inside.group(1)) if inside else None,
            "output": proc.stdout.splitlines()[0]}


def retier_both(url: str, work: Path) -> tuple[dict, dict | None]:
    """The engine alone (on a copy, SQLite) and the whole command (on the database), from one state."""
    if not url.startswith("sqlite"):
        return run_phase("retier", url), None
    path = Path(url.removeprefix("sqlite:///"))
    copy = work / "bench-engine.db"
    shutil.copyfile(path, copy)  # each phase's process has closed the database: no WAL to copy
    # Written back before anything is timed: otherwise the kernel writes the import's pages and this
    # 2.5 GB copy to disk during the runs, and their commits wait behind that (whole command after +1%
    # 7.68 s unsynced against 5.53–5.96 s synced, on one machine): a nightly job meets no such copy.
    os.sync()
    engine = run_phase("retier", f"sqlite:///{copy}")
    copy.unlink()
    os.sync()
    return engine, whole_command(url)


def fresh_database(url: str, work: Path) -> str:
    from sqlalchemy import text

    from bot.core.db import make_engine, upgrade_schema

    if url.startswith("sqlite"):
        path = work / "bench.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        url = f"sqlite:///{path}"
    else:
        engine = make_engine(url)
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA IF EXISTS scrm_bench CASCADE"))
            conn.execute(text("CREATE SCHEMA scrm_bench"))
        engine.dispose()
        url += ("&" if "?" in url else "?") + "options=-csearch_path%3Dscrm_bench"
    engine = make_engine(url)
    upgrade_schema(engine)
    engine.dispose()
    return url


def bench_database(label: str, url: str, work: Path, orders: Path, extra: Path, floor_rows: int) -> dict:
    floor = run_phase("floor", fresh_database(url, work), floor_rows)
    bulk_floor = run_phase("bulk-floor", fresh_database(url, work), floor_rows)
    print(f"  {label}: floor — ready-made rows into the order table by the driver's fastest path: "
          f"{floor['rows'] / floor['seconds']:,.0f} rows/s; with the importer's bulk-load measures "
          f"{bulk_floor['rows'] / bulk_floor['seconds']:,.0f} rows/s ({floor['rows']:,} rows)", flush=True)
    url = fresh_database(url, work)
    imported = run_phase("import", url, orders)
    first, first_whole = retier_both(url, work)
    added = run_phase("import", url, extra)
    incremental, incremental_whole = retier_both(url, work)
    print(f"  {label}: import {imported['rows'] / imported['seconds']:,.0f} rows/s "
          f"({imported['seconds']:.1f}s), first re-tier {first['seconds']:.2f}s, "
          f"+1% import {added['seconds']:.2f}s, incremental re-tier {incremental['seconds']:.2f}s "
          f"({incremental['recomputed']:,} customers looked at); peak RSS per "
          f"phase {imported['max_rss_mb']:.0f} / {first['max_rss_mb']:.0f} / {added['max_rss_mb']:.0f} / "
          f"{incremental['max_rss_mb']:.0f} MB", flush=True)
    for name, engine, whole in (("first", first, first_whole), ("incremental", incremental, incremental_whole)):
        if whole:
            print(f"  {label}: whole `scrm retier`, {name}: {whole['seconds']:.2f}s = "
                  f"{whole['seconds'] / engine['seconds']:.2f}× the engine alone ({engine['seconds']:.2f}s; inside "
                  f"the command {whole['engine_inside']:.2f}s before its commit); CPU {whole['cpu_seconds']:.2f}s = "
                  f"{whole['cpu_seconds'] / engine['cpu_seconds']:.2f}× the engine's {engine['cpu_seconds']:.2f}s "
                  f"— {whole['output']}", flush=True)
    return {"import": imported, "first": first, "added": added, "incremental": incremental, "floor": floor,
            "bulk_floor": bulk_floor, "first_whole": first_whole, "incremental_whole": incremental_whole}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--orders", type=int, default=10_000_000)
    parser.add_argument("--work", type=Path, default=Path("bench-data"))
    parser.add_argument("--gen", type=Path, default=GEN)
    parser.add_argument("--sqlite", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--pg-url", default="")
    parser.add_argument("--floor-rows", type=int, default=2_000_000,
                        help="ready-made rows for the insert-rate floor (default 2M)")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(phase(args.phase, args.url, args.path)))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    orders, extra = generate(args.work, args.customers, args.orders, args.gen)
    baseline = pandas_baseline(orders)
    print(f"pandas baseline: RFM eight segments in {baseline['compute_s']:.2f}s from an in-memory DataFrame "
          f"(CSV parse {baseline['parse_s']:.1f}s, not counted)", flush=True)
    results = {}
    if args.sqlite:
        results["SQLite"] = bench_database("SQLite", "sqlite", args.work, orders, extra, args.floor_rows)
    if args.pg_url:
        results["PostgreSQL"] = bench_database("PostgreSQL", args.pg_url, args.work, orders, extra, args.floor_rows)
    report(args, baseline, results)


def report(args: argparse.Namespace, baseline: dict, results: dict) -> None:
    base = baseline["compute_s"]
    goals = {"SQLite": 250_000, "PostgreSQL": 100_000}
    print(f"\n{args.orders:,} orders, {args.customers:,} customers, as of {AS_OF}")
    print(f"{'':12} {'floor rows/s':>13} {'bulk floor':>11} {'import rows/s':>14} {'goal':>9} {'first s':>8} "
          f"{'×pandas':>8} "
          f"{'incr s':>7} {'×pandas':>8} "
          f"{'peak MB':>8} {'same segments':>14}")
    for label, r in results.items():
        rate = r["import"]["rows"] / r["import"]["seconds"]
        peak = max(r[k]["max_rss_mb"] for k in r if "floor" not in k and "whole" not in k)
        same = r["first"]["counts"] == baseline["counts"]
        floor = r["floor"]["rows"] / r["floor"]["seconds"]
        bulk_floor = r["bulk_floor"]["rows"] / r["bulk_floor"]["seconds"]
        print(f"{label:12} {floor:13,.0f} {bulk_floor:11,.0f} {rate:14,.0f} {goals[label]:9,} "
              f"{r['first']['seconds']:8.2f} "
              f"{r['first']['seconds'] / base:8.2f} {r['incremental']['seconds']:7.2f} "
              f"{r['incremental']['seconds'] / base:8.2f} {peak:8.0f} {str(same):>14}")
        if not same:
            print(f"  segment counts differ: engine {r['first']['counts']} vs pandas {baseline['counts']}")
    for label, r in results.items():
        for name in ("first", "incremental"):
            whole = r.get(f"{name}_whole")
            if whole:
                print(f"{label} whole `scrm retier` ({name}): {whole['seconds']:.2f}s, "
                      f"{whole['seconds'] / r[name]['seconds']:.2f}× the engine alone (goal ≤ 1.2×; CPU time "
                      f"{whole['cpu_seconds'] / r[name]['cpu_seconds']:.2f}×), "
                      f"{whole['seconds'] / base:.2f}× pandas (goal ≤ 1.5×)")
    print(f"pandas compute {base:.2f}s; goals: first re-tier ≤ 1.0×, incremental ≤ 0.2×, peak ≤ 500 MB")


if __name__ == "__main__":
    main()
