"""``scrm retier``, ``scrm customer show`` and ``scrm export customers`` as an operator sees them."""

from __future__ import annotations

import csv
import io
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from bot.cli import main
from bot.core.config import load_settings
from bot.core.db import Database
from bot.models import CustomerTag, CustomerTier, TierChange, TierRun

NOON = datetime(2026, 11, 20, 12, 0, tzinfo=ZoneInfo("Asia/Shanghai"))  # the CLI's "now": as of 2026-11-20 is today

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
        result = CliRunner(env=env).invoke(main, list(args), catch_exceptions=False, obj=lambda: NOON)
        assert result.exit_code == 0, result.output
        return result.output

    run("import-orders", str(path), "--no-progress")
    return run


def test_retier_prints_before_and_after(scrm):
    out = scrm("retier", "--as-of", "2026-11-20", "--counts")
    assert "re-tiered 3 customers as of 2026-11-20" in out and "a first tiering" in out
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
                             "expected_purchases", "predicted_value", "next_order_on",
                             "average_days_between_orders"]
    vip = next(r for r in rows if r["external_userid"] == "wmVIP")
    assert (vip["rfm_segment"], vip["stage"], vip["order_count"], vip["total_amount"]) == (
        "important_value", "super", "7", "2100.00")
    assert vip["last_order_at"] == "2026-11-16T12:00:00+08:00"  # app.timezone's, with its offset (stored: UTC)
    assert float(vip["average_days_between_orders"]) > 0  # 7 orders on several days
    stdout = scrm("export", "customers")
    assert stdout.splitlines()[0].startswith("external_userid,name")


def count_rows(database_url, model):
    db = Database(load_settings(overrides={"database": {"url": database_url}}, environ={}).database)
    try:
        with db.sessions() as session:
            return session.scalar(select(func.count()).select_from(model))
    finally:
        db.dispose()


def test_retier_as_of_another_day_is_a_dry_run(scrm, database_url, tmp_path):
    """Only a re-tier as of today writes: one as of a past day showed what the tiers were then but also
    stored them, and the TierChanges it recorded were acted on (pushes, coupons, owner alerts)."""
    tables = (CustomerTier, TierChange, TierRun, CustomerTag)
    stored = [count_rows(database_url, model) for model in tables]
    out = scrm("retier", "--as-of", "2026-11-19")
    assert out.startswith("dry run, nothing written: re-tiered 3 customers as of 2026-11-19")
    assert "rolled back" in out
    assert [count_rows(database_url, model) for model in tables] == stored
    scrm("retier")  # today (the clock's): a baseline, written
    more = tmp_path / "more.csv"
    more.write_text("order_id,external_userid,amount,paid_at,status\n"
                    + "".join(f"m{i},wmSmall,500.00,2026-11-19T12:00:00+08:00,paid\n" for i in range(6)),
                    encoding="utf-8")
    scrm("import-orders", str(more), "--no-progress")
    changes = count_rows(database_url, TierChange)
    past = scrm("retier", "--as-of", "2026-11-21")
    assert "dry run" in past and "super" in past  # the moves it would make are shown
    assert count_rows(database_url, TierChange) == changes
    today = scrm("retier", "--counts")
    assert "dry run" not in today and count_rows(database_url, TierChange) > changes
    assert any(line.split()[:4] == ["stage", "first_purchase", "super", "1"] for line in today.splitlines())
    assert counts_table(today) == counts_table(scrm("retier", "--counts"))  # after = before + moves = counted


def counts_table(output: str) -> dict[tuple[str, str], str]:
    """The before/after table: (dimension, value) → after, for the values someone has after."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("dimension") and "before" in line)
    return {tuple(line.split()[:2]): line.split()[-1] for line in lines[start + 2:] if line.split()
            and line.split()[0] in ("value_tier", "rfm_segment", "stage", "engagement", "activity")
            and line.split()[-1] != "0"}


def test_counts_after_cover_new_contacts_and_customers_never_tiered(scrm, database_url, tmp_path):
    """The after column comes from the before column and the run's moves, also for customers tiered for
    the first time: one without a tier row, one whose tier row holds only its channel's stage."""
    from bot.models import Customer

    scrm("retier")
    db = Database(load_settings(overrides={"database": {"url": database_url}}, environ={}).database)
    try:
        with db.begin() as session:
            session.add(Customer(external_userid="wmNEW"))
            session.add(Customer(external_userid="wmCHANNEL", stage="new"))
    finally:
        db.dispose()
    out = scrm("retier", "--counts")
    assert counts_table(out) == counts_table(scrm("retier", "--counts"))
    assert any(line.split()[:4] == ["value_tier", "-", "low", "2"] for line in out.splitlines())


def test_a_tier_entered_rule_tags_who_entered_the_tier(database_url, tmp_path):
    """The tier-entered auto-tags follow the re-tier's own changes: a first tiering tags everyone in
    the tier, a later run those whose TierChange took them there, and nobody else."""
    import json

    rule = {"name": "super_stage", "when": "tier_entered", "dimension": "stage", "value": "super",
            "tag": "分层/超级用户"}
    env = {"SCRM_CONFIG": None, "SCRM_DATABASE_URL": database_url, "SCRM_TAGS_RULES": json.dumps([rule])}

    def scrm(*args: str) -> str:
        result = CliRunner(env=env).invoke(main, list(args), catch_exceptions=False, obj=lambda: NOON)
        assert result.exit_code == 0, result.output
        return result.output

    orders = tmp_path / "orders.csv"
    orders.write_text(ORDERS, encoding="utf-8")
    scrm("import-orders", str(orders), "--no-progress")
    assert "super_stage +1" in scrm("retier")  # wmVIP, in a first tiering
    more = tmp_path / "more.csv"
    more.write_text("order_id,external_userid,amount,paid_at,status\n"
                    + "".join(f"m{i},wmSmall,500.00,2026-11-19T12:00:00+08:00,paid\n" for i in range(6)),
                    encoding="utf-8")
    scrm("import-orders", str(more), "--no-progress")
    out = scrm("retier")
    assert "super_stage +1" in out and "first_purchase" in out  # wmSmall: first_purchase → super
    assert "auto-tags" not in scrm("retier")
    db = Database(load_settings(overrides={"database": {"url": database_url}}, environ={}).database)
    try:
        with db.sessions() as session:
            from bot.models import Customer, Tag

            tagged = session.scalars(select(Customer.external_userid).join(CustomerTag).join(Tag)
                                     .where(Tag.name == "超级用户").order_by(Customer.external_userid)).all()
    finally:
        db.dispose()
    assert tagged == ["wmSmall", "wmVIP"]


def test_the_chinese_why_tells_staff_the_same_facts(scrm, database_url):
    from segments.explain import explanation
    from segments.policy import TierPolicy

    scrm("retier", "--as-of", "2026-11-20")
    settings = load_settings(overrides={"database": {"url": database_url}}, environ={})
    db = Database(settings.database)
    try:
        with db.sessions() as session:
            from bot.models import Customer

            vip = session.scalar(select(Customer).where(Customer.external_userid == "wmVIP"))
            zh = explanation(session, vip, TierPolicy.from_settings(settings.tiers), NOON.date(), NOON.tzinfo,
                             tier_names={"high": "高价值", "mid": "中价值", "low": "低价值"}).why_zh
    finally:
        db.dispose()
    assert zh["r"].startswith("R 高：最近一次下单在 4 天前，平均") and "F 高：7 笔实付订单，平均 3.33 笔" in zh["f"]
    assert zh["m"].startswith("M 高：累计 2100.00 元") and zh["rfm_segment"].endswith("得出「重要价值」")
    assert zh["value_tier"].startswith("累计实付 2100.00 元、7 笔订单、互动活跃度低，未满足任何规则"
                                       "（高价值需累计实付 > 1000.00 元且订单 > 5 笔且互动活跃度为高；中价值需")
    assert zh["value_tier"].endswith("归为低价值")
    assert not any(word in line for line in zh.values() for word in ("mean", "paid orders", "amount", "rule"))
