"""The SQL re-tier engine against an independent pandas computation, and its invariants."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, func, select

from bot.demo import data as demo_data
from bot.models import Customer, CustomerAggregate, CustomerTier, Interaction, Order, TierChange
from segments.imports import import_orders
from segments.orders import OrderRow, OrderWriter
from segments.policy import TierPolicy
from segments.retier import DIMENSIONS, retier, tier_counts
from segments.rfm import SEGMENTS, aggregate_stats
from tests.support import POLICY, TZ, write_csv

AS_OF = date(2026, 11, 20)


def reference(customers: pd.DataFrame, orders: pd.DataFrame, interactions: pd.DataFrame, as_of: date,
              policy: TierPolicy = POLICY) -> pd.DataFrame:
    """Straightforward pandas: the definitions from DESIGN.md §4 / issue 3, nothing shared with the engine."""
    as_of_day = as_of.toordinal()
    out = customers.set_index("external_userid").copy()
    paid = orders[orders.status == "paid"].copy()
    paid["day"] = paid.paid_at.map(lambda t: t.astimezone(TZ).date().toordinal())
    g = paid.groupby("external_userid").agg(F=("order_id", "count"), M=("amount_fen", "sum"), last=("day", "max"))
    n = len(g)
    r = as_of_day - g["last"]
    flags = pd.DataFrame({"r": r * n < r.sum(), "f": g.F * n > g.F.sum(), "m": g.M * n > g.M.sum()})
    g["segment"] = [SEGMENTS[(bool(a), bool(b), bool(c))] for a, b, c in flags.itertuples(index=False)]
    for dim, col in (("r_score", "last"), ("f_score", "F"), ("m_score", "M")):
        rank = g[col].rank(method="min")
        g[dim] = (1 + (5 * (rank - 1)) // n).astype(int)
    points = (g.r_score - 1) + (g.f_score - 1) + (g.m_score - 1)  # equal weights: 0–12 points
    g["score"] = [int(Fraction(100 * p, 12) + Fraction(1, 2)) for p in points]  # round half up
    out = out.join(g)
    out["F"] = out["F"].fillna(0).astype(int)
    out["M"] = out["M"].fillna(0).astype(int)
    window_start = as_of_day - policy.activity_window_days + 1
    weights = dict(policy.activity_weights)
    acts = interactions.copy()
    acts["day"] = acts.occurred_at.map(lambda t: t.astimezone(TZ).date().toordinal())
    in_window = acts[(acts.day >= window_start) & (acts.day <= as_of_day)]
    score = in_window.assign(w=in_window.kind.map(lambda k: weights.get(k, 0))).groupby("external_userid").w.sum()
    out["activity_score"] = score.reindex(out.index).fillna(0).astype(int)
    out["activity"] = ["high" if s >= policy.activity_high else "mid" if s >= policy.activity_mid else "low"
                       for s in out.activity_score]
    out["value_tier"] = [_value_tier(m, f, a) for m, f, a in zip(out.M, out.F, out.activity, strict=True)]
    out["stage"] = ["new" if f == 0 else "first_purchase" if f == 1 else "super" if f >= 6 else "repeat"
                    for f in out.F]
    last_touch = acts.groupby("external_userid").day.max().reindex(out.index)
    touch = pd.concat([out["last"], last_touch, out.created_at.map(lambda t: t.astimezone(TZ).date().toordinal())],
                      axis=1).max(axis=1)
    out["engagement"] = ["active" if as_of_day - t <= 30 else "silent" if as_of_day - t <= 90 else "churned"
                         for t in touch]
    return out


def _value_tier(amount_fen: int, orders: int, activity: str) -> str:
    if amount_fen > 100000 and orders > 5 and activity == "high":
        return "high"
    if amount_fen >= 50000 and orders >= 3 and activity in ("high", "mid"):
        return "mid"
    return "low"


def engine_rows(db: Any) -> pd.DataFrame:
    with db.sessions() as session:
        rows = session.execute(select(Customer.external_userid, Customer.rfm_segment, Customer.r_score,
                                      Customer.f_score, Customer.m_score, Customer.score, Customer.value_tier,
                                      Customer.stage,
                                      Customer.engagement, Customer.activity, Customer.activity_score)).all()
    return pd.DataFrame([r._asdict() for r in rows]).set_index("external_userid")


def edge_case_orders() -> list[dict[str, Any]]:
    """Ties, refunds, and orders on both sides of local midnight written in different offsets."""
    rows = []
    for i in range(6):  # six customers tied on everything
        rows.append({"order_id": f"tie-{i}", "external_userid": f"wmtie{i}", "amount": "88.00",
                     "paid_at": "2026-10-01T12:00:00+08:00", "status": "paid"})
    rows += [
        # 2026-11-20 00:30 local, the as-of day itself
        {"order_id": "tz-1", "external_userid": "wmtz", "amount": "10", "paid_at": "2026-11-19T16:30:00Z"},
        {"order_id": "tz-2", "external_userid": "wmtz2", "amount": "10", "paid_at": "2026-11-19T15:59:59Z"},  # 11-19
        {"order_id": "tz-3", "external_userid": "wmtz3", "amount": "10", "paid_at": "2026-11-19T08:00:00-08:00"},
        {"order_id": "rf-1", "external_userid": "wmrefund", "amount": "999.99", "paid_at": "2026-11-01T10:00:00+08:00",
         "status": "refunded"},
        {"order_id": "rf-2", "external_userid": "wmrefund", "amount": "5", "paid_at": "2026-11-02T10:00:00+08:00"},
        {"order_id": "rf-3", "external_userid": "wmrefundonly", "amount": "300", "paid_at": "2026-11-02T10:00:00+08:00",
         "status": "refunded"},
    ]
    return rows


@pytest.fixture
def dataset(db, tmp_path):
    """~500 generated customers plus edge cases, imported through the CSV importer."""
    now = datetime(2026, 11, 20, 12, tzinfo=UTC)
    generated = demo_data.generate(500, seed=3, now=now)
    orders = [{"order_id": o["order_id"], "external_userid": o["external_userid"],
               "amount": f"{o['amount_fen'] // 100}.{o['amount_fen'] % 100:02d}",
               "paid_at": o["paid_at"].astimezone(TZ).isoformat(), "status": o["status"]} for o in generated.orders]
    orders += edge_case_orders()
    path = tmp_path / "orders.csv"
    write_csv(path, orders)
    created = {c["external_userid"]: c["added_at"] for c in generated.customers}
    with db.begin() as session:
        for c in generated.customers:
            session.add(Customer(external_userid=c["external_userid"], name=c["name"], created_at=c["added_at"]))
        session.add(Customer(external_userid="wmnoorders", name="x", created_at=now - timedelta(days=400)))
        session.flush()
        summary = import_orders(session, path, TZ)
        assert summary.skipped == 0
        interactions = _interactions(session, now)
        for customer in session.scalars(select(Customer)):
            created.setdefault(customer.external_userid, customer.created_at)
    customers = pd.DataFrame({"external_userid": list(created), "created_at": list(created.values())})
    frame = pd.DataFrame(orders)
    frame["status"] = frame["status"].fillna("paid")
    frame["amount_fen"] = frame.amount.map(lambda a: round(float(a) * 100))
    frame["paid_at"] = frame.paid_at.map(datetime.fromisoformat)
    return customers, frame, interactions


def _interactions(session: Any, now: datetime) -> pd.DataFrame:
    """Interactions for some customers, inside and outside the activity window."""
    rows = []
    customers = session.scalars(select(Customer).order_by(Customer.id).limit(200)).all()
    for i, customer in enumerate(customers):
        for j in range(i % 12):
            occurred = now - timedelta(days=(j * 7) % 45, hours=j)
            kind = ["kf_message", "moment_like", "moment_comment", "coupon_redeem", "unknown_kind"][j % 5]
            session.add(Interaction(customer_id=customer.id, kind=kind, occurred_at=occurred,
                                    source_ref=f"t-{customer.id}-{j}"))
            rows.append({"external_userid": customer.external_userid, "kind": kind, "occurred_at": occurred})
            if customer.last_interaction_at is None or customer.last_interaction_at < occurred:
                customer.last_interaction_at = occurred
    return pd.DataFrame(rows)


def test_engine_matches_pandas_on_every_customer(db, dataset):
    customers, orders, interactions = dataset
    with db.begin() as session:
        result = retier(session, POLICY, AS_OF, TZ)
    expected = reference(customers, orders, interactions, AS_OF)
    got = engine_rows(db).reindex(expected.index)
    assert result.customers == len(expected)
    buyers = expected.segment.notna()
    assert (got.rfm_segment[buyers] == expected.segment[buyers]).all()
    assert got.rfm_segment[~buyers].isna().all()
    for dim in ("r_score", "f_score", "m_score", "score"):
        assert (got[dim][buyers].astype(int) == expected[dim][buyers]).all(), dim
    for dim in ("value_tier", "stage", "engagement", "activity", "activity_score"):
        mismatched = expected.index[got[dim] != expected[dim]]
        assert list(mismatched) == [], dim
    assert set(got.value_tier) >= {"low", "mid"}  # the data reaches more than one tier
    tie_segments = got.loc[[f"wmtie{i}" for i in range(6)], "rfm_segment"]
    assert tie_segments.nunique() == 1
    assert pd.isna(got.loc["wmrefundonly", "rfm_segment"]) and got.loc["wmrefundonly", "stage"] == "new"


def test_local_day_of_orders_decides_recency(db):
    """paid_at is converted to the local (+08:00) day before counting days."""
    rows = [OrderRow("a", "wma", 100, datetime(2026, 11, 19, 16, 30, tzinfo=UTC), 0, "paid"),
            OrderRow("b", "wmb", 100, datetime(2026, 11, 19, 15, 59, tzinfo=UTC), 0, "paid")]
    rows = [OrderRow(r.order_id, r.external_userid, r.amount_fen, r.paid_at,
                     r.paid_at.astimezone(TZ).date().toordinal(), r.status) for r in rows]
    with db.begin() as session:
        OrderWriter(session).write(rows)
        retier(session, POLICY, AS_OF, TZ)
    with db.sessions() as session:
        days = dict(session.execute(select(Customer.external_userid, CustomerAggregate.last_order_day)
                                    .join(CustomerAggregate, CustomerAggregate.customer_id == Customer.id)).all())
        segments = dict(session.execute(select(Customer.external_userid, Customer.rfm_segment)).all())
    assert AS_OF.toordinal() - days["wma"] == 0 and AS_OF.toordinal() - days["wmb"] == 1
    assert segments == {"wma": "general_develop", "wmb": "general_retain"}  # R high only for the 0-day one


def test_single_customer_is_not_above_its_own_mean(db):
    with db.begin() as session:
        OrderWriter(session).write([OrderRow("o1", "wmsolo", 12345, datetime(2026, 11, 1, tzinfo=UTC),
                                             date(2026, 11, 1).toordinal(), "paid")])
        retier(session, POLICY, AS_OF, TZ)
    with db.sessions() as session:
        solo = session.scalar(select(Customer))
    assert (solo.rfm_segment, solo.r_score, solo.f_score, solo.m_score, solo.score) == ("general_retain", 1, 1, 1, 0)


def test_retier_writes_only_changes_and_records_them(db):
    start = datetime(2026, 10, 1, tzinfo=UTC)
    rows = [OrderRow(f"o{i}", f"wm{i % 4}", 1000 * (i + 1), start + timedelta(days=i), 0, "paid") for i in range(8)]
    rows = [OrderRow(r.order_id, r.external_userid, r.amount_fen, r.paid_at, r.paid_at.astimezone(TZ).date()
                     .toordinal(), r.status) for r in rows]
    with db.begin() as session:
        OrderWriter(session).write(rows)
        first = retier(session, POLICY, AS_OF, TZ)
        second = retier(session, POLICY, AS_OF, TZ)
        assert session.scalar(select(func.count()).select_from(TierChange)) == 0  # a first tiering is a baseline
    assert first.updated == 4 and second.updated == 0 and sum(second.changes.values()) == 0
    with db.begin() as session:  # wm0 buys a lot more: it changes segment and stage
        OrderWriter(session).write([OrderRow(f"x{i}", "wm0", 900_000, start + timedelta(days=40 + i),
                                             (start + timedelta(days=40 + i)).astimezone(TZ).date().toordinal(),
                                             "paid") for i in range(5)])
        third = retier(session, POLICY, AS_OF, TZ)
        changes = session.execute(select(TierChange.dimension, TierChange.from_value, TierChange.to_value,
                                         TierChange.reason).join(Customer, Customer.id == TierChange.customer_id)
                                  .where(Customer.external_userid == "wm0")).all()
        recorded = dict(session.execute(select(TierChange.dimension, func.count())
                                        .group_by(TierChange.dimension)).all())
    assert third.updated >= 1
    # the counts `scrm retier` prints are the rows recorded (psycopg 3 loses them unless preserved)
    assert {d: n for d, n in third.changes.items() if n} == recorded
    by_dim = {d: (f, t, reason) for d, f, t, reason in changes}
    assert by_dim["stage"][:2] == ("repeat", "super")
    # The why names the customer's own figures and the rule (DESIGN §2: before/after/why).
    assert by_dim["stage"][2].startswith("paid orders ") and " 元 (super from " in by_dim["stage"][2]
    assert by_dim["rfm_segment"][1] == "important_value" and "mean" in by_dim["rfm_segment"][2]


def _paid(order_id: str, external_userid: str, fen: int, at: datetime) -> OrderRow:
    return OrderRow(order_id, external_userid, fen, at, at.astimezone(TZ).date().toordinal(), "paid")


def test_a_customer_tiered_for_the_first_time_after_the_first_run_gets_tier_changes(db):
    """A new contact who buys before the night's re-tier is tiered for the first time straight into
    first_purchase: the actions and sequences that start there read TierChanges, so that entry is one
    (from the stage a channel gave, or from nothing). Every other first tiering stays a baseline: the
    first run of all (even where a channel's stage was stored before it), contacts a sync brings in
    (they joined long ago), stubs of an order import (no follow) — loading a base fires no actions."""
    from bot.models import Follow, Staff

    start = datetime(2026, 10, 1, tzinfo=UTC)
    with db.begin() as session:
        session.add(Customer(external_userid="wmEARLY", stage="new"))  # a channel's stage, before any run
        OrderWriter(session).write([_paid(f"o{i}", f"wm{i % 3}", 1000 * (i + 1), start + timedelta(days=i))
                                    for i in range(6)])
        retier(session, POLICY, AS_OF, TZ)
        assert session.scalar(select(func.count()).select_from(TierChange)) == 0  # the baseline
        staff = Staff(userid="zhangsan", name="张三")
        new, synced = Customer(external_userid="wmNEW", stage="new"), Customer(external_userid="wmSYNCED")
        session.add_all([staff, new, synced])
        session.flush()
        session.add_all([Follow(customer_id=new.id, staff_id=staff.id, added_at=datetime.now(UTC)),
                         Follow(customer_id=synced.id, staff_id=staff.id, added_at=start - timedelta(days=400))])
        OrderWriter(session).write([_paid("n1", "wmNEW", 5000, start + timedelta(days=20)),
                                    _paid("s1", "wmSYNCED", 5000, start + timedelta(days=20)),
                                    _paid("h1", "wmHISTORIC", 5000, start + timedelta(days=20))])  # a stub
        result = retier(session, POLICY, AS_OF, TZ)
        changes = {(e, d): (f, t) for e, d, f, t in session.execute(
            select(Customer.external_userid, TierChange.dimension, TierChange.from_value, TierChange.to_value)
            .join(Customer, Customer.id == TierChange.customer_id))}
    assert changes[("wmNEW", "stage")] == ("new", "first_purchase")
    assert changes[("wmNEW", "value_tier")][0] is None and changes[("wmNEW", "rfm_segment")][0] is None
    assert not {e for e, _ in changes} & {"wmSYNCED", "wmHISTORIC", "wmEARLY"}  # baselines
    assert result.changes["stage"] >= 1
    moved = {m[1:3]: m[3] for m in result.moves if m[0] == "stage"}
    assert moved[("new", "first_purchase")] == 1 and moved[(None, "first_purchase")] == 2  # each counted once


def test_as_of_in_the_past_ignores_later_orders(db):
    early, late = datetime(2026, 1, 10, 4, tzinfo=UTC), datetime(2026, 11, 10, 4, tzinfo=UTC)
    rows = [OrderRow("e", "wmx", 500, early, early.astimezone(TZ).date().toordinal(), "paid"),
            OrderRow("l", "wmx", 500, late, late.astimezone(TZ).date().toordinal(), "paid")]
    with db.begin() as session:
        OrderWriter(session).write(rows)
        retier(session, POLICY, date(2026, 6, 1), TZ)
        customer = session.scalar(select(Customer))
        assert (customer.stage, customer.f_score) == ("first_purchase", 1)


@pytest.mark.parametrize("as_of", [AS_OF, date(2026, 11, 1)])  # today's aggregates; a past day's own sums
def test_the_largest_amounts_an_import_takes_do_not_overflow_the_re_tier(db, tmp_path, as_of):
    """9,300 buyers at just under 10^13 元 each (what an import accepts) and one at 1 元: their amounts summed
    past 2^63 fen (SQLite: "integer overflow") and one amount times the buyers past a BIGINT (PostgreSQL)."""
    rows = [{"order_id": f"big{i}", "external_userid": f"wmbig{i}", "amount": "9999999999999.99",
             "paid_at": "2026-10-01T10:00:00+08:00"} for i in range(9_300)]
    rows.append({"order_id": "small", "external_userid": "wmsmall", "amount": "1", "paid_at": "2026-10-01T10:00:00"})
    write_csv(tmp_path / "orders.csv", rows)
    with db.begin() as session:
        assert import_orders(session, tmp_path / "orders.csv", TZ).skipped == 0
    with db.begin() as session:
        retier(session, POLICY, as_of, TZ, full=True)
        tiers = dict(session.execute(select(Customer.external_userid, CustomerTier.rfm_segment)
                                     .join(CustomerTier, CustomerTier.customer_id == Customer.id)).all())
        if as_of != AS_OF:
            session.rollback()
    # the mean is just under the big amount: the big buyers are above it, the small one below; R and F tie
    assert tiers["wmsmall"] == "general_retain" and tiers["wmbig0"] == "important_retain"


def test_orders_move_to_their_local_day_when_the_time_zone_changes(db, tmp_path):
    """Each order's local day was fixed at import: after app.timezone changed, an order at 02:30 UTC stayed on
    the 30th (Shanghai) where New York has the 29th, and recency counted the old day."""
    from segments.localdays import keep_local_days

    new_york = ZoneInfo("America/New_York")
    write_csv(tmp_path / "orders.csv", [
        {"order_id": "early", "external_userid": "wmeast", "amount": "100", "paid_at": "2026-11-10T02:30:00Z"},
        {"order_id": "late", "external_userid": "wmwest", "amount": "100", "paid_at": "2026-11-15T12:00:00Z"}])
    with db.begin() as session:
        import_orders(session, tmp_path / "orders.csv", TZ)
        assert retier(session, POLICY, AS_OF, TZ).relocalized == 0  # records the zone the days are in
    with db.begin() as session:
        assert retier(session, POLICY, AS_OF, new_york).relocalized == 1  # 12:00 UTC is the same day in both
        days = dict(session.execute(select(Customer.external_userid, CustomerAggregate.last_order_day)
                                    .join(CustomerAggregate, CustomerAggregate.customer_id == Customer.id)).all())
        paid = set(session.scalars(select(Order.paid_day)))
    assert days == {"wmeast": date(2026, 11, 9).toordinal(), "wmwest": date(2026, 11, 15).toordinal()}
    assert paid == set(days.values())
    with db.begin() as session:
        assert keep_local_days(session, new_york) == 0 and retier(session, POLICY, AS_OF, new_york).relocalized == 0


ORDER = st.tuples(st.integers(0, 5), st.integers(0, 300_000), st.integers(0, 120),
                  st.sampled_from(["paid", "refunded"]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(ORDER, max_size=25), st.integers(0, 3))
def test_invariants_hold_for_any_data(db, orders, no_order_customers):
    with db.begin() as session:
        for table in (TierChange, Order, CustomerAggregate, Interaction, Customer):
            session.execute(delete(table))
        base = datetime(2026, 7, 1, tzinfo=UTC)
        rows = [OrderRow(f"h{i}", f"wm{c}", amount, base + timedelta(days=d), (base + timedelta(days=d))
                         .astimezone(TZ).date().toordinal(), status) for i, (c, amount, d, status) in enumerate(orders)]
        OrderWriter(session).write(rows)
        for i in range(no_order_customers):
            session.add(Customer(external_userid=f"wmnone{i}", name=""))
        session.flush()
        retier(session, POLICY, AS_OF, TZ)
        again = retier(session, POLICY, AS_OF, TZ)
        assert again.updated == 0 and sum(again.changes.values()) == 0
        buyers = {f"wm{c}" for c, _, _, status in orders if status == "paid"}
        segmented = dict(session.execute(select(Customer.external_userid, Customer.rfm_segment)).all())
    assert {e for e, s in segmented.items() if s is not None} == buyers
    assert all(s in SEGMENTS.values() for s in segmented.values() if s is not None)
    expected = _python_segments(orders)
    assert {e: s for e, s in segmented.items() if s is not None} == expected


def _python_segments(orders: list[tuple[int, int, int, str]]) -> dict[str, str]:
    """A third, plain-Python reading of the definition (fractions, not cross-multiplication)."""
    base = datetime(2026, 7, 1, tzinfo=UTC)
    per: dict[str, list[int]] = {}
    for c, amount, d, status in orders:
        if status != "paid":
            continue
        day = (base + timedelta(days=d)).astimezone(TZ).date().toordinal()
        f, m, last = per.get(f"wm{c}", [0, 0, 0])
        per[f"wm{c}"] = [f + 1, m + amount, max(last, day)]
    if not per:
        return {}
    n = len(per)
    mean_r = Fraction(sum(AS_OF.toordinal() - v[2] for v in per.values()), n)
    mean_f = Fraction(sum(v[0] for v in per.values()), n)
    mean_m = Fraction(sum(v[1] for v in per.values()), n)
    return {e: SEGMENTS[(AS_OF.toordinal() - v[2] < mean_r, v[0] > mean_f, v[1] > mean_m)] for e, v in per.items()}


def test_high_ticket_path_uses_interactions_and_intent_tags(db):
    from dataclasses import replace

    from bot.models import CustomerTag, Tag, TagGroup

    policy = replace(POLICY, stage_path="high_ticket")
    now = datetime(2026, 11, 19, tzinfo=UTC)
    with db.begin() as session:
        stranger, chatted, quoted = (Customer(external_userid=e, name="") for e in ("wmS", "wmP", "wmI"))
        chatted.last_interaction_at = now
        session.add_all([stranger, chatted, quoted])
        group = TagGroup(name="销售阶段")
        tag = Tag(group=group, name="已报价")
        session.add_all([group, tag])
        session.flush()
        session.add(CustomerTag(customer_id=quoted.id, tag_id=tag.id, source="staff", added_by="zhangsan"))
        OrderWriter(session).write([OrderRow("b1", "wmBuyer", 100, now, now.astimezone(TZ).date().toordinal(),
                                             "paid")])
        retier(session, policy, AS_OF, TZ)
        stages = dict(session.execute(select(Customer.external_userid, Customer.stage)).all())
    assert stages == {"wmS": "stranger", "wmP": "potential", "wmI": "intent", "wmBuyer": "first_purchase"}


def test_a_channels_starting_stage_is_a_floor_until_the_first_order(db):
    """High-ticket path: customers a channel brings in at 意向 or 潜在 stay there through the night's
    re-tier while they follow that member (a channel row's stage wins over the config entry of the same
    state); a buyer stage named by a channel is left to the orders, and an order moves the customer on;
    the why names the channel."""
    from dataclasses import replace

    from bot.models import Channel, Follow, Staff
    from segments.explain import explanation

    channels = {"expo": {"stage": "intent"}, "ads": {"stage": "potential"}, "fake": {"stage": "repeat"},
                "row": {"stage": "intent"}}
    from types import SimpleNamespace

    from bot.core.config import TiersSettings

    policy = TierPolicy.from_settings(replace(TiersSettings(), stage_path="high_ticket"), channels)
    assert policy.channel_stages == (("ads", "potential"), ("expo", "intent"), ("row", "intent"))
    assert TierPolicy.of(SimpleNamespace(tiers=replace(TiersSettings(), stage_path="high_ticket"),
                                         contacts=SimpleNamespace(channels=channels))) == policy
    now = datetime(2026, 11, 19, tzinfo=UTC)
    with db.begin() as session:
        session.add(Channel(state="row", stage="potential"))
        staff = Staff(userid="zhangsan")
        session.add(staff)
        people = {e: Customer(external_userid=e, name="")
                  for e in ("wmExpo", "wmAds", "wmFake", "wmRow", "wmBuy", "wmGone")}
        session.add_all(people.values())
        session.flush()
        for external_userid, state in (("wmExpo", "expo"), ("wmAds", "ads"), ("wmFake", "fake"), ("wmRow", "row"),
                                       ("wmBuy", "expo"), ("wmGone", "expo")):
            session.add(Follow(customer_id=people[external_userid].id, staff_id=staff.id, state=state, added_at=now,
                               ended_at=now if external_userid == "wmGone" else None))
        OrderWriter(session).write([OrderRow("b1", "wmBuy", 100, now, now.astimezone(TZ).date().toordinal(), "paid")])
        retier(session, policy, AS_OF, TZ)
        stages = dict(session.execute(select(Customer.external_userid, Customer.stage)).all())
        why = explanation(session, people["wmExpo"], policy, AS_OF, TZ)
        gone = explanation(session, people["wmGone"], policy, AS_OF, TZ)
    # wmGone removed the member (or was removed): the channel no longer holds them up.
    assert stages == {"wmExpo": "intent", "wmAds": "potential", "wmFake": "stranger", "wmRow": "potential",
                      "wmBuy": "first_purchase", "wmGone": "stranger"}
    assert "channel" not in gone.why["stage"]
    assert "came through channel expo" in why.why["stage"] and "经渠道「expo」添加，至少为意向" in why.why_zh["stage"]


@pytest.mark.parametrize("buyers", [1, 2, 4, 5, 6, 7, 10, 13, 25])
def test_quintile_cut_points_from_the_aggregates_are_exact(db, buyers):
    """The cut points are the values at positions ceil(k·n/5): read from the aggregates (index offsets
    on SQLite, percentile_disc on PostgreSQL) they equal a sort in Python, for every n mod 5 and ties."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [OrderRow(f"q{i}-{j}", f"wmq{i}", 100 * (1 + i), start + timedelta(days=i % 4), 0, "paid")
            for i in range(buyers) for j in range(1 + i % 5)]
    with db.begin() as session:
        OrderWriter(session).write([OrderRow(r.order_id, r.external_userid, r.amount_fen, r.paid_at,
                                             r.paid_at.date().toordinal(), r.status) for r in rows])
        stats = aggregate_stats(session)
        per_customer = session.execute(select(CustomerAggregate.last_order_day, CustomerAggregate.order_count,
                                              CustomerAggregate.paid_amount_fen)).all()
    positions = [-(-k * buyers // 5) for k in range(1, 5)]
    for i, cuts in enumerate((stats.cuts_last_day, stats.cuts_orders, stats.cuts_amount_fen)):
        ordered = sorted(values[i] for values in per_customer)
        assert cuts == tuple(ordered[p - 1] for p in positions)
    assert (stats.n, stats.sum_orders) == (buyers, len(rows))


def test_tier_counts_cover_every_customer_tiered_or_not(db):
    start = datetime(2026, 10, 1, tzinfo=UTC)
    with db.begin() as session:
        OrderWriter(session).write([OrderRow(f"o{i}", f"wm{i % 5}", 1000 * (i + 1), start + timedelta(days=i),
                                             (start + timedelta(days=i)).astimezone(TZ).date().toordinal(), "paid")
                                    for i in range(12)])
        retier(session, POLICY, AS_OF, TZ)
        session.add_all([Customer(external_userid="wm-new", name="新客"), Customer(external_userid="wm-x", name="x")])
        session.flush()
        session.execute(delete(CustomerTier).where(CustomerTier.customer_id == select(Customer.id).where(
            Customer.external_userid == "wm0").scalar_subquery()))
        counts = tier_counts(session)
        joined = {d: dict(session.execute(select(getattr(CustomerTier, d), func.count()).select_from(Customer)
                                          .outerjoin(CustomerTier, CustomerTier.customer_id == Customer.id)
                                          .group_by(getattr(CustomerTier, d))).all()) for d in DIMENSIONS}
    assert counts == joined and sum(counts["value_tier"].values()) == 7 and counts["value_tier"][None] == 3
