"""Channel report benchmark: `scrm channels report` over many customers brought by channels, end to
end (the CLI process: settings, database, the report's SQL aggregates, printing), against a
baseline in the same run.

    python bench/channel_report.py --customers 1000000 [--channels 20] [--db-url sqlite:////tmp/b.db]

It builds customers each with one follow through one of the channels (added over the last 90
days, 3% ended by the customer), tiers (value tier, RFM segment) and order aggregates, then times:
  - baseline: `scrm channels list --json` (a subprocess: what any scrm command pays to start,
    load settings and open the database, plus a read of the channels);
  - report: `scrm channels report --json` as a user runs it (a subprocess), its result checked
    against totals counted here; and the report's SQL alone, in this process.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, insert, select

from bot.contacts.channels import channel_report
from bot.core.config import DatabaseSettings, load_settings
from bot.core.db import Database, open_database
from bot.models import Channel, Customer, CustomerAggregate, CustomerTier, Follow, Staff

TIERS = ["high", "mid", "low", "low", "low"]
SEGMENTS = ["important_value", "important_develop", "general_keep", "general_retain", None]


def build(db: Database, customers: int, channels: int, chunk: int = 100_000) -> None:
    rng = random.Random(7)
    now = datetime.now(UTC)
    with db.begin() as s:
        s.execute(insert(Staff), [{"userid": f"staff{i:02d}", "name": f"员工{i}"} for i in range(20)])
        s.execute(insert(Channel), [{"state": f"ch{i:02d}", "name": f"渠道{i}", "members": [f"staff{i % 20:02d}"],
                                     "tags": [], "welcome": "default", "skip_verify": True, "source": "cli",
                                     "status": "active", "cost_fen": 100_000 * (i + 1)} for i in range(channels)])
        staff_ids = list(s.scalars(select(Staff.id).order_by(Staff.id)))
    for start in range(0, customers, chunk):
        rows, tiers, aggs, follows = [], [], [], []
        for n in range(start, min(start + chunk, customers)):
            rows.append({"id": n + 1, "external_userid": f"wm{n:08d}", "name": f"客户{n}", "owner_userid": "staff00",
                         "opted_out": False, "contact_type": 1, "gender": 0})
            tiers.append({"customer_id": n + 1, "value_tier": rng.choice(TIERS), "rfm_segment": rng.choice(SEGMENTS)})
            if rng.random() < 0.6:
                aggs.append({"customer_id": n + 1, "order_count": rng.randint(1, 8),
                             "paid_amount_fen": rng.randint(1_000, 500_000)})
            ended = rng.random() < 0.03
            added = now - timedelta(seconds=rng.randint(0, 90 * 86400))
            follows.append({"customer_id": n + 1, "staff_id": staff_ids[n % 20], "remark": "", "description": "",
                            "state": f"ch{rng.randrange(channels):02d}", "added_at": added,
                            "ended_at": added + timedelta(days=1) if ended else None,
                            "ended_reason": "customer_deleted_staff" if ended else None})
        with db.begin() as s:
            s.execute(insert(Customer), rows)
            s.execute(insert(CustomerTier), tiers)
            if aggs:
                s.execute(insert(CustomerAggregate), aggs)
            s.execute(insert(Follow), follows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=200_000)
    parser.add_argument("--channels", type=int, default=20)
    parser.add_argument("--db-url", default="")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-channels-")
    url = args.db_url or f"sqlite:///{Path(tmp) / 'bench.db'}"
    db = open_database(DatabaseSettings(url=url), create=True)
    started = time.perf_counter()
    build(db, args.customers, args.channels)
    built = time.perf_counter() - started
    print(f"built {args.customers:,} customers through {args.channels} channels in {built:.1f}s")
    settings = load_settings(None, {"database": {"url": url}})
    with db.sessions() as s:
        counts = dict(s.execute(select(Follow.state, func.count()).group_by(Follow.state)).all())
        ended = s.scalar(select(func.count()).select_from(Follow).where(Follow.ended_at.is_not(None)))
        started = time.perf_counter()
        channel_report(s, settings, datetime.now(UTC))
        sql_seconds = time.perf_counter() - started
    db.dispose()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCRM_")}
    env["SCRM_DATABASE_URL"] = url

    def scrm(*args: str) -> tuple[float, str]:
        started = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "bot.cli", *args], env=env, check=True, capture_output=True,
                             text=True).stdout
        return time.perf_counter() - started, out

    baseline, _ = scrm("channels", "list", "--json")
    report_seconds, out = scrm("channels", "report", "--json")
    reports = json.loads(out)
    assert {r["state"]: r["adds"] for r in reports} == counts, "adds per channel differ from the count"
    assert sum(r["deletions"] for r in reports) == ended, "deletions differ from the count"
    print(f"baseline  scrm channels list --json         {baseline:7.2f} s")
    print(f"report    scrm channels report --json       {report_seconds:7.2f} s  "
          f"(+{report_seconds - baseline:.2f} s over the baseline; checked against the counts: ok)")
    print(f"          of which the report's SQL         {sql_seconds:7.2f} s")


if __name__ == "__main__":
    main()
