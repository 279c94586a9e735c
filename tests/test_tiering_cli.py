"""``scrm retier``, ``scrm customer show`` and ``scrm export customers`` as an operator sees them."""

from __future__ import annotations

import csv
import io

import pytest
from click.testing import CliRunner

from bot.cli import main

ORDERS = "\n".join([
    "order_id,external_userid,amount,paid_at,status",
    *[f"v{i},wmVIP,300.00,2026-11-{10 + i:02d}T12:00:00+08:00,paid" for i in range(7)],
    "s1,wmSmall,9.90,2026-05-01T12:00:00+08:00,paid",
    "s2,wmMid,200,2026-10-01T12:00:00+08:00,paid",
    "s3,wmMid,200,2026-10-02T12:00:00+08:00,paid",
    "s4,wmMid,200,2026-10-03T12:00:00+08:00,refunded",
]) + "\n"


@pytest.fixture
def scrm(database_url, tmp_path):
    path = tmp_path / "orders.csv"
    path.write_text(ORDERS, encoding="utf-8")
    env = {"SCRM_CONFIG": None, "SCRM_DATABASE_URL": database_url}

    def run(*args: str):
        result = CliRunner(env=env).invoke(main, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    run("import-orders", str(path), "--no-progress")
    return run


def test_retier_prints_before_and_after(scrm):
    out = scrm("retier", "--as-of", "2026-11-20")
    assert "re-tiered 3 customers as of 2026-11-20" in out
    lines = {tuple(line.split()[:2]): line.split()[-2:] for line in out.splitlines()[2:]}
    assert lines[("rfm_segment", "important_value")] == ["0", "1"]  # 重要价值 appears after
    assert lines[("stage", "super")] == ["0", "1"]
    assert "重要价值" in out
    again = scrm("retier", "--as-of", "2026-11-20")
    assert "0 rows written" in again and "incremental: looked at 0 whose tiers may have moved" in again
    assert "incremental" not in scrm("retier", "--as-of", "2026-11-20", "--full")


def test_customer_show_explains_each_dimension(scrm):
    scrm("retier", "--as-of", "2026-11-20")
    out = scrm("customer", "show", "wmVIP", "--as-of", "2026-11-20")
    assert "metrics: 7 paid orders, 2100.00 元 paid, last paid order 2026-11-16" in out
    assert "R high: last order 4 days ago, mean" in out
    assert "F high: 7 paid orders, mean 3.33" in out
    assert "RFM segment: 重要价值 important_value [important_value]" in out
    assert ("value tier: low [low] — no rule matched "
            "(high needs amount > 1000.00 and orders > 5 and activity in high") in out
    mid = scrm("customer", "show", "wmMid", "--as-of", "2026-11-20")
    assert "metrics: 2 paid orders, 400.00 元 paid" in mid  # the refund does not count


def test_customer_show_unknown_customer(database_url):
    result = CliRunner(env={"SCRM_CONFIG": None, "SCRM_DATABASE_URL": database_url}).invoke(
        main, ["customer", "show", "wmNobody"])
    assert result.exit_code == 1 and "no customer wmNobody" in result.output


def test_export_customers_has_the_promised_columns(scrm, tmp_path):
    scrm("retier", "--as-of", "2026-11-20")
    out = tmp_path / "customers.csv"
    assert "wrote 3 customers" in scrm("export", "customers", "--out", str(out))
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert list(rows[0]) == ["external_userid", "name", "owner_userid", "value_tier", "rfm_segment", "r_score",
                             "f_score", "m_score", "score", "stage", "engagement", "activity", "order_count",
                             "total_amount", "last_order_at", "tags", "opted_out", "p_alive", "churn_risk",
                             "expected_purchases", "predicted_value", "next_order_on"]
    vip = next(r for r in rows if r["external_userid"] == "wmVIP")
    assert (vip["rfm_segment"], vip["stage"], vip["order_count"], vip["total_amount"]) == (
        "important_value", "super", "7", "2100.00")
    assert vip["last_order_at"].startswith("2026-11-16T04:00:00")
    stdout = scrm("export", "customers")
    assert stdout.splitlines()[0].startswith("external_userid,name")
