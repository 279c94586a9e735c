"""The bulk importer converts rows in SQL on a fast path; every row must come out exactly as the one
definition of a valid order (parse_order) says — same values, or skipped with the same reason."""

from __future__ import annotations

import csv
import io
import random
import re
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import delete, func, insert, inspect, select
from sqlalchemy.exc import IntegrityError

from bot.models import Customer, CustomerAggregate, Order, TierDirty
from segments import bulk_orders, imports
from segments.bulk_orders import offset_transitions
from segments.imports import import_orders
from segments.orders import RowError, parse_order

AMOUNTS = ["0", "7", "007", "12.3", "12.30", "0.01", "1.", ".5", "12.345", "١٢", " 12", "12 ", "9999999999999",
           "99999999999999", "9999999999999.99", "1e3", "-1", "+1", "1,000", "", "1.2.3", "12.3a"]
TIMES = [
    "2025-03-09T01:59:59-05:00", "2025-03-09T03:00:00-04:00", "2025-11-02T01:30:00-04:00",
    "2025-11-02T01:30:00-05:00", "2024-02-29T23:59:59+08:00", "2025-02-29T10:00:00+08:00",
    "2025-04-31T10:00:00+08:00", "2025-01-01T24:00:00+08:00", "2025-13-01T10:00:00+08:00",
    "1989-12-31T23:59:59+08:00", "1990-01-01T00:00:00+08:00", "1990-01-01T00:00:00+14:00",
    "1990-01-01T03:00:00-10:00", "1991-04-14T02:30:00+09:00", "1991-09-15T01:30:00+08:00",
    "2025-01-01T10:00:00+15:00", "2025-01-01T10:00:00+23:59", "2025-01-01T10:00:00-00:30",
    "2025-01-01T10:00:00Z", "2025-01-01T10:00:00.123456+08:00", "2025-01-01 10:00:00+08:00",
    "2025-01-01T10:00+08:00", "20250101T100000+0800", "2099-01-01T00:00:00+08:00", "2025-01-01T10:00:00",
    "2025-06-30T23:59:59+08:00", "2025-06-30T16:00:00+00:00", "2025-10-05T02:30:00+10:30", "not a time", "",
]
IDS = ["o", "a\\b", '"q"', "客户", " padded ", "tab\tin", "new\nline", "", "ok~!#", "x" * 124, "x" * 125, "é"]
STATUSES = ["", "paid", "refunded", "PAID", " refunded", "cancelled", "paid\t"]


def rows(seed: int, count: int, plain: bool = False) -> list[dict[str, str]]:
    """Random rows; ``plain``: only values without whitespace, control characters or quotes."""
    def keep(values: list[str]) -> list[str]:
        return [v for v in values if not plain or not re.search(r'[\s\x00-\x1f\x7f"]', v)]

    pick = random.Random(seed).choice
    ids, amounts, times, statuses = keep(IDS), keep(AMOUNTS), keep(TIMES), keep(STATUSES)
    made = []
    for i in range(count):
        made.append({"order_id": pick(ids[:1] * 6 + ids) + f"{i:04d}" if i % 7 else "",
                     "external_userid": pick(ids[:1] * 8 + ids) + str(i % 37),
                     "amount": pick(amounts[:6] * 3 + amounts), "paid_at": pick(times[:1] * 3 + times),
                     "status": pick(statuses)})
    return made


def write_csv(path: Path, records: list[dict[str, str]], with_status: bool = True,
              line_ends: list[str] | None = None) -> None:
    """``line_ends``: each record's own line end (default "\n")."""
    buffer = io.StringIO()
    columns = ["order_id", "external_userid", "amount", "paid_at"] + (["status"] if with_status else [])
    writer = csv.DictWriter(buffer, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for record, line_end in zip(records, line_ends or ["\n"] * len(records), strict=True):
        writer.writerow(record)
        buffer.seek(buffer.tell() - 1)
        buffer.write(line_end)
    path.write_bytes(buffer.getvalue().encode())


def numbered(path: Path, records: list[dict[str, str]]) -> list[tuple[int, dict[str, str]]]:
    """Each record with the line a CSV reader reports for it (where it ends: values may hold newlines)."""
    reader = csv.reader(io.StringIO(path.read_bytes().decode(), newline=""))
    next(reader)
    lines = [reader.line_num for _ in reader]
    return list(zip(lines, records, strict=True))


@pytest.mark.parametrize("zone,plain", [("Asia/Shanghai", False), ("America/New_York", False),
                                        ("Australia/Lord_Howe", False), ("UTC", False), ("Asia/Shanghai", True),
                                        ("America/New_York", True)])
def test_every_row_is_imported_exactly_as_parse_order_defines_it(db, tmp_path, zone, plain):
    """Plain files (no whitespace, control character or quote anywhere) skip a per-value check."""
    assert_imported_as_parse_order_says(db, tmp_path, ZoneInfo(zone), rows(seed=len(zone), count=700, plain=plain))


def test_small_blocks_and_batches_mixing_plain_and_other_text(db, tmp_path, monkeypatch):
    """A batch is treated as plain only if every block its rows came from was plain."""
    monkeypatch.setattr(imports.PlainBlocks, "SIZE", 200)
    monkeypatch.setattr(imports, "STAGE_BATCH", 7)
    records = rows(seed=5, count=400, plain=True)
    for i in range(3, 400, 17):
        records[i]["external_userid"] = random.Random(i).choice([" padded ", "tab\tin", "new\nline", "a b"])
    assert_imported_as_parse_order_says(db, tmp_path, ZoneInfo("Asia/Shanghai"), records)


def assert_imported_as_parse_order_says(db, tmp_path: Path, tz: ZoneInfo, records: list[dict[str, str]],
                                        with_status: bool = True, least: tuple[int, int] = (100, 50),
                                        line_ends: list[str] | None = None) -> None:
    """Import ``records`` and compare each row with parse_order's verdict: the same values stored, or
    skipped with the same reason on the same line; ``least``: how many of each to expect at least."""
    path = tmp_path / "orders.csv"
    write_csv(path, records, with_status=with_status, line_ends=line_ends)
    if not with_status:
        records = [{k: v for k, v in r.items() if k != "status"} for r in records]
    expected, reasons = {}, {}
    now = datetime.now(UTC)
    for line, record in numbered(path, records):
        try:
            row = parse_order(record, tz, now)
        except RowError as exc:
            reasons[line] = str(exc)
            continue
        expected[row.order_id] = (row.external_userid, row.amount_fen, row.paid_at, row.paid_day, row.status)
    with db.begin() as session:
        summary = import_orders(session, path, tz)
    assert dict(summary.errors) == reasons
    assert (summary.read, summary.inserted, summary.skipped) == (len(records), len(expected), len(reasons))
    with db.sessions() as session:
        stored = {o: (e, a, p, d, s) for o, e, a, p, d, s in session.execute(
            select(Order.order_id, Customer.external_userid, Order.amount_fen, Order.paid_at, Order.paid_day,
                   Order.status).join(Customer, Customer.id == Order.customer_id))}
    assert stored == expected
    assert len(expected) > least[0] and len(reasons) > least[1]  # both outcomes, on both paths


def test_a_file_without_status_column_means_paid(db, tmp_path):
    path = tmp_path / "orders.csv"
    write_csv(path, [{"order_id": "o1", "external_userid": "wmA", "amount": "1", "paid_at": TIMES[0]}],
              with_status=False)
    with db.begin() as session:
        assert import_orders(session, path, ZoneInfo("UTC")).inserted == 1
    with db.sessions() as session:
        assert session.scalar(select(Order.status)) == "paid"


def test_repeats_of_new_and_known_orders_keep_the_last_row_in_line_order(db, tmp_path):
    tz = ZoneInfo("Asia/Shanghai")
    first = tmp_path / "first.csv"
    write_csv(first, [{"order_id": "known", "external_userid": "wmA", "amount": "1", "paid_at": TIMES[4]}])
    with db.begin() as session:
        import_orders(session, first, tz)
    second = tmp_path / "second.csv"
    write_csv(second, [
        {"order_id": "n1", "external_userid": "wmA", "amount": "2", "paid_at": TIMES[4]},
        {"order_id": "known", "external_userid": "wmB", "amount": "3", "paid_at": TIMES[4]},
        {"order_id": "n1", "external_userid": "wmA", "amount": "2", "paid_at": TIMES[4]},
        {"order_id": "n1", "external_userid": "wmB", "amount": "4", "paid_at": TIMES[4]},
        {"order_id": "known", "external_userid": "wmB", "amount": "5", "paid_at": TIMES[4], "status": "refunded"},
        {"order_id": "n2", "external_userid": "wmC", "amount": "6", "paid_at": TIMES[4]},
    ])
    with db.begin() as session:
        summary = import_orders(session, second, tz)
    # n1 inserted, known updated, n1 unchanged, n1 updated, known updated, n2 inserted
    assert (summary.inserted, summary.updated, summary.unchanged) == (2, 3, 1)
    with db.sessions() as session:
        stored = {o: a for o, a in session.execute(select(Order.order_id, Order.amount_fen))}
        totals = {e: (n, f) for e, n, f in session.execute(
            select(Customer.external_userid, CustomerAggregate.order_count, CustomerAggregate.paid_amount_fen)
            .join(CustomerAggregate, CustomerAggregate.customer_id == Customer.id))}
    assert stored == {"known": 500, "n1": 400, "n2": 600}
    assert {"wmA": (0, 0), **totals} == {"wmA": (0, 0), "wmB": (1, 400), "wmC": (1, 600)}  # wmA: none left


def test_offset_transitions_find_each_change_to_the_second():
    spans = offset_transitions(ZoneInfo("America/New_York"), datetime(2025, 1, 1, tzinfo=UTC),
                               datetime(2026, 1, 1, tzinfo=UTC))
    assert [(datetime.fromtimestamp(s, UTC).isoformat(), o) for s, o in spans] == [
        ("2025-01-01T00:00:00+00:00", -18000), ("2025-03-09T07:00:00+00:00", -14400),
        ("2025-11-02T06:00:00+00:00", -18000)]


@pytest.mark.parametrize("repeat", [False, True])
def test_a_bulk_load_leaves_indexes_and_foreign_key_as_they_were(db, tmp_path, monkeypatch, repeat):
    """A load as big as the order table (and aggregates as many as the aggregate table holds) builds
    the secondary indexes afterwards (on PostgreSQL the order table's unique ones too) and (PostgreSQL)
    checks orders → customers and aggregates → customers once, at the end; all are back afterwards, the
    cascades included. An id the file repeats still updates the earlier row."""
    def indexes(table: str) -> list[dict]:  # partial indexes' WHERE as text (a clause compares by identity)
        inspector = inspect(db.engine)
        return sorted(({**index, "dialect_options": {k: str(v) for k, v in index["dialect_options"].items()}}
                       for index in inspector.get_indexes(table)), key=lambda index: index["name"]) + [
            inspector.get_pk_constraint(table), sorted(inspector.get_unique_constraints(table), key=str)]

    indexes_before = {t: indexes(t) for t in ("orders", "customer_aggregates", "customers")}
    monkeypatch.setattr(bulk_orders, "BULK_LOAD_ROWS", 1)
    path = tmp_path / "orders.csv"
    write_csv(path, [{"order_id": f"o{i}", "external_userid": f"wm{i % 3}", "amount": "1", "paid_at": TIMES[4]}
                     for i in range(9)] + ([{"order_id": "o3", "external_userid": "wm1", "amount": "2",
                                             "paid_at": TIMES[4]}] if repeat else []))
    with db.begin() as session:
        summary = import_orders(session, path, ZoneInfo("UTC"))
    assert (summary.inserted, summary.updated) == (9, int(repeat))
    assert {t: indexes(t) for t in indexes_before} == indexes_before
    with db.sessions() as session:
        assert session.scalar(select(Order.amount_fen).where(Order.order_id == "o3")) == (200 if repeat else 100)
        assert session.scalar(select(CustomerAggregate.paid_amount_fen).join(Customer).where(
            Customer.external_userid == "wm1")) == (500 if repeat else 300)  # o3 moved to wm1
        with pytest.raises(IntegrityError):  # the unique order id is back
            session.execute(insert(Order).values(order_id="o1", customer_id=session.scalar(select(Customer.id)),
                                                 amount_fen=1, paid_at=datetime.now(UTC), paid_day=1, status="paid"))
    write_csv(path, [{"order_id": "later", "external_userid": "wm1", "amount": "1", "paid_at": TIMES[4]}])
    with db.begin() as session:  # the order ids' sequence went on past the loaded rows
        assert import_orders(session, path, ZoneInfo("UTC")).inserted == 1
    with db.sessions() as session:
        ids = session.scalars(select(Order.id).order_by(Order.id)).all()
        assert len(set(ids)) == len(ids) == 10
        assert session.scalar(select(Order.id).where(Order.order_id == "later")) == max(ids)
    assert len(indexes_before["customer_aggregates"]) >= 4
    with db.begin() as session:
        session.execute(delete(Customer).where(Customer.external_userid == "wm0"))
    with db.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Order)) == (8 if repeat else 7)
        assert session.scalar(select(func.count()).select_from(CustomerAggregate)) == 2
        with pytest.raises(IntegrityError):
            session.execute(insert(Order).values(order_id="orphan", customer_id=10**9, amount_fen=1,
                                                 paid_at=datetime.now(UTC), paid_day=1, status="paid"))
    with db.sessions() as session, pytest.raises(IntegrityError):
        session.execute(insert(CustomerAggregate).values(customer_id=10**9, order_count=1))


def test_a_first_load_before_any_re_tier_leaves_marks_only_where_they_matter(db, tmp_path, monkeypatch):
    """Marks tell an incremental re-tier whom to look at. Before the first re-tier (always a full run)
    PostgreSQL's bulk load of the customer table may leave them out; after it, every import marks."""
    from segments.retier import retier
    from tests.support import POLICY

    monkeypatch.setattr(bulk_orders, "BULK_LOAD_ROWS", 1)

    def load(name: str, customers: range) -> set[int]:
        path = tmp_path / f"{name}.csv"
        write_csv(path, [{"order_id": f"{name}{i}", "external_userid": f"wm{i}", "amount": "1",
                          "paid_at": TIMES[4]} for i in customers])
        with db.begin() as session:
            import_orders(session, path, ZoneInfo("UTC"))
        with db.sessions() as session:
            return set(session.scalars(select(TierDirty.customer_id)))

    first = load("a", range(5))
    assert len(first) == (0 if db.dialect == "postgresql" else 5)
    with db.begin() as session:
        assert not retier(session, POLICY, datetime(2025, 1, 1).date(), ZoneInfo("UTC")).incremental
    assert len(load("b", range(3, 13))) == 10  # 3–4 known, 5–12 new: the customer table is bulk loaded again


@pytest.mark.parametrize("seed,lookups", [(3, False), (4, False), (5, True)])
def test_aggregates_equal_the_orders_after_any_sequence_of_imports(db, tmp_path, monkeypatch, seed, lookups):
    """Files of only new orders (their totals are added as they are), then files that repeat ids,
    update or move known orders and refund them: every customer's aggregates must equal a count over
    the order table afterwards. ``lookups``: known orders found by index lookups (PostgreSQL's way for
    a file much smaller than the order table) rather than a join."""
    if lookups:
        monkeypatch.setattr(bulk_orders, "LOOKUP_COST", -1)
    pick = random.Random(seed)
    known: list[str] = []
    for round_, (known_share, repeat_share) in enumerate([(0, 0), (0, 0.2), (0.3, 0), (0, 0), (0.3, 0.2)]):
        records = []
        for i in range(pick.randint(20, 60)):
            order_id = pick.choice(known) if known and pick.random() < known_share else f"r{round_}-{i}"
            if records and pick.random() < repeat_share:
                order_id = records[-1]["order_id"]  # a repeat within the file
            records.append({"order_id": order_id, "external_userid": f"wm{pick.randint(0, 49)}",
                            "amount": f"{pick.randint(0, 999)}.{pick.randint(0, 99):02d}",
                            "paid_at": f"2025-0{pick.randint(1, 6)}-1{pick.randint(0, 9)}T1{pick.randint(0, 9)}"
                                       f":00:00+08:00", "status": pick.choice(["", "paid", "refunded"])})
        known += [r["order_id"] for r in records]
        path = tmp_path / f"round{round_}.csv"
        write_csv(path, records)
        with db.begin() as session:
            assert import_orders(session, path, ZoneInfo("Asia/Shanghai")).skipped == 0
        with db.sessions() as session:
            paid, refunded = Order.status == "paid", Order.status == "refunded"
            expected = {row[0]: tuple(row[1:]) for row in session.execute(
                select(Order.customer_id, func.count().filter(paid), func.coalesce(func.sum(Order.amount_fen)
                       .filter(paid), 0), func.count().filter(refunded),
                       func.coalesce(func.sum(Order.amount_fen).filter(refunded), 0),
                       func.min(Order.paid_at).filter(paid), func.max(Order.paid_at).filter(paid),
                       func.min(Order.paid_day).filter(paid), func.max(Order.paid_day).filter(paid))
                .group_by(Order.customer_id))}
            a = CustomerAggregate
            stored = {row[0]: tuple(row[1:]) for row in session.execute(select(
                a.customer_id, a.order_count, a.paid_amount_fen, a.refund_count, a.refunded_amount_fen,
                a.first_order_at, a.last_order_at, a.first_order_day, a.last_order_day))}
        empty = (0, 0, 0, 0, None, None, None, None)
        assert {k: v for k, v in stored.items() if v != empty} == {k: v for k, v in expected.items() if v != empty}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_line_numbers_survive_values_that_span_lines_and_any_line_end(db, tmp_path, monkeypatch, seed):
    """The text is read in blocks (here of 50 characters, so values span blocks): each problem must
    carry the line a CSV reader reports for its row, whatever line ends the file and its values use."""
    monkeypatch.setattr(imports.PlainBlocks, "SIZE", 50)
    pick = random.Random(seed).choice
    shapes = ["o{i},wm,bad,2025-01-01T10:00:00+08:00", '"o{i}\r\nx",wm,bad,T', '"o{i}\rx",wm,bad,T',
              '"o{i}\nx\n\ny",wm,bad,T', "", "o{i},wm,bad", '"o{i}\r\r\n",wm,"b\na\rd",T']
    text = "order_id,external_userid,amount,paid_at\n" + "".join(
        pick(shapes).format(i=i) + pick(["\n", "\r\n", "\r"]) for i in range(60))
    path = tmp_path / "orders.csv"
    path.write_bytes(text.encode())
    reader = csv.reader(io.StringIO(text, newline=""))
    next(reader)
    expected = [reader.line_num for row in reader if row and row != [""]]
    with db.begin() as session:
        summary = import_orders(session, path, ZoneInfo("UTC"))
    assert [line for line, _ in summary.errors] == expected
    assert summary.read == summary.skipped == len(expected)


def test_plain_blocks_are_told_apart_exactly():
    """A block is plain when it holds no whitespace but line ends, no control character and no quote;
    ASCII blocks are checked as bytes, others with a regular expression: both must agree with \\s."""
    not_plain = re.compile(r'[^\S\n\r]|[\x00-\x09\x0b\x0c\x0e-\x1f\x7f"]')
    for code in [*range(0x300), 0x1680, *range(0x2000, 0x2030), 0x205f, 0x3000, 0xfeff, 0x10000]:
        for text in (chr(code), f"a,b\n{chr(code)}1\r\n", f"é{chr(code)}"):
            assert imports.PlainBlocks.plain(text) == (not not_plain.search(text)), (hex(code), text)


@pytest.mark.parametrize("with_status", [True, False])
def test_canonical_blocks_skip_the_shape_checks_but_not_the_calendar(db, tmp_path, monkeypatch, with_status):
    """Blocks whose every line has the canonical shape are staged as canonical and skip the shape
    checks in SQL; days 29–31 of short months, leap days, the earliest year and the future must
    still come out exactly as parse_order says."""
    monkeypatch.setattr(imports.PlainBlocks, "SIZE", 200)
    monkeypatch.setattr(imports, "STAGE_BATCH", 7)
    flags = []
    add = bulk_orders.OrderStaging.add
    monkeypatch.setattr(bulk_orders.OrderStaging, "add", lambda self, rows, plain=False, canonical=False: (
        flags.append(canonical), add(self, rows, plain, canonical))[1])
    pick = random.Random(9)
    records = []
    for i in range(500):
        year = pick.choice(["1990", "1991", "2000", "2023", "2024", "2025", "2999"])
        day = pick.choice(["01", "15", "28", "29", "30", "31"])
        records.append({"order_id": f"o-{i}~!", "external_userid": f"wm{i % 23}",
                        "amount": pick.choice(["0", "7", "12.3", "12.30", "9999999999999.99"]),
                        "paid_at": f"{year}-{pick.choice(['01', '02', '04', '06', '09', '11', '12'])}-{day}"
                                   f"T{pick.choice(['00', '09', '23'])}:{pick.choice(['00', '59'])}:00"
                                   f"{pick.choice(['+', '-'])}{pick.choice(['00', '08', '14'])}"
                                   f":{pick.choice(['00', '30'])}",
                        "status": pick.choice(["", "paid", "refunded"])})
    assert_imported_as_parse_order_says(db, tmp_path, ZoneInfo("Asia/Shanghai"), records, with_status, (200, 50))
    assert flags and all(flags)  # every block of this file was recognised as canonical


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_canonical_blocks_staged_whole_keep_their_lines_and_never_split_a_quoted_value(db, tmp_path, monkeypatch,
                                                                                          seed):
    """Canonical blocks are staged whole, past the CSV reader. A block whose lines look
    canonical but lie inside a quoted value that runs over lines belongs to that value; blocks with
    "\r\n" line ends and other rows come between; every row keeps its line and its verdict."""
    pick = random.Random(seed)
    monkeypatch.setattr(imports.PlainBlocks, "SIZE", pick.choice([60, 90, 150]))
    monkeypatch.setattr(imports, "STAGE_BATCH", 7)
    diverted, refused = [], []
    add_block, between = bulk_orders.OrderStaging.add_block, imports.PlainBlocks._reader_between_records
    monkeypatch.setattr(bulk_orders.OrderStaging, "add_block", lambda self, *args: (
        diverted.append(args[2]), add_block(self, *args))[1])
    monkeypatch.setattr(imports.PlainBlocks, "_reader_between_records", lambda self: (
        result := between(self), refused.append(not result))[0])

    def looks_canonical(i: int) -> str:
        return f"in{i},wm{i % 5},1.00,2025-01-0{1 + i % 9}T10:00:00+08:00,paid"

    records, line_ends = [], []
    for i in range(700):
        chance = pick.random()
        external = (f"wm{i % 3}\n" + "\n".join(looks_canonical(i * 10 + k) for k in range(pick.randint(2, 9)))
                    if chance < 0.03 else "wm 1" if chance < 0.05 else f"wm{i % 13}")
        records.append({"order_id": f"o{i}" if i % 4 else f"o\\{i}'/", "external_userid": external,
                        "amount": pick.choice(["12.30", "7"]),
                        "paid_at": pick.choice([TIMES[4], TIMES[25], TIMES[26], TIMES[5]]),
                        "status": pick.choice(["", "paid", "refunded"])})
        line_ends.append("\r\n" if 300 < i < 340 else "\n")
    assert_imported_as_parse_order_says(db, tmp_path, ZoneInfo("Asia/Shanghai"), records, least=(400, 40),
                                        line_ends=line_ends)
    assert len(diverted) > 10 and any(refused)  # blocks went both ways


def test_the_canonical_pattern_matches_only_canonical_rows():
    pattern = bulk_orders.canonical_rows_pattern(["order_id", "external_userid", "amount", "paid_at"])
    good = "o1,wm1,12.30,2025-01-31T23:59:59+14:00\r\no2,wm1,0,1990-12-01T00:00:00-00:30\n"
    assert pattern.fullmatch(good)
    for bad in ["o1,wm1,12.345,2025-01-31T23:59:59+14:00\n", "o1,wm1,1,2025-13-01T00:00:00+08:00\n",
                "o1,wm1,1,2025-01-00T00:00:00+08:00\n", "o1,wm1,1,2025-01-01T24:00:00+08:00\n",
                "o1,wm1,1,2025-01-01T00:00:00+15:00\n", "o1,wm1,1,1989-12-31T23:59:59+08:00\n",
                "o1,wm1,1,2025-01-01T00:00:00Z\n", "o1,,1,2025-01-01T00:00:00+08:00\n",
                "o1,wm1,1,2025-01-01T00:00:00+08:00,paid\n", "o1,wm1,1,2025-01-01T00:00:00+08:00",
                "o1,wm1,12345678901234,2025-01-01T00:00:00+08:00\n", "\n"]:
        assert not pattern.fullmatch(good + bad), bad
    assert bulk_orders.canonical_rows_pattern(["order_id", "external_userid", "amount", "paid_at", "note"]) is None
