"""An incremental re-tier looks only at customers whose tiers may have moved; it must leave exactly
what a full re-tier would: after it, a full run over the same data finds nothing to change."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, func, inspect, select, update

import segments.retier as retier_module
from bot.demo import data as demo_data
from bot.models import Customer, CustomerTier, Interaction, TierChange, TierRun
from segments.imports import import_orders
from segments.retier import retier, tidy_after_commit
from tests.support import POLICY, TZ, write_csv

START = date(2025, 6, 1)  # with every later as-of day still in the past: orders may not be in the future
GENERATED_AT = datetime(2025, 6, 1, 12, tzinfo=UTC)
KINDS = ["kf_message", "moment_like", "moment_comment", "coupon_redeem"]


def order_rows(generated, prefix: str = "") -> list[dict[str, str]]:
    return [{"order_id": prefix + o["order_id"], "external_userid": o["external_userid"],
             "amount": f"{o['amount_fen'] // 100}.{o['amount_fen'] % 100:02d}",
             "paid_at": o["paid_at"].astimezone(TZ).isoformat(), "status": o["status"]} for o in generated.orders]


def load(db, path: Path, rows: list[dict[str, str]]) -> None:
    write_csv(path, rows)
    with db.begin() as session:
        assert import_orders(session, path, TZ).skipped == 0


def change_something(db, tmp_path: Path, rng: random.Random, as_of: date, step: int) -> None:
    """New and refunded orders, moved orders, new buyers and new contacts, interactions (some dated
    in the past), and edits of the engagement clocks."""
    moment = datetime.combine(as_of, datetime.min.time(), tzinfo=TZ)
    with db.sessions() as session:
        customers = session.execute(select(Customer.id, Customer.external_userid)).all()
    rows = []
    for i in range(rng.randint(5, 40)):
        who = rng.choice(customers).external_userid if rng.random() < 0.8 else f"wmnew{step}-{i}"
        paid = moment - timedelta(days=rng.randint(0, 200), hours=rng.randint(0, 23))
        rows.append({"order_id": f"s{step}-{i}", "external_userid": who, "paid_at": paid.isoformat(),
                     "amount": f"{rng.randint(1, 3000)}.{i % 100:02d}",
                     "status": "refunded" if rng.random() < 0.1 else "paid"})
    for _ in range(rng.randint(0, 5)):  # an existing order refunded or moved to someone else
        rows.append({"order_id": f"o{rng.randint(1, 400)}", "external_userid": rng.choice(customers).external_userid,
                     "amount": "88.00", "paid_at": (moment - timedelta(days=30)).isoformat(),
                     "status": rng.choice(["paid", "refunded"])})
    load(db, tmp_path / f"step{step}.csv", rows)
    with db.begin() as session:
        for i in range(rng.randint(0, 3)):
            session.add(Customer(external_userid=f"wmcontact{step}-{i}", name="",
                                 created_at=moment - timedelta(days=rng.randint(0, 100))))
        for i in range(rng.randint(0, 30)):
            customer_id = rng.choice(customers).id
            occurred = moment - timedelta(days=rng.randint(0, 60), hours=rng.randint(0, 23))
            session.add(Interaction(customer_id=customer_id, kind=rng.choice(KINDS), occurred_at=occurred,
                                    source_ref=f"i{step}-{i}"))
            if rng.random() < 0.5:  # as add_interaction(touch=False): the customer's row is not edited
                continue
            session.execute(update(Customer).where(Customer.id == customer_id, (
                Customer.last_interaction_at.is_(None) | (Customer.last_interaction_at < occurred)))
                .values(last_interaction_at=occurred))
        for _ in range(rng.randint(1, 4)):  # edits of the row alone (no interaction, no order)
            session.execute(update(Customer).where(Customer.id == rng.choice(customers).id)
                            .values(created_at=moment - timedelta(days=rng.randint(0, 400))))
            session.execute(update(Customer).where(Customer.id == rng.choice(customers).id)
                            .values(last_interaction_at=moment - timedelta(hours=rng.randint(1, 2000))))


@pytest.mark.parametrize(("seed", "customers"), [(1, 300), (2, 300), (3, 300), (4, 40), (5, 25)])
def test_incremental_runs_leave_what_a_full_run_would(db, tmp_path, seed, customers):
    """Small populations move their means and cut points across many customers' values."""
    rng = random.Random(seed)
    generated = demo_data.generate(customers, seed=seed, now=GENERATED_AT)
    load(db, tmp_path / "orders.csv", order_rows(generated))
    with db.begin() as session:
        first = retier(session, POLICY, START, TZ)
    assert not first.incremental
    as_of, shares = START, []
    for step in range(4):
        as_of += timedelta(days=rng.choice([0, 0, 1, 3, 17, 40]))
        change_something(db, tmp_path, rng, as_of, step)
        with db.begin() as session:
            incremental = retier(session, POLICY, as_of, TZ)
        assert incremental.incremental
        shares.append(incremental.recomputed / incremental.customers)
        with db.begin() as session:
            full = retier(session, POLICY, as_of, TZ, full=True)
        assert (full.updated, sum(full.changes.values())) == (0, 0), f"step {step}: incremental missed customers"
    # (a long jump of the as-of day may move nearly everyone; each step's changes reach most of 25)
    assert customers < 100 or min(shares) < 0.9


def test_nothing_new_means_nothing_looked_at(db, tmp_path):
    generated = demo_data.generate(100, seed=4, now=GENERATED_AT)
    load(db, tmp_path / "orders.csv", order_rows(generated))
    with db.begin() as session:
        retier(session, POLICY, START, TZ)
        again = retier(session, POLICY, START, TZ)
    assert again.incremental and (again.recomputed, again.updated) == (0, 0)


def test_statistics_that_move_without_crossing_a_value_widen_nothing(db, tmp_path):
    """Comparisons are ``v > threshold`` on integers: a customer on the old cut point, or one whose
    value the mean's floor still separates the same way, cannot move. F 1,1,2×6,3,3 (mean 2, cuts
    1,2,2,2): one more order of 0.01 for a customer with F 3 moves the means (21/10, M +1 fen) but
    neither floor nor any cut, so only that customer is looked at. One more order for a customer with
    F 1 then moves the first F cut 1 → 2, and every customer with F 2 is re-scored."""
    day = datetime(2025, 5, 20, 12, tzinfo=TZ)
    counts = [1, 1, 2, 2, 2, 2, 2, 2, 3, 3]
    load(db, tmp_path / "orders.csv", [
        {"order_id": f"c{c}-{k}", "external_userid": f"wmc{c}", "amount": "10.00",
         "paid_at": (day - timedelta(days=k)).isoformat()} for c, n in enumerate(counts) for k in range(n)])
    with db.begin() as session:
        retier(session, POLICY, START, TZ)
    load(db, tmp_path / "more.csv", [{"order_id": "extra-9", "external_userid": "wmc9", "amount": "0.01",
                                      "paid_at": (day - timedelta(days=30)).isoformat()}])
    with db.begin() as session:
        incremental = retier(session, POLICY, START, TZ)
    assert incremental.incremental and incremental.recomputed == 1
    load(db, tmp_path / "cut.csv", [{"order_id": "extra-0", "external_userid": "wmc0", "amount": "10.00",
                                     "paid_at": (day - timedelta(days=30)).isoformat()}])
    with db.begin() as session:
        moved = retier(session, POLICY, START, TZ)
        f_scores = session.execute(select(CustomerTier.f_score, func.count()).group_by(CustomerTier.f_score)).all()
    assert moved.incremental and moved.recomputed == 7  # F 2 (six, and wmc0 now): the cut passed them
    assert sorted(f_scores) == [(1, 8), (5, 2)]
    with db.begin() as session:
        full = retier(session, POLICY, START, TZ, full=True)
    assert (full.updated, sum(full.changes.values())) == (0, 0)


def test_a_new_policy_an_earlier_day_or_the_tag_driven_path_run_in_full(db, tmp_path):
    generated = demo_data.generate(50, seed=5, now=GENERATED_AT)
    load(db, tmp_path / "orders.csv", order_rows(generated))
    with db.begin() as session:
        retier(session, POLICY, START, TZ)
        assert not retier(session, replace(POLICY, activity_high=POLICY.activity_high + 1), START, TZ).incremental
        assert not retier(session, POLICY, START, TZ).incremental  # back to the first policy: changed again
        assert retier(session, POLICY, START, TZ).incremental
        assert not retier(session, POLICY, START - timedelta(days=1), TZ).incremental
        assert not retier(session, replace(POLICY, stage_path="high_ticket"), START, TZ).incremental
        runs = session.scalars(select(TierRun.full).order_by(TierRun.id)).all()
    assert runs == [True, True, True, False, True, True]


def test_a_run_as_of_a_day_before_some_order_is_followed_by_a_full_run(db, tmp_path):
    """As of a day before the last orders, metrics come from the orders up to that day: the next
    run cannot build on that run's tiers."""
    generated = demo_data.generate(60, seed=6, now=GENERATED_AT)
    load(db, tmp_path / "orders.csv", order_rows(generated))
    with db.begin() as session:
        retier(session, POLICY, START - timedelta(days=90), TZ)
        later = retier(session, POLICY, START, TZ)
        assert not later.incremental
        assert retier(session, POLICY, START, TZ, full=True).updated == 0


def test_a_run_that_rebuilds_the_tier_keys_puts_them_back(db, tmp_path, monkeypatch):
    """When most customers change (a first run), PostgreSQL drops the tier table's foreign key and
    adds it again after the writes; no other key of the tier or customer tables is touched."""
    monkeypatch.setattr(retier_module, "MASS_CHANGE_ROWS", 1)
    before = customer_indexes(db)
    generated = demo_data.generate(120, seed=8, now=GENERATED_AT)
    load(db, tmp_path / "orders.csv", order_rows(generated))
    with db.begin() as session:
        first = retier(session, POLICY, START, TZ)
    assert first.updated == first.customers and customer_indexes(db) == before and first.mass_change
    tidy_after_commit(db.engine, first)  # PostgreSQL: VACUUM (ANALYZE) customer_tiers, outside the transaction
    with db.sessions() as session:
        by_index = session.scalar(select(func.count()).select_from(CustomerTier).where(
            CustomerTier.rfm_segment == "important_value"))
        assert by_index == sum(1 for c in session.scalars(select(Customer)) if c.rfm_segment == "important_value")
    with db.begin() as session:
        assert retier(session, POLICY, START + timedelta(days=30), TZ, full=True).updated > 0
        unchanged = retier(session, POLICY, START + timedelta(days=30), TZ, full=True)
        assert unchanged.updated == 0 and not unchanged.mass_change


def customer_indexes(db) -> list[tuple[str, str, tuple[str, ...], object]]:
    """Indexes, unique constraints and foreign keys of the customer and tier tables."""
    keys = []
    with db.sessions() as session:
        inspector = inspect(session.connection())
        for table in ("customers", "customer_tiers"):
            keys += [(table, index["name"], tuple(index["column_names"]), bool(index["unique"]))
                     for index in inspector.get_indexes(table)]
            keys += [(table, c["name"], tuple(c["column_names"]), True)
                     for c in inspector.get_unique_constraints(table)]
            keys += [(table, f["name"] or "", tuple(f["constrained_columns"]),
                      (f["referred_table"], f.get("options", {}).get("ondelete")))
                     for f in inspector.get_foreign_keys(table)]
    return sorted(set(keys), key=repr)


def test_deleting_a_customer_after_a_retier_still_removes_its_tiers_and_history(db, tmp_path):
    """SQLite writes a re-tier without checking foreign keys row by row; the connection checks them
    again afterwards, so a customer's deletion still cascades to its tier row and TierChanges."""
    generated = demo_data.generate(80, seed=9, now=GENERATED_AT)
    load(db, tmp_path / "orders.csv", order_rows(generated))
    with db.begin() as session:
        retier(session, POLICY, START, TZ)
    with db.begin() as session:
        assert sum(retier(session, POLICY, START + timedelta(days=60), TZ).changes.values()) > 0
    with db.begin() as session:
        tiered = session.scalar(select(func.count()).select_from(CustomerTier))
        gone = session.scalar(select(TierChange.customer_id).limit(1))
        session.execute(delete(Customer).where(Customer.id == gone))
    with db.sessions() as session:
        for model in (CustomerTier, TierChange):
            assert session.scalar(select(func.count()).select_from(model).where(model.customer_id == gone)) == 0
        assert session.scalar(select(func.count()).select_from(CustomerTier)) == tiered - 1
