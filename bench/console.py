"""Operator console benchmark: server time of each page and JSON call the issue (#19) names, through
the Flask test client (no network), over a large population, with p50 / p95 per call.

    python bench/console.py --customers 1000000 [--db-url sqlite:////tmp/console.db] [--repeat 20]

It builds customers, tiers and follows the way bench/broadcast_planning.py does, adds an aggregate per
customer (for the RFM revenue shares) and one day of tier changes for 5% of them (the Sankey), then
times: the dashboard; the customer list's first page, a deep page (keyset, after the 90% id) and a
filtered page (two tiers and a segment); the builder's live count per tier (no filter, and two tiers);
the broadcast preview (counts, skips, hold-out, samples). Goal: p95 ≤ 300 ms each, live count ≤ 1 s.

The dashboard is timed three ways: its very first view on the database (the tier figures are computed
and stored), the first view of a second, freshly started app on the same database (it reads the stored
figures), and the first view after a tier change (the stored figures are shown, marked as updating,
while a background thread recomputes them; how long that takes is printed too). Each call's CPU time
(this process's) is printed beside its server time: on a shared machine the wall time follows the load,
the CPU time much less. Orders are not built: no call measured here reads them (the dashboard's
revenue shares read the per-customer aggregates).
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import statistics
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

from sqlalchemy import delete, func, insert, select

sys.path.insert(0, str(Path(__file__).resolve().parent))
from broadcast_planning import RUN_AT, build  # noqa: E402

from bot.core.db import Database  # noqa: E402
from bot.models import ConsoleFigures, Customer, CustomerAggregate, Operator, TierChange  # noqa: E402
from bot.web.app import create_app  # noqa: E402
from bot.web.console.accounts import add_operator  # noqa: E402

PASSWORD = "bench-password-123"


def add_figures(db: Database, customers: int, chunk: int = 100_000) -> None:
    rng = random.Random(11)
    day = date(2026, 11, 23)
    for start in range(1, customers + 1, chunk):
        ids = range(start, min(start + chunk, customers + 1))
        with db.begin() as s:
            s.execute(insert(CustomerAggregate), [
                {"customer_id": i, "order_count": rng.randint(0, 12), "paid_amount_fen": rng.randint(0, 500_000),
                 "last_order_day": day.toordinal() - rng.randint(0, 400)} for i in ids])
            moved = [i for i in ids if rng.random() < 0.05]
            s.execute(insert(TierChange), [
                {"customer_id": i, "dimension": "value_tier", "from_value": rng.choice(["high", "mid", "low"]),
                 "to_value": rng.choice(["high", "mid", "low"]), "as_of": day, "reason": "bench"} for i in moved])


def measure(client, label: str, call, repeat: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """The first call (cold, checked), then p50 / p95 of ``repeat`` more (server time) and their p50 CPU."""
    started, cpu = time.perf_counter(), time.process_time()
    response = call()
    first, first_cpu = time.perf_counter() - started, time.process_time() - cpu
    assert response.status_code == 200, (label, response.status_code, response.get_data(as_text=True)[:300])
    took, cpus = [], []
    for _ in range(repeat):
        started, cpu = time.perf_counter(), time.process_time()
        call()
        took.append(time.perf_counter() - started)
        cpus.append(time.process_time() - cpu)
    took.sort()
    p95 = took[min(len(took) - 1, round(0.95 * (len(took) - 1)))]
    return {"first": first, "first_cpu": first_cpu, "p50": statistics.median(took), "p95": p95,
            "cpu": statistics.median(cpus)}


def once(call) -> dict[str, float]:  # type: ignore[no-untyped-def]
    started, cpu = time.perf_counter(), time.process_time()
    response = call()
    assert response.status_code == 200, response.status_code
    return {"first": time.perf_counter() - started, "first_cpu": time.process_time() - cpu}


def signed_in(app):  # type: ignore[no-untyped-def]
    client = app.test_client()
    client.get("/console/login")
    with client.session_transaction() as session:
        token = session["csrf"]
    assert client.post("/console/login", data={"name": "bench", "password": PASSWORD,
                                                "csrf_token": token}).status_code == 302
    with client.session_transaction() as session:
        return client, session["csrf"]


def make_app(url: str):  # type: ignore[no-untyped-def]
    app = create_app({"database": {"url": url}, "app": {"secret_key": secrets.token_hex(32)}}, environ={},
                     start_worker=False)
    app.extensions["scrm.clock"] = lambda: RUN_AT - timedelta(days=1)
    return app


def show(label: str, m: dict[str, float]) -> None:
    ms = {k: f"{v * 1000:7.0f}ms" for k, v in m.items()}
    print(f"{label:52s} {ms['first']:>9s} {ms.get('p50', ''):>9s} {ms.get('p95', ''):>9s} "
          f"{ms.get('cpu', ms['first_cpu']):>9s}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--staff", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--db-url", help="default: a fresh SQLite file in a temporary directory; a database that "
                                         "already holds customers is measured as it is (no build)")
    args = parser.parse_args()
    url = args.db_url or f"sqlite:///{Path(tempfile.mkdtemp(prefix='scrm-bench-')) / 'console.db'}"
    app = make_app(url)
    db = app.extensions["scrm.db"]
    started = time.perf_counter()
    with db.sessions() as s:
        existing = s.scalar(select(func.count()).select_from(Customer)) or 0
    if existing:  # a database from an earlier run (--db-url): measured as it is
        print(f"reusing {existing:,} customers on {db.dialect}")
    else:
        build(db, args.customers, args.staff)
        add_figures(db, args.customers)
        print(f"{args.customers:,} customers on {db.dialect}; built in {time.perf_counter() - started:.1f}s")
        if db.dialect == "postgresql":  # the statistics autovacuum would gather after such a load
            with db.engine.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("VACUUM ANALYZE")
    with db.begin() as s:
        if s.scalar(select(Operator.id).where(Operator.name == "bench")) is None:
            add_operator(s, "bench", "operator", PASSWORD, actor="bench")
        s.execute(delete(ConsoleFigures))  # the very first view computes them
    deep = int((existing or args.customers) * 0.9)
    client, token = signed_in(app)
    preview_form = {"csrf_token": token, "intent": "preview", "name": "bench", "value_tiers": ["high", "mid"],
                    "tpl_default": "{{ brand }} 上新", "tpl_high": "{{ tier_name }}专享", "send_at": "2026-11-24T10:00"}
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'call':52s} {'first':>9s} {'p50':>9s} {'p95':>9s} {'p50 CPU':>9s}  (server time; p50/p95 of "
          f"{args.repeat} runs after the first)")
    show("dashboard, the very first view (computes, stores)",
         measure(client, "dashboard", lambda: client.get("/console/"), args.repeat))
    restarted = make_app(url)
    other, _ = signed_in(restarted)
    show("dashboard, first view of a restarted app", once(lambda: other.get("/console/")))
    with db.begin() as s:  # what a re-tier does to the figures' key
        s.add(TierChange(customer_id=1, dimension="value_tier", from_value="low", to_value="mid",
                         as_of=date(2026, 11, 23), reason="bench"))
    stale = once(lambda: other.get("/console/"))
    show("dashboard, first view after a tier change (stale)", stale)
    cache = restarted.extensions["scrm.console.figures"]
    started = time.perf_counter()
    cache.wait(600)
    print(f"{'  … its background recomputation':52s} {(time.perf_counter() - started) * 1000:7.0f}ms")
    calls = [
        ("customers, first page", lambda: client.get("/console/customers")),
        (f"customers, deep page (after {deep:,})", lambda: client.get(f"/console/customers?after={deep}")),
        ("customers, filtered page", lambda: client.get(
            "/console/customers?value_tiers=high&value_tiers=mid&rfm_segments=important_retain")),
        ("live count per tier, everyone", lambda: client.get("/console/broadcasts/count.json")),
        ("live count per tier, two tiers", lambda: client.get(
            "/console/broadcasts/count.json?value_tiers=high&value_tiers=mid")),
        ("broadcast preview (two tiers)", lambda: client.post("/console/broadcasts/new", data=preview_form)),
    ]
    for label, call in calls:
        show(label, measure(client, label, call, args.repeat))
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    restarted.extensions["scrm.db"].dispose()
    db.dispose()


if __name__ == "__main__":
    main()
