"""Predictions benchmark: summarise + fit + predict (+ store) BG/NBD and Gamma-Gamma for every customer,
against the pandas RFM baseline of bench/tiering.py on the same orders in the same run.

    pip install -e '.[bench]'
    python bench/predictions.py --customers 1000000 --orders 10000000 [--csv orders.csv]

Orders come from ../shared/tools/gen_orders.py (deterministic), or an existing CSV of its shape
(--csv). They are loaded into a fresh SQLite database straight from pandas (customer ids from the
external_userid, paid_day from the local date of paid_at; paid_at itself is a constant, the
predictions do not read it), then the per-customer aggregates built from them as the order writers keep
them — that load is set-up, not timed. The measured phase runs in its own
process, so its peak memory (VmHWM) is its own. Goals (#21): fit + predict ≤ 2× the pandas
compute time, peak ≤ 500 MB.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiering import AS_OF, GEN, pandas_baseline, peak_rss_mb  # noqa: E402


def load(csv: Path, db_path: Path) -> int:
    import pandas as pd

    from bot.core.db import make_engine, upgrade_schema
    from segments.orders import REBUILD_SQL

    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    engine = make_engine(f"sqlite:///{db_path}")
    upgrade_schema(engine)
    engine.dispose()
    df = pd.read_csv(csv, dtype={"order_id": "string", "external_userid": "string", "amount": "string",
                                 "paid_at": "string"}, engine="pyarrow")
    codes, names = pd.factorize(df.external_userid)
    days = (pd.to_datetime(df.paid_at.str.slice(0, 10)).values.astype("datetime64[D]").astype("int64")
            + 719163)  # date(1970, 1, 1).toordinal(): gen_orders writes local (+08:00) times
    fen = (df.amount.astype("float64") * 100).round().astype("int64")
    import sqlite3

    conn = sqlite3.connect(db_path)
    conn.execute("PRAGMA journal_mode=WAL")
    stamp = "2025-01-01 00:00:00.000000"
    conn.executemany("INSERT INTO customers (id, external_userid, name, contact_type, gender, opted_out, created_at, "
                     "updated_at) VALUES (?, ?, '', 1, 0, 0, ?, ?)",
                     ((i + 1, str(n), stamp, stamp) for i, n in enumerate(names)))
    conn.executemany("INSERT INTO orders (order_id, customer_id, amount_fen, paid_at, paid_day, status, created_at, "
                     "updated_at) VALUES (?, ?, ?, ?, ?, 'paid', ?, ?)",
                     ((o, int(c) + 1, int(f), stamp, int(d), stamp, stamp)
                      for o, c, f, d in zip(df.order_id, codes, fen, days, strict=True)))
    conn.commit()
    # The per-customer aggregates as the order writers leave them (the summaries read them).
    conn.execute(REBUILD_SQL.format(touched="SELECT id FROM customers"))
    conn.commit()
    conn.execute("ANALYZE")
    conn.close()
    return len(df)


def phase(url: str, horizon: int) -> dict:
    """In a child process: the stages refit runs, each timed, then this process's peak memory."""
    from sqlalchemy.orm import Session

    from bot.core.db import make_engine
    from bot.models import PredictionRun
    from segments.predict import fit, predict, summarise
    from segments.predict_runs import store_predictions

    engine = make_engine(url)
    out: dict = {}
    with Session(engine) as session, session.begin():
        started = time.perf_counter()
        summaries = summarise(session, AS_OF)
        out["summarise_s"] = time.perf_counter() - started
        step = time.perf_counter()
        model = fit(summaries, AS_OF)
        out["fit_s"] = time.perf_counter() - step
        step = time.perf_counter()
        predictions = predict(model, summaries, AS_OF, horizon)
        out["predict_s"] = time.perf_counter() - step
        step = time.perf_counter()
        run = PredictionRun(as_of=AS_OF, horizon_days=horizon, status="fitted", customers=len(summaries),
                            repeat_customers=model.repeat_customers, seconds=0.0)
        session.add(run)
        session.flush()
        out["stored"] = store_predictions(session, run.id, predictions)
    out["store_s"] = time.perf_counter() - step
    out["customers"] = len(summaries)
    out["parameters"] = model.parameters()
    out["max_rss_mb"] = peak_rss_mb()
    engine.dispose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--orders", type=int, default=10_000_000)
    parser.add_argument("--csv", type=Path, help="an orders CSV of gen_orders.py's shape (default: generate one)")
    parser.add_argument("--work", type=Path, default=Path("bench-data"))
    parser.add_argument("--gen", type=Path, default=GEN)
    parser.add_argument("--horizon-days", type=int, default=365)
    parser.add_argument("--reuse", action="store_true", help="reuse the database a previous run loaded")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(phase(args.phase, args.horizon_days)))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    csv = args.csv
    if csv is None:
        csv = args.work / f"orders_{args.customers}_{args.orders}.csv"
        if not csv.exists():
            subprocess.run([sys.executable, str(args.gen), "--customers", str(args.customers), "--orders",
                            str(args.orders), "--seed", "7", "--out", str(csv)], check=True)
    baseline = pandas_baseline(csv)
    db_path = args.work / "predict.db"
    started = time.perf_counter()
    if args.reuse and db_path.exists():
        import sqlite3

        rows = sqlite3.connect(db_path).execute("SELECT count(*) FROM orders").fetchone()[0]
        print(f"reusing {db_path} ({rows:,} orders)", flush=True)
    else:
        rows = load(csv, db_path)
        print(f"loaded {rows:,} orders into {db_path} in {time.perf_counter() - started:.1f}s (set-up)", flush=True)
    proc = subprocess.run([sys.executable, __file__, "--phase", f"sqlite:///{db_path}", "--horizon-days",
                           str(args.horizon_days)], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"phase failed:\n{proc.stderr[-3000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    base = baseline["compute_s"]
    work = r["summarise_s"] + r["fit_s"] + r["predict_s"]
    print(f"\n{rows:,} orders, {r['customers']:,} customers with paid orders, as of {AS_OF}, SQLite")
    print(f"summarise (SQL) {r['summarise_s']:.2f}s, fit {r['fit_s']:.2f}s, predict {r['predict_s']:.2f}s, "
          f"store {r['store_s']:.2f}s ({r['stored']:,} rows); peak RSS {r['max_rss_mb']:.0f} MB")
    print(f"pandas RFM compute {base:.2f}s (CSV parse {baseline['parse_s']:.1f}s, not counted)")
    print(f"summarise + fit + predict {work:.2f}s = {work / base:.2f}× pandas; with the store "
          f"{work + r['store_s']:.2f}s = {(work + r['store_s']) / base:.2f}×; goals ≤ 2×, peak ≤ 500 MB")
    print("parameters: " + ", ".join(f"{k}={v:.4g}" for k, v in r["parameters"].items()))


if __name__ == "__main__":
    main()
