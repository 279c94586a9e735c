"""The purchase days the predictions read (customer_aggregates.paid_days, first_day_fen) are kept by
every order writer — the API's batches, the CSV import, its bulk merge, refunds and moved orders —
exactly as a rebuild from the orders gives them, and the summaries read from the aggregates equal
the ones grouped from the orders."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.core.db import make_engine
from bot.models import CustomerAggregate
from segments.imports import import_orders
from segments.orders import OrderWriter, parse_order, rebuild_all_aggregates
from segments.predict import _from_aggregates, _from_orders, summarise

TZ = ZoneInfo("Asia/Shanghai")
AS_OF = date(2026, 3, 31)
NOW = datetime(2026, 3, 31, 23, 0, tzinfo=TZ)
KEPT = ("order_count", "paid_amount_fen", "refund_count", "refunded_amount_fen", "first_order_day",
        "last_order_day", "paid_days", "first_day_fen")


@pytest.fixture
def session(database_url):
    engine = make_engine(database_url)
    with Session(engine) as s:
        yield s
    engine.dispose()


def kept(session: Session) -> dict[int, tuple]:
    return {a.customer_id: tuple(getattr(a, c) for c in KEPT) for a in session.scalars(select(CustomerAggregate))}


def assert_as_rebuilt(session: Session) -> None:
    """The maintained aggregates equal a rebuild from the orders, and so do the summaries."""
    session.flush()
    session.expire_all()
    maintained = kept(session)
    assert all(v[6] is not None and v[7] is not None for v in maintained.values())
    table = _from_aggregates(session, AS_OF.toordinal())
    assert table is not None
    assert np.array_equal(table, _from_orders(session, AS_OF.toordinal()))
    rebuild_all_aggregates(session)
    session.expire_all()
    assert kept(session) == maintained


def write(session: Session, *orders: tuple[str, str, str, str, str]) -> None:
    """(order_id, external_userid, amount 元, local time, status) through the API's writer."""
    rows = [parse_order({"order_id": o, "external_userid": c, "amount": a, "paid_at": t, "status": s}, TZ, NOW)
            for o, c, a, t, s in orders]
    OrderWriter(session).write(rows)


def test_the_api_writer_keeps_purchase_days_in_every_order_of_arrival(session):
    write(session, ("a1", "ann", "10.00", "2026-01-05T10:00:00", "paid"),
          ("a2", "ann", "5.00", "2026-01-05T18:00:00", "paid"),  # the same first day: one purchase of 15 元
          ("b1", "bob", "7.00", "2026-02-01T09:00:00", "paid"))
    assert_as_rebuilt(session)
    write(session, ("a3", "ann", "20.00", "2026-01-05T20:00:00", "paid"),  # still the first (and last) day
          ("b2", "bob", "3.00", "2026-02-10T09:00:00", "paid"), ("b3", "bob", "4.00", "2026-02-10T10:00:00", "paid"))
    assert_as_rebuilt(session)
    ann = session.scalar(select(CustomerAggregate).where(CustomerAggregate.first_day_fen == 3500))
    assert ann is not None and ann.paid_days == 1
    write(session, ("a4", "ann", "1.00", "2026-03-01T10:00:00", "paid"),  # a later day
          ("b4", "bob", "9.00", "2026-02-05T09:00:00", "paid"),  # between earlier days: recounted from the orders
          ("c1", "cat", "2.00", "2026-03-02T09:00:00", "refunded"))  # no paid order at all
    assert_as_rebuilt(session)
    write(session, ("b5", "bob", "6.00", "2026-01-20T09:00:00", "paid"),  # before the first day
          ("a5", "ann", "8.00", "2026-01-05T08:00:00", "paid"))  # on the first day, earlier in it
    assert_as_rebuilt(session)
    write(session, ("a1", "ann", "10.00", "2026-01-05T10:00:00", "refunded"),  # a refund: rebuilt
          ("b5", "cat", "6.00", "2026-01-20T09:00:00", "paid"))  # an order moved to another customer
    assert_as_rebuilt(session)
    bob = session.scalar(select(CustomerAggregate).where(CustomerAggregate.paid_days == 3))
    assert bob is not None and bob.first_day_fen == 700


def test_csv_imports_keep_purchase_days(session, tmp_path: Path):
    def csv(name: str, lines: list[str]) -> Path:
        path = tmp_path / name
        path.write_text("order_id,external_userid,amount,paid_at,status\n" + "\n".join(lines) + "\n")
        return path

    first = [f"o{i},u{i % 40},{1 + i % 7}.50,2026-0{1 + i % 3}-{1 + i % 28:02d}T1{i % 10}:00:00+08:00,"
             + ("refunded" if i % 11 == 0 else "paid") for i in range(400)]
    import_orders(session, csv("first.csv", first), TZ)  # every row a new order: the file's own totals
    assert_as_rebuilt(session)
    more = [f"n{i},u{i % 50},3.00,2026-03-{10 + i % 20:02d}T12:00:00+08:00,paid" for i in range(120)]
    more += ["o5,u5,99.00,2026-03-30T10:00:00+08:00,paid",  # a known order changed: rebuilt
             "o7,u7,2.50,2026-01-08T17:00:00+08:00,refunded"]
    import_orders(session, csv("more.csv", more), TZ)  # merged into existing aggregates
    assert_as_rebuilt(session)
    repeated = ["r1,u1,1.00,2026-03-31T09:00:00+08:00,paid", "r1,u1,2.00,2026-03-31T10:00:00+08:00,paid"]
    import_orders(session, csv("repeated.csv", repeated), TZ)
    assert_as_rebuilt(session)


def test_summaries_read_the_orders_when_the_aggregates_cannot_serve(session):
    write(session, ("a1", "ann", "10.00", "2026-01-05T10:00:00", "paid"),
          ("a2", "ann", "5.00", "2026-03-05T18:00:00", "paid"))
    session.flush()
    from_aggregates = summarise(session, AS_OF)
    assert (from_aggregates.x.tolist(), from_aggregates.repeat_fen.tolist()) == ([1], [500])
    earlier = AS_OF - timedelta(days=40)  # before ann's last order: the aggregates count it
    assert _from_aggregates(session, earlier.toordinal()) is None
    assert summarise(session, earlier).x.tolist() == [0]
    session.execute(CustomerAggregate.__table__.update().values(paid_days=None))  # not known (written by hand)
    assert _from_aggregates(session, AS_OF.toordinal()) is None
    assert summarise(session, AS_OF).repeat_fen.tolist() == [500]
