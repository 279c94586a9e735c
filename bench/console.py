"""Operator console benchmark: server time of each page and JSON call the issue (#19) names, through
the Flask test client (no network), over a large population, with p50 / p95 per call.

    python bench/console.py --customers 1000000 [--db-url sqlite:////tmp/console.db] [--repeat 20]

It builds customers, tiers and follows the way bench/broadcast_planning.py does, adds an aggregate per
customer (for the RFM revenue shares) and one day of tier changes for 5% of them (the Sankey), then
times: the dashboard; the customer list's first page, a deep page (keyset, after the 90% id) and a
filtered page (two tiers and a segment); the builder's live count per tier (no filter, and two tiers);
the broadcast preview (counts, skips, hold-out, samples). Goal: p95 ≤ 300 ms each, live count ≤ 1 s.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

from sqlalchemy import func, insert, select

sys.path.insert(0, str(Path(__file__).resolve().parent))
from broadcast_planning import RUN_AT, build  # noqa: E402

from bot.core.db import Database  # noqa: E402
from bot.models import Customer, CustomerAggregate, Operator, TierChange  # noqa: E402
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


def measure(client, label: str, call, repeat: int) -> tuple[float, float, float]:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    response = call()  # the first call (cold: the dashboard's tier figures are computed here), checked
    first = time.perf_counter() - started
    assert response.status_code == 200, (label, response.status_code, response.get_data(as_text=True)[:300])
    took = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        took.append(time.perf_counter() - started)
    took.sort()
    p95 = took[min(len(took) - 1, round(0.95 * (len(took) - 1)))]
    return first, statistics.median(took), p95


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--staff", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--db-url", help="default: a fresh SQLite file in a temporary directory; a database that "
                                         "already holds customers is measured as it is (no build)")
    args = parser.parse_args()
    url = args.db_url or f"sqlite:///{Path(tempfile.mkdtemp(prefix='scrm-bench-')) / 'console.db'}"
    app = create_app({"database": {"url": url}, "app": {"secret_key": "bench"}}, environ={}, start_worker=False)
    app.extensions["scrm.clock"] = lambda: RUN_AT - timedelta(days=1)
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
    with db.begin() as s:
        if s.scalar(select(Operator.id).where(Operator.name == "bench")) is None:
            add_operator(s, "bench", "operator", PASSWORD, actor="bench")
    deep = int((existing or args.customers) * 0.9)
    client = app.test_client()
    client.get("/console/login")
    with client.session_transaction() as session:
        token = session["csrf"]
    assert client.post("/console/login", data={"name": "bench", "password": PASSWORD,
                                                "csrf_token": token}).status_code == 302
    with client.session_transaction() as session:
        token = session["csrf"]
    preview_form = {"csrf_token": token, "intent": "preview", "name": "bench", "value_tiers": ["high", "mid"],
                    "tpl_default": "{{ brand }} 上新", "tpl_high": "{{ tier_name }}专享", "send_at": "2026-11-24T10:00"}
    calls = [
        ("dashboard", lambda: client.get("/console/")),
        ("customers, first page", lambda: client.get("/console/customers")),
        (f"customers, deep page (after {deep:,})", lambda: client.get(f"/console/customers?after={deep}")),
        ("customers, filtered page", lambda: client.get(
            "/console/customers?value_tiers=high&value_tiers=mid&rfm_segments=important_retain")),
        ("live count per tier, everyone", lambda: client.get("/console/broadcasts/count.json")),
        ("live count per tier, two tiers", lambda: client.get(
            "/console/broadcasts/count.json?value_tiers=high&value_tiers=mid")),
        ("broadcast preview (two tiers)", lambda: client.post("/console/broadcasts/new", data=preview_form)),
    ]
    print(f"{'call':44s} {'first':>8s} {'p50':>8s} {'p95':>8s}   (server time; p50/p95 of {args.repeat} runs "
          "after the first)")
    for label, call in calls:
        first, p50, p95 = measure(client, label, call, args.repeat)
        print(f"{label:44s} {first * 1000:7.0f}ms {p50 * 1000:7.0f}ms {p95 * 1000:7.0f}ms")
    db.dispose()


if __name__ == "__main__":
    main()
