"""Bulk order import: raw CSV fields are staged in the database, validated and converted there, and
merged into the order table with a handful of set-based statements.

Python only splits the CSV and hands the raw strings over (COPY on PostgreSQL, one executemany per
batch on SQLite). SQL accepts the rows that match a strict canonical shape — ASCII ids, ``123.45``
amounts, ``YYYY-MM-DDTHH:MM:SS+HH:MM`` times, lower-case status — and converts them exactly (integer
fen, the UTC instant, the local day). Every other row goes through :func:`segments.orders.parse_order`,
the one definition of a valid order, which either converts it or names what is wrong. The fast path
therefore never accepts a row the slow path would refuse, and never converts one differently.

The merge is an upsert in line order (a repeat within the file updates the earlier row), so the file's
order ids are looked up once, in the database. Aggregates: customers that only gained new orders get
deltas from one GROUP BY; customers whose existing orders changed or moved are rebuilt from their
orders.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from psycopg.copy import QueuedLibpqWriter
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from bot.core.db import sqlite_foreign_keys_off
from bot.core.privacy import FORGOTTEN_PREFIX, forgotten_key
from bot.models import utcnow
from segments.orders import (
    DELTA_COLUMNS,
    DELTA_UPSERT,
    PURCHASE_DAYS_FIXUP,
    REBUILD_SQL,
    RowError,
    WriteCounts,
    copy_text,
    create_delta_table,
    mark_for_retier,
    parse_order,
    totals_sql,
)
from segments.retier import INDEX_BUILD_MEMORY

RAW_COLUMNS = ("line", "order_id", "external_userid", "amount", "paid_at", "status")
STAGE_BATCH = 50_000  # rows handed to the database at once
BULK_LOAD_ROWS = 100_000  # from this size (and the order table's) indexes are built after the load
WORK_MEM = "64MB"
LOOKUP_COST = 20  # an index lookup of an order id, in rows of the order table scanned and hashed
EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
EARLIEST_YEAR = 1990  # parse_order refuses earlier times, so offsets before it never matter

Skip = Callable[[int, str], None]  # (line, reason)
Step = Callable[[str], None]  # told the name of each merge step as it starts
MERGE_STEPS = ("checking rows", "finding customers", "finding known orders", "writing orders", "updating totals")


@dataclass
class MergeCounts(WriteCounts):
    valid: int = 0


class OrderStaging:
    """One import's staging tables in one session: :meth:`add` raw rows, then :meth:`merge`."""

    def __init__(self, session: Session, tz: ZoneInfo, skip: Skip, now: datetime | None = None) -> None:
        """``skip(line, reason)`` is told of every row that is not imported."""
        self.session = session
        self.skip = skip
        self.tz = tz
        self.now = now or datetime.now(UTC)
        self.dialect = session.get_bind().dialect.name
        sqlite_foreign_keys_off(session)  # every order's customer comes from a join (see _upsert_sql)
        self._staged = self._converted = 0  # SQLite: rows staged, and converted on the fast path
        self._bulk_loading: set[str] = set()  # tables whose indexes _bulk_load has dropped
        self._customers_held = False  # a bulk load took the customer table until commit
        self.takes_blocks = self.dialect == "postgresql" or self._has_json()  # see add_block
        self._blocks = ExitStack()  # the COPY add_block keeps open between blocks
        self._block_copy: Any = None
        self._next_block_line = 0
        self._create_tables()

    # ------------------------------------------------------------------------------ staging

    def add(self, rows: list[tuple[Any, ...]], plain: bool = False, canonical: bool = False) -> None:
        """Stage rows of (line, order_id, external_userid, amount, paid_at, status) as read (status may be
        None). ``plain``: the caller checked that no value holds whitespace, a control character or a quote.
        ``canonical``: the caller checked that every row has the canonical shape (canonical_rows_pattern)."""
        if not rows:
            return
        self._finish_blocks()
        flags = "\t".join("t" if flag else "f" for flag in (plain, canonical))
        if self.dialect == "postgresql":
            with self._cursor().copy(f"COPY import_raw ({', '.join(RAW_COLUMNS)}, plain, canonical) "
                                     "FROM STDIN") as copy:
                copy.write(self._copy_block(rows, flags))
        else:
            marks = ", ".join("?" * len(RAW_COLUMNS))
            self._conn().exec_driver_sql(f"INSERT INTO import_raw VALUES ({marks}, {int(plain)}, {int(canonical)})",
                                         rows)
            self._staged += len(rows)

    def add_block(self, columns: list[str], block: str, first_line: int) -> None:
        """Stage a block of canonical rows (canonical_rows_pattern, "\n" line ends, no quote, no control
        character) whole, the first on line ``first_line``, one row a line; ``columns``: the header.

        PostgreSQL: as it is, in CSV format. Consecutive blocks share one COPY, which a thread feeds
        while the reader goes on to the next block; the line numbers come from a sequence (set again
        where other rows came between). SQLite: as one JSON array of rows, taken apart by json_each
        (2M rows: 4.2 s, against 6.2 s as split strings through executemany)."""
        if self.dialect != "postgresql":
            values = ", ".join(f"json_extract(value, '$[{columns.index(name)}]')" if name in columns else "NULL"
                               for name in RAW_COLUMNS[1:])
            rows = '[["' + block[:-1].replace("\\", "\\\\").replace(",", '","').replace("\n", '"],["') + '"]]'
            self._staged += self._conn().exec_driver_sql(
                f"INSERT INTO import_raw ({', '.join(RAW_COLUMNS)}, plain, canonical) "
                f"SELECT ? + key, {values}, 1, 1 FROM json_each(?)", (first_line, rows)).rowcount
            return
        if self._block_copy is None or first_line != self._next_block_line:
            self._finish_blocks()
            self._conn().exec_driver_sql("SELECT setval('import_line', %s, false)", (first_line,))
            cursor = self._cursor()
            self._block_copy = self._blocks.enter_context(cursor.copy(
                f"COPY import_raw ({', '.join(columns)}) FROM STDIN WITH (FORMAT csv)",
                writer=QueuedLibpqWriter(cursor)))
        self._block_copy.write(block)
        self._next_block_line = first_line + block.count("\n")

    def _has_json(self) -> bool:
        """SQLite: whether json_each and json_extract exist (built in from 3.38, usually compiled in before)."""
        try:  # an unknown function fails as the statement is prepared: nothing to roll back
            return self._scalar("SELECT json_extract(value, '$[0]') FROM json_each('[[1]]')") == 1
        except DBAPIError:
            return False

    def _finish_blocks(self) -> None:
        """End add_block's COPY, if one is open: nothing else can run on the connection meanwhile."""
        self._block_copy = None
        self._blocks.close()

    def _copy_block(self, rows: list[tuple[Any, ...]], flags: str) -> str:
        """The pending rows in COPY text format. Joined as they are when no value holds a tab, newline,
        carriage return or backslash (checked on the whole block: a value with a tab adds a tab);
        escaped value by value otherwise. A NUL cannot be stored: such a row is skipped here."""
        block = "\n".join("\t".join((str(r[0]), *r[1:5], "\\N" if r[5] is None else r[5], flags))
                          for r in rows) + "\n"
        if (block.count("\t") == 7 * len(rows) and block.count("\n") == len(rows) and "\r" not in block
                and block.count("\\") == sum(1 for r in rows if r[5] is None) and "\x00" not in block):
            return block
        lines = []
        for row in rows:
            if any(value is not None and "\x00" in value for value in row[1:]):
                self.skip(row[0], "the row contains a NUL character")
                continue
            lines.append("\t".join([*(copy_text(value) for value in row), flags]) + "\n")
        return "".join(lines)

    # ------------------------------------------------------------------------------ merging

    def merge(self, step: Step | None = None) -> MergeCounts:
        """Validate, convert and write every staged row; invalid rows are passed to ``skip``. ``step`` is
        told each of MERGE_STEPS as it starts (a merge that finds no valid row stops after the first)."""
        step = step or (lambda name: None)
        counts = MergeCounts()
        self._finish_blocks()
        if self.dialect == "postgresql":  # sorts, hash joins and index builds over the whole file: fewer spills
            self._conn().exec_driver_sql(f"SET LOCAL work_mem = '{WORK_MEM}'")
            self._conn().exec_driver_sql(f"SET LOCAL maintenance_work_mem = '{INDEX_BUILD_MEMORY}'")
        step(MERGE_STEPS[0])
        self._convert_usual_rows()
        self._parse_unusual_rows()
        counts.valid = self._scalar("SELECT count(*) FROM import_rows")
        if not counts.valid:
            return counts
        step(MERGE_STEPS[1])
        counts.valid -= self._skip_forgotten()
        if not counts.valid:
            return counts
        self._group_by_customer()
        with self._bulk_load("customers", self._scalar("SELECT count(*) FROM import_customers")):
            counts.customers_created = self._create_stubs()
        self._analyze("import_rows")
        if counts.customers_created > 10_000:
            self._analyze("customers")
        step(MERGE_STEPS[2])
        self._find_known_orders(counts.valid)
        self._analyze("import_existing")
        step(MERGE_STEPS[3])
        with self._bulk_load("orders", counts.valid):
            counts.inserted, written = self._upsert(counts.valid)
        counts.updated = written - counts.inserted
        counts.unchanged = counts.valid - written
        step(MERGE_STEPS[4])
        self._refresh_aggregates()
        return counts

    def _find_known_orders(self, valid: int) -> None:
        """import_existing: the file's order ids already in the order table, with their current customer.
        PostgreSQL hashes the file and scans the whole order table even for a file a fraction of its size
        (100k rows against 10M orders: 4.2 s); there a small file looks its ids up in the unique index
        instead (0.8 s). A lookup costs about as much as hashing twenty scanned rows."""
        if self.dialect == "postgresql" and valid * LOOKUP_COST < self._table_size("orders"):
            known = ("import_rows r CROSS JOIN LATERAL (SELECT order_id, customer_id FROM orders o "
                     "WHERE o.order_id = r.order_id OFFSET 0) AS o")  # OFFSET 0: kept as a lookup per row
        else:
            known = "import_rows r JOIN orders o ON o.order_id = r.order_id"
        self._conn().exec_driver_sql("INSERT INTO import_existing (order_id, old_customer_id) "
                                     f"SELECT DISTINCT o.order_id, o.customer_id FROM {known}")

    def _convert_usual_rows(self) -> None:
        """Rows of the canonical shape, converted in SQL into import_rows; on PostgreSQL the others are
        set aside in import_unusual."""
        columns = "line, order_id, external_userid, amount_fen, paid_at, paid_day, status"
        if self.dialect == "postgresql":
            self._convert_canonical_rows(columns)
            self._conn().exec_driver_sql(
                f"WITH checked AS MATERIALIZED (SELECT r.*, {self._fast_condition()} AS usual FROM import_raw r "
                f"WHERE NOT canonical), unusual AS (INSERT INTO import_unusual SELECT {', '.join(RAW_COLUMNS)} "
                f"FROM checked WHERE NOT usual) INSERT INTO import_rows ({columns}) "
                f"SELECT line, order_id, external_userid, {_PG_FEN}, {_pg_instant('paid_at::timestamptz', self.tz)}, "
                f"{_STATUS} FROM checked WHERE usual", self._fast_params())
            return
        offset = utc_offset_case(_SQLITE_EPOCH, self.tz, self.now)
        self._converted = self._conn().exec_driver_sql(
            f"INSERT INTO import_rows ({columns}) SELECT line, order_id, external_userid, {_SQLITE_FEN}, "
            f"datetime(paid_at) || '.000000', ({_SQLITE_EPOCH} + {offset}) / 86400 + {EPOCH_ORDINAL}, {_STATUS} "
            f"FROM import_raw WHERE {_SQLITE_FAST_CONDITION}", self._fast_params()).rowcount

    def _convert_canonical_rows(self, columns: str) -> None:
        """PostgreSQL: every canonical row converted into import_rows, its time parsed once (NULL for a day
        its month lacks); then the few rows with no time or one in the future are moved to import_unusual,
        where parse_order names their fault. (Choosing each row's table in one statement needs the rows
        materialized: 2M rows, 9.5 s against 5.3 s.)"""
        conn = self._conn()
        conn.exec_driver_sql(
            f"INSERT INTO import_rows ({columns}) SELECT line, order_id, external_userid, {_PG_FEN}, "
            f"{_pg_instant('instant', self.tz)}, {_STATUS} FROM (SELECT r.*, CASE WHEN substr(paid_at, 9, 2) <= '28' "
            f"OR {_PG_DAY_OF_MONTH} THEN paid_at::timestamptz END AS instant FROM import_raw r WHERE canonical "
            "OFFSET 0) AS parsed")  # OFFSET 0: the subquery stays, so each row's time is parsed once
        conn.exec_driver_sql(
            "WITH moved AS (DELETE FROM import_rows WHERE paid_at IS NULL OR paid_at > %s RETURNING line) "
            f"INSERT INTO import_unusual SELECT {', '.join(RAW_COLUMNS)} FROM import_raw "
            "WHERE canonical AND line IN (SELECT line FROM moved)", (self._time(self.now + timedelta(days=1)),))

    def _parse_unusual_rows(self) -> None:
        """Rows outside the fast path's canonical shape: parse_order accepts or explains them."""
        conn = self._conn()
        if self.dialect == "postgresql":
            unusual = "SELECT * FROM import_unusual"
        elif self._converted == self._staged:  # every row took the fast path (10M rows: 4.4 s not spent)
            return
        else:  # import_rows.line is the rowid: one lookup per staged row
            unusual = ("SELECT * FROM import_raw WHERE NOT EXISTS "
                       "(SELECT 1 FROM import_rows f WHERE f.line = import_raw.line)")
        result = conn.exec_driver_sql(
            f"SELECT {', '.join(RAW_COLUMNS)} FROM ({unusual}) AS u ORDER BY line").yield_per(5000)
        parsed: list[tuple[Any, ...]] = []
        for line, *values in result:
            try:
                row = parse_order(dict(zip(RAW_COLUMNS[1:], values, strict=True)), self.tz, self.now)
            except RowError as exc:
                self.skip(line, str(exc))
                continue
            parsed.append((line, row.order_id, row.external_userid, row.amount_fen, self._time(row.paid_at),
                           row.paid_day, row.status))
        if parsed:
            placeholders = ", ".join([self._mark] * 7)
            conn.exec_driver_sql(f"INSERT INTO import_rows (line, order_id, external_userid, amount_fen, paid_at, "
                                 f"paid_day, status) VALUES ({placeholders})", parsed)

    @contextmanager
    def _bulk_load(self, table: str, rows: int) -> Iterator[None]:
        """For a load at least as big as the table (orders, customer_aggregates, customers), do what PostgreSQL's
        "Populating a Database" advises (and what pays on SQLite too): drop the table's non-unique
        indexes and build them again afterwards (a sort instead of a random index insert per row),
        and on PostgreSQL drop its foreign key to customers and validate it in one query (it is
        otherwise checked row by row, each check locking the customer: as costly as the insert
        itself). The import holds the table exclusively until it commits; unique indexes stay, so
        idempotence is untouched."""
        if rows < BULK_LOAD_ROWS or rows < self._table_size(table):
            yield
            return
        self._bulk_loading.add(table)
        self._customers_held = self._customers_held or table == "customers"
        conn = self._conn()
        indexes = self._secondary_indexes(table)
        foreign_keys = conn.exec_driver_sql(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s::regclass "
            "AND contype = 'f' AND confrelid = 'customers'::regclass", (table,)).all() \
            if self.dialect == "postgresql" else []
        for name, _ in foreign_keys:
            conn.exec_driver_sql(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
        for name, _ in indexes:
            conn.exec_driver_sql(f'DROP INDEX "{name}"')
        yield
        for _, definition in indexes:
            conn.exec_driver_sql(definition)
        for name, definition in foreign_keys:
            conn.exec_driver_sql(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition} NOT VALID')
            conn.exec_driver_sql(f'ALTER TABLE {table} VALIDATE CONSTRAINT "{name}"')
        self._bulk_loading.discard(table)

    @contextmanager
    def _unique_rebuilt(self, table: str) -> Iterator[None]:
        """PostgreSQL, inside a bulk load of a table the load's lock already holds: its primary key and unique
        constraints (those no foreign key refers to) dropped and added again afterwards — one sorted build
        instead of an insert into each unique index per row (orders, 2M rows: 13.9 s → 8.8 s). A value
        repeated by the load makes the rebuild raise a unique violation (SQLSTATE 23505)."""
        assert table in self._bulk_loading, "only under the lock of a bulk load"
        conn = self._conn()
        constraints = conn.exec_driver_sql(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint c WHERE conrelid = %s::regclass "
            "AND contype IN ('p', 'u') AND NOT EXISTS (SELECT 1 FROM pg_constraint f WHERE f.contype = 'f' "
            "AND f.confrelid = c.conrelid AND f.conindid = c.conindid)", (table,)).all()
        for name, _ in constraints:
            conn.exec_driver_sql(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
        yield
        for name, definition in constraints:
            conn.exec_driver_sql(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')

    def _table_size(self, table: str) -> int:
        if self.dialect == "postgresql":  # the planner's estimate: no scan
            return self._scalar(f"SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = '{table}'::regclass")
        return self._scalar(f"SELECT coalesce(max(rowid), 0) FROM {table}")

    def _secondary_indexes(self, table: str) -> list[tuple[str, str]]:
        """(name, CREATE statement) of the table's indexes that enforce nothing."""
        if self.dialect == "postgresql":
            rows = self._conn().exec_driver_sql(
                "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c "
                "ON c.oid = i.indexrelid WHERE i.indrelid = %s::regclass AND NOT i.indisunique", (table,)).all()
        else:
            rows = self._conn().exec_driver_sql(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
                "AND sql IS NOT NULL AND sql NOT LIKE 'CREATE UNIQUE%'", (table,)).all()
        return [(name, definition) for name, definition in rows]

    def _group_by_customer(self) -> None:
        """The file's rows per customer, sorted and grouped once: the earliest time (for stubs) and the
        totals the rows would add. When every row becomes a new order, these totals are the delta."""
        self._conn().exec_driver_sql(
            "CREATE TEMPORARY TABLE import_customers AS "
            + totals_sql("external_userid", "SELECT * FROM import_rows", inner="min(paid_at) AS seen_at, ",
                         tail=", min(seen_at) AS first_seen"))
        self._analyze("import_customers")

    def _skip_forgotten(self) -> int:
        """Rows that would undo a `scrm customer forget` are skipped: rows naming a forgotten contact (the file
        would bring the id back) and rows of an order a forgotten record holds (a returning customer's new
        record must not collect the anonymous one's history). One index probe when no customer was ever
        forgotten; otherwise a digest of each id of the file the database does not know. Runs before the
        rows are grouped by customer, so the groups' totals count only the rows kept."""
        conn, low = self._conn(), FORGOTTEN_PREFIX
        high = low[:-1] + chr(ord(low[-1]) + 1)
        if conn.exec_driver_sql(f"SELECT 1 FROM customers WHERE external_userid >= '{low}' "
                                f"AND external_userid < '{high}' LIMIT 1").first() is None:
            return 0
        held = [row[0] for row in conn.exec_driver_sql(
            "SELECT line FROM import_rows WHERE order_id IN (SELECT o.order_id FROM orders o JOIN customers c "
            f"ON c.id = o.customer_id WHERE c.external_userid >= '{low}' AND c.external_userid < '{high}')")]
        self._drop_lines(held, "the order belongs to a forgotten customer (scrm customer forget); left as it is")
        unknown = [row[0] for row in conn.exec_driver_sql(
            "SELECT DISTINCT external_userid FROM import_rows r "
            "WHERE NOT EXISTS (SELECT 1 FROM customers c WHERE c.external_userid = r.external_userid)")]
        keys = {forgotten_key(external_userid): external_userid for external_userid in unknown}
        forgotten: list[str] = []
        for chunk in _chunks(list(keys)):
            forgotten += [keys[row[0]] for row in conn.exec_driver_sql(
                f"SELECT external_userid FROM customers WHERE external_userid IN ({self._marks(chunk)})", chunk)]
        lines: list[int] = []
        for chunk in _chunks(forgotten):
            lines += [row[0] for row in conn.exec_driver_sql(
                f"SELECT line FROM import_rows WHERE external_userid IN ({self._marks(chunk)})", chunk)]
        self._drop_lines(lines, "the customer was forgotten (scrm customer forget); their orders are not taken")
        return len(held) + len(lines)

    def _drop_lines(self, lines: list[int], reason: str) -> None:
        for line in lines:
            self.skip(line, reason)
        for chunk in _chunks(lines):
            self._conn().exec_driver_sql(f"DELETE FROM import_rows WHERE line IN ({self._marks(chunk)})", chunk)

    def _marks(self, values: tuple[Any, ...]) -> str:
        return ", ".join([self._mark] * len(values))

    def _create_stubs(self) -> int:
        """Unknown customers get a stub known since their earliest order in the file. In a bulk load of the
        customer table (PostgreSQL), which the import then holds alone, a plain insert with the unique
        index built afterwards (1M stubs: 8.8 s → 5.0 s)."""
        sql = ("INSERT INTO customers (external_userid, name, contact_type, gender, opted_out, created_at, updated_at) "
               f"SELECT external_userid, '', 1, 0, FALSE, first_seen, {self._mark} FROM import_customers g "
               "WHERE NOT EXISTS (SELECT 1 FROM customers c WHERE c.external_userid = g.external_userid)")
        params = (self._time(utcnow()),)
        if "customers" in self._bulk_loading and self.dialect == "postgresql":
            with self._unique_rebuilt("customers"):
                return max(self._conn().exec_driver_sql(sql, params).rowcount or 0, 0)
        sql += " ON CONFLICT (external_userid) DO NOTHING"
        return max(self._conn().exec_driver_sql(sql, params).rowcount or 0, 0)

    def _delta_from_groups(self) -> None:
        """aggregate_delta from the per-customer totals of the file: right only when every valid row
        was inserted as a new order (no repeat in the file, no order already known)."""
        self._conn().exec_driver_sql(
            f"INSERT INTO aggregate_delta ({', '.join(DELTA_COLUMNS)}) SELECT c.id, "
            + ", ".join(f"g.{column}" for column in DELTA_COLUMNS[1:-1])
            + f", {self._mark} FROM import_customers g JOIN customers c ON c.external_userid = g.external_userid",
            (self._time(utcnow()),))

    def _upsert(self, valid: int) -> tuple[int, int]:
        """Insert new orders and update changed ones, in line order; returns (inserted, inserted + updated).
        The per-customer totals of inserted orders (in their final state) go to aggregate_delta."""
        conn = self._conn()
        create_delta_table(conn, self.dialect)
        conn.exec_driver_sql("DELETE FROM aggregate_delta")
        if self.dialect != "postgresql":  # SQLite applies an upsert row by row, so a repeat updates the earlier row
            before = self._scalar("SELECT coalesce(max(id), 0) FROM orders")  # this transaction is the only writer
            written = max(conn.exec_driver_sql(self._upsert_sql("import_rows", "TRUE"), self._now_twice()).rowcount
                          or 0, 0)
            new_orders = f"SELECT * FROM orders NOT INDEXED WHERE id > {int(before)}"  # a rowid range, then a sort
            inserted = self._scalar(f"SELECT count(*) FROM ({new_orders}) AS n")
            if inserted == valid:  # each row a new order, in the state the file gives it
                self._delta_from_groups()
            else:
                conn.exec_driver_sql(_DELTA_FROM.format(source=new_orders, mark="?"), (self._time(utcnow()),))
            return inserted, written
        try:
            with self.session.begin_nested():
                if self._scalar("SELECT count(*) FROM import_existing"):
                    counted = self._upsert_counted("import_rows", "TRUE", with_delta=False)
                elif "orders" in self._bulk_loading:  # nothing to keep the rows in order for
                    with self._unique_rebuilt("orders"):
                        inserted = self._insert_numbered()
                    counted = (inserted, inserted)
                else:  # no order of the file known: a plain insert (2M rows: 7 s, against 13 s with ON CONFLICT)
                    inserted = conn.exec_driver_sql(self._upsert_sql("import_rows", "TRUE", on_conflict=False),
                                                    self._now_twice()).rowcount
                    counted = (inserted, inserted)
            # No id repeats (PostgreSQL would have refused the statement), so a customer's rows are all
            # new orders unless one of them was known: such customers are rebuilt from their orders.
            self._delta_from_groups()
            return counted
        except DBAPIError as exc:
            # 21000: "ON CONFLICT DO UPDATE command cannot affect row a second time"; 23505: the plain
            # insert met an id twice (or one another transaction has just written)
            if getattr(exc.orig, "sqlstate", None) not in ("21000", "23505"):
                raise
        # An order id repeats within the file: write the first occurrences, then the second, … The
        # customers of repeated ids are rebuilt (see _refresh_aggregates), so round 1's delta may be stale for them.
        conn.exec_driver_sql(
            "CREATE TEMPORARY TABLE import_ranked AS SELECT r.*, "
            "row_number() OVER (PARTITION BY order_id ORDER BY line) AS occurrence FROM import_rows r")
        conn.exec_driver_sql("INSERT INTO import_existing (order_id, old_customer_id) SELECT DISTINCT order_id, "
                             "CAST(NULL AS BIGINT) FROM import_ranked WHERE occurrence > 1 "
                             "ON CONFLICT (order_id) DO NOTHING")
        inserted = written = 0
        for occurrence in range(1, self._scalar("SELECT max(occurrence) FROM import_ranked") + 1):
            more_inserted, more_written = self._upsert_counted("import_ranked", f"r.occurrence = {occurrence}",
                                                               with_delta=occurrence == 1)
            inserted, written = inserted + more_inserted, written + more_written
        return inserted, written

    def _insert_numbered(self) -> int:
        """PostgreSQL, the order table held by a bulk load: a plain insert of every row, the ids numbered
        by the statement from one value taken from the sequence, which is then moved past them (10M
        rows: a counter instead of 2.4 s of nextval calls)."""
        conn = self._conn()
        sequence = conn.exec_driver_sql("SELECT pg_get_serial_sequence('orders', 'id')").scalar()
        first = int(conn.exec_driver_sql("SELECT nextval(%s::regclass)", (sequence,)).scalar() or 0)
        inserted = int(conn.exec_driver_sql(self._upsert_sql("import_rows", "TRUE", on_conflict=False, ordered=False,
                                                             first_id=first), self._now_twice()).rowcount or 0)
        if inserted > 1:
            conn.exec_driver_sql("SELECT setval(%s::regclass, %s)", (sequence, first + inserted - 1))
        return inserted

    def _upsert_counted(self, source: str, where: str, with_delta: bool) -> tuple[int, int]:
        """PostgreSQL: the upsert, counting inserted rows by xmax = 0 (a row this statement created)."""
        returning = "RETURNING (xmax = 0) AS inserted" + (
            ", customer_id, amount_fen, paid_at, paid_day, status" if with_delta else "")  # kept for the count
        delta = (", delta AS (" + _DELTA_FROM.format(source="SELECT * FROM written WHERE inserted", mark="%s")
                 + " RETURNING 1)") if with_delta else ""
        inserted, written = self._conn().exec_driver_sql(
            f"WITH written AS ({self._upsert_sql(source, where)} {returning}){delta} "
            "SELECT count(*) FILTER (WHERE inserted), count(*) FROM written",
            self._now_twice() + ((self._time(utcnow()),) if with_delta else ())).one()
        return int(inserted), int(written)

    def _now_twice(self) -> tuple[Any, Any]:
        now = self._time(utcnow())
        return now, now

    def _upsert_sql(self, source: str, where: str, on_conflict: bool = True, ordered: bool = True,
                    first_id: int | None = None) -> str:
        columns = ("customer_id", "amount_fen", "paid_at", "paid_day", "status")
        # In order-id order the unique index grows at its end instead of at random places (SQLite, 10M
        # rows: 120 s → 79 s); line order among equal ids makes a repeat update the earlier row
        # (PostgreSQL refuses a repeat in one statement anyway, see _upsert).
        order = "ORDER BY r.order_id, r.line" if ordered else ""
        differs = " OR ".join(f"orders.{c} <> excluded.{c}" for c in columns)
        numbered = ("id, ", f"{int(first_id) - 1} + row_number() OVER (), ") if first_id is not None else ("", "")
        insert = (
            f"INSERT INTO orders ({numbered[0]}order_id, customer_id, amount_fen, paid_at, paid_day, status, "
            f"created_at, updated_at) SELECT {numbered[1]}r.order_id, c.id, r.amount_fen, r.paid_at, r.paid_day, "
            f"r.status, {self._mark}, {self._mark} "
            f"FROM {source} r JOIN customers c ON c.external_userid = r.external_userid "
            f"WHERE {where} {order}")  # WHERE: SQLite's upsert grammar
        if not on_conflict:
            return insert
        return (f"{insert} ON CONFLICT (order_id) DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in columns)
                + f", updated_at = excluded.updated_at WHERE {differs}")

    def _refresh_aggregates(self) -> None:
        """Add the new orders' totals; rebuild customers whose existing orders changed or moved (their
        old and new owners) and customers of an order id repeated in the file, from their orders."""
        conn = self._conn()
        conn.exec_driver_sql("DELETE FROM touched_customers")
        touched_count = conn.exec_driver_sql(
            "INSERT INTO touched_customers (customer_id) SELECT old_customer_id FROM import_existing "
            "WHERE old_customer_id IS NOT NULL UNION SELECT c.id FROM import_rows r JOIN import_existing e "
            "ON e.order_id = r.order_id JOIN customers c ON c.external_userid = r.external_userid").rowcount
        with self._bulk_load("customer_aggregates", self._scalar("SELECT count(*) FROM aggregate_delta")):
            if ("customer_aggregates" in self._bulk_loading and self.dialect == "postgresql"
                    and not self._scalar("SELECT count(*) FROM (SELECT 1 FROM customer_aggregates LIMIT 1) AS a")):
                with self._unique_rebuilt("customer_aggregates"):  # nothing to add to: each delta is a new row
                    conn.exec_driver_sql(f"INSERT INTO customer_aggregates ({', '.join(DELTA_COLUMNS)}) "
                                         f"SELECT {', '.join(DELTA_COLUMNS)} FROM aggregate_delta")
            else:
                conn.exec_driver_sql(DELTA_UPSERT)
                conn.exec_driver_sql(PURCHASE_DAYS_FIXUP)
        touched = "SELECT customer_id FROM touched_customers"
        if touched_count:
            conn.exec_driver_sql(f"DELETE FROM customer_aggregates WHERE customer_id IN ({touched})")
            conn.exec_driver_sql(REBUILD_SQL.format(touched=touched))
        if self._never_tiered():
            return
        # aggregate_delta's customer ids are distinct: a UNION with nothing would only sort them
        mark_for_retier(conn, "SELECT customer_id FROM aggregate_delta"
                        + (f" UNION {touched}" if touched_count else ""))

    def _never_tiered(self) -> bool:
        """PostgreSQL, after a bulk load of the customer table: whether no re-tier has run yet, so that the
        next one is a full run and marks are of no use (a first load of 1M customers: 4.7 s of marks, and
        as long again for that run to clear them). The load holds the customer table exclusively, and a
        re-tier reads it, holding its lock until it commits: none can be running now or have run unseen."""
        return (self.dialect == "postgresql" and self._customers_held
                and not self._scalar("SELECT count(*) FROM (SELECT 1 FROM tier_runs LIMIT 1) AS r"))

    def drop(self) -> None:
        self._finish_blocks()
        for table in ("import_raw", "import_unusual", "import_rows", "import_customers", "import_existing",
                      "import_ranked"):
            self._conn().exec_driver_sql(f"DROP TABLE IF EXISTS {table}")
        if self.dialect == "postgresql":
            self._conn().exec_driver_sql("DROP SEQUENCE IF EXISTS import_line")

    # ------------------------------------------------------------------------------ SQL pieces

    def _fast_condition(self) -> str:
        """PostgreSQL, rows not canonical: never NULL, so that every staged row takes exactly one path.
        (SQLite finds the unusual rows by line instead: coalesce() would make its condition 50% slower.)"""
        return f"coalesce(({_PG_SHAPE}), FALSE)"

    def _fast_params(self) -> tuple[Any, ...]:
        latest = self.now + timedelta(days=1)
        if self.dialect == "postgresql":
            return (latest,)
        return (int(latest.timestamp()),)

    def _create_tables(self) -> None:
        conn = self._conn()
        time_type = "TIMESTAMP" if self.dialect == "postgresql" else "TEXT"
        id_type = 'TEXT COLLATE "C"' if self.dialect == "postgresql" else "TEXT"  # sorted as the tables' ids are
        # PostgreSQL: no index on line (COPY speed); SQLite: line is the rowid anyway.
        line = "BIGINT" if self.dialect == "postgresql" else "INTEGER PRIMARY KEY"
        self.drop()
        if self.dialect == "postgresql":  # lines of the blocks add_block stages
            conn.exec_driver_sql("CREATE TEMPORARY SEQUENCE import_line")
            line += " DEFAULT nextval('import_line')"
        statements = [
            f"CREATE TEMPORARY TABLE import_raw (line {line}, order_id TEXT, external_userid TEXT, amount TEXT, "
            "paid_at TEXT, status TEXT, plain BOOLEAN DEFAULT TRUE, canonical BOOLEAN DEFAULT TRUE)",
            f"CREATE TEMPORARY TABLE import_rows (line {line}, order_id {id_type}, external_userid {id_type}, "
            f"amount_fen BIGINT, paid_at {time_type}, paid_day BIGINT, status TEXT)",
            "CREATE TEMPORARY TABLE import_unusual (line BIGINT, order_id TEXT, external_userid TEXT, amount TEXT, "
            "paid_at TEXT, status TEXT)",
            f"CREATE TEMPORARY TABLE import_existing (order_id {id_type} PRIMARY KEY, old_customer_id BIGINT)",
            "CREATE TEMPORARY TABLE IF NOT EXISTS touched_customers (customer_id BIGINT PRIMARY KEY)",
        ]
        for statement in statements:
            conn.exec_driver_sql(statement)

    def _analyze(self, table: str) -> None:
        """PostgreSQL: autovacuum never analyzes temporary tables (and not yet a just-grown table);
        the planner needs their size."""
        if self.dialect == "postgresql":
            self._conn().exec_driver_sql(f"ANALYZE {table}")

    @property
    def _mark(self) -> str:
        return "%s" if self.dialect == "postgresql" else "?"

    def _time(self, moment: datetime) -> Any:
        naive = moment.astimezone(UTC).replace(tzinfo=None)
        return naive.isoformat(sep=" ", timespec="microseconds") if self.dialect == "sqlite" else naive

    def _scalar(self, sql: str) -> int:
        return int(self._conn().exec_driver_sql(sql).scalar() or 0)

    def _conn(self) -> Connection:
        return self.session.connection()

    def _cursor(self) -> Any:
        return self._conn().connection.dbapi_connection.cursor()


# Per-customer totals of newly inserted orders ({source}: rows shaped like orders), for DELTA_UPSERT.
_DELTA_FROM = (f"INSERT INTO aggregate_delta ({', '.join(DELTA_COLUMNS)}) "
               + totals_sql("customer_id", "{source}", tail=", {mark}"))


def utc_offset_case(epoch: str, tz: ZoneInfo, now: datetime) -> str:
    """SQL: the zone's UTC offset in seconds at the instant ``epoch`` (Unix seconds), from 1990 to
    tomorrow — a constant for zones without transitions, else a CASE over them (newest first)."""
    transitions = offset_transitions(tz, datetime(EARLIEST_YEAR - 1, 12, 30, tzinfo=UTC), now + timedelta(days=2))
    first_offset = transitions[0][1]
    if len(transitions) == 1:
        return str(first_offset)
    whens = " ".join(f"WHEN {epoch} >= {start} THEN {offset}" for start, offset in reversed(transitions[1:]))
    return f"(CASE {whens} ELSE {first_offset} END)"


def offset_transitions(tz: ZoneInfo, start: datetime, end: datetime) -> list[tuple[int, int]]:
    """[(first Unix second, offset seconds)] for each span of constant offset between start and end."""
    def offset_at(second: int) -> int:
        moment = datetime.fromtimestamp(second, UTC).astimezone(tz)
        return int(moment.utcoffset().total_seconds())  # type: ignore[union-attr]

    step = 6 * 3600
    second, last = int(start.timestamp()), int(end.timestamp())
    spans = [(second, offset_at(second))]
    while second < last:
        following = second + step
        if offset_at(following) != spans[-1][1]:
            low, high = second, following  # offset_at(low) is the old offset, offset_at(high) the new
            while high - low > 1:
                middle = (low + high) // 2
                low, high = (middle, high) if offset_at(middle) == spans[-1][1] else (low, middle)
            spans.append((high, offset_at(high)))
        second = following
    return spans


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _day_of_month(as_integer: str) -> str:
    """SQL: month 01–12 and day 01 to the month's length (SQLite's date() would roll 02-30 over to March)."""
    year, month, day = (as_integer.format(f"substr(paid_at, {start}, {length})")
                        for start, length in ((1, 4), (6, 2), (9, 2)))
    leap = f"({year} % 4 = 0 AND ({year} % 100 <> 0 OR {year} % 400 = 0))"
    return (f"{month} BETWEEN 1 AND 12 AND {day} BETWEEN 1 AND CASE {month} WHEN 2 THEN CASE WHEN {leap} "
            "THEN 29 ELSE 28 END "
            f"WHEN 4 THEN 30 WHEN 6 THEN 30 WHEN 9 THEN 30 WHEN 11 THEN 30 ELSE 31 END")


# julianday() parses the offset and exists in every SQLite (unixepoch() needs 3.38)
_SQLITE_EPOCH = "CAST(round((julianday(paid_at) - 2440587.5) * 86400) AS INTEGER)"
_STATUS = "CASE WHEN status = 'refunded' THEN 'refunded' ELSE 'paid' END"
# Plain rows hold no whitespace or control character (the reader checked whole blocks of text), so only
# the length is left to check; other rows take the fast path only with printable ASCII ids.
_SQLITE_ID = "length({c}) BETWEEN 1 AND 128 AND (plain OR {c} NOT GLOB '*[^!-~]*')"
_SQLITE_SHAPE = " AND ".join([
    _SQLITE_ID.format(c="order_id"),
    _SQLITE_ID.format(c="external_userid"),
    # digits, then nothing or "." and one or two digits; at most 13 digits before the point
    "amount GLOB '[0-9]*' AND amount NOT GLOB '*[^0-9.]*' AND CASE instr(amount, '.') "
    "WHEN 0 THEN length(amount) <= 13 ELSE instr(amount, '.') <= 14 AND length(amount) - instr(amount, '.') <= 2 "
    "AND (amount GLOB '*.[0-9]' OR amount GLOB '*.[0-9][0-9]') END",
    "length(paid_at) = 25 AND paid_at GLOB "
    "'[12][0-9][0-9][0-9]-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-5][0-9][+-][01][0-9]:[0-5][0-9]' "
    f"AND substr(paid_at, 1, 4) >= '{EARLIEST_YEAR}' AND substr(paid_at, 12, 2) < '24' "
    "AND substr(paid_at, 21, 2) <= '14'",
    "(status IS NULL OR status IN ('', 'paid', 'refunded'))",
])
_SQLITE_DAY_OF_MONTH = _day_of_month("CAST({} AS INTEGER)")
# Canonical rows (the reader matched their blocks against canonical_rows_pattern) have a month of 01–12
# and a day of 01–31: only days 29–31 need a look at the month.
_SQLITE_FAST_CONDITION = (
    f"CASE WHEN canonical THEN substr(paid_at, 9, 2) <= '28' OR {_SQLITE_DAY_OF_MONTH} "
    f"ELSE {_SQLITE_SHAPE} AND {_SQLITE_DAY_OF_MONTH} END AND {_SQLITE_EPOCH} <= ?")
# CAST takes the longest integer prefix ("12.3" → 12); "12.3" || "0" puts two digits after the point
_SQLITE_FEN = ("CAST(amount AS INTEGER) * 100 + CASE instr(amount, '.') WHEN 0 THEN 0 "
               "ELSE CAST(substr(amount || '0', instr(amount, '.') + 1, 2) AS INTEGER) END")
_PG_DAY_OF_MONTH = _day_of_month("{}::int").replace("%", "%%")
_PG_SHAPE = " AND ".join([
    # length + a negated class: PostgreSQL's regex engine expands a bounded repeat like {1,128} slowly
    "length(order_id) BETWEEN 1 AND 128 AND (plain OR order_id !~ '[^!-~]')",
    "length(external_userid) BETWEEN 1 AND 128 AND (plain OR external_userid !~ '[^!-~]')",
    "amount ~ '^[0-9]+([.][0-9][0-9]?)?$' AND length(split_part(amount, '.', 1)) <= 13",
    "(status IS NULL OR status IN ('', 'paid', 'refunded'))",
    # CASE: the range checks and the cast run only on text already shaped like a time
    "CASE WHEN translate(paid_at, '0123456789', '0000000000') "
    "IN ('0000-00-00T00:00:00+00:00', '0000-00-00T00:00:00-00:00') "
    f"AND substr(paid_at, 1, 4) >= '{EARLIEST_YEAR}' AND substr(paid_at, 12, 2) < '24' "
    "AND substr(paid_at, 15, 2) < '60' AND substr(paid_at, 18, 2) < '60' AND substr(paid_at, 21, 2) <= '14' "
    f"AND substr(paid_at, 24, 2) < '60' AND length(paid_at) = 25 AND {_PG_DAY_OF_MONTH} "
    "THEN paid_at::timestamptz <= %s ELSE FALSE END",
])
# The canonical shape as a pattern over whole blocks of plain text (no quote, no whitespace but line
# ends): checking a block at once costs the reader ~0.5 µs a row, against 1.3 µs (SQLite) and 3.4 µs
# (PostgreSQL) a row for the shape checks in SQL. Same shape as the SQL checks, years from 1990.
_CANONICAL_VALUES = {
    "order_id": r"[!-+\--~]{1,128}",  # printable ASCII but the comma
    "external_userid": r"[!-+\--~]{1,128}",
    "amount": r"[0-9]{1,13}(?:\.[0-9]{1,2})?",
    "paid_at": r"(?:199[0-9]|2[0-9]{3})-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
               r"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9][+-](?:0[0-9]|1[0-4]):[0-5][0-9]",
    "status": r"(?:paid|refunded)?",
}


def canonical_rows_pattern(header: list[str]) -> re.Pattern[str] | None:
    """A pattern that a block of plain text matches as a whole when each of its lines is a row of the
    canonical shape, in this header's column order; None when the header names another column."""
    if not set(header) <= set(_CANONICAL_VALUES) or len(set(header)) != len(header):
        return None
    row = ",".join(f"(?:{_CANONICAL_VALUES[name]})" for name in header)
    return re.compile(rf"(?:{row}(?:\r\n|\n|\r))*")


def _pg_instant(instant: str, tz: ZoneInfo) -> str:
    """SQL: the UTC time and the local day (an ordinal) of a timestamptz."""
    return (f"{instant} AT TIME ZONE 'UTC', ({instant} AT TIME ZONE {_sql_string(tz.key)})::date "
            "- DATE '0001-01-01' + 1")


_PG_FEN = ("CASE WHEN strpos(amount, '.') = 0 THEN amount::bigint * 100 "
           "ELSE split_part(amount, '.', 1)::bigint * 100 + rpad(split_part(amount, '.', 2), 2, '0')::bigint END")


def _chunks(values: list[Any], size: int = 500) -> Iterator[tuple[Any, ...]]:
    """``values`` in tuples of at most ``size``: bound parameters per statement stay under every driver's limit."""
    for start in range(0, len(values), size):
        yield tuple(values[start:start + size])
