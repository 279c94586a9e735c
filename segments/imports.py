"""CSV imports of orders and customers. A bad row is skipped and reported with its line number; a
file that cannot be read (missing, not UTF-8, binary, wrong header) fails as a whole and, being one
transaction, changes nothing."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from itertools import islice
from operator import itemgetter
from pathlib import Path
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.models import Customer, Follow, Staff
from segments.bulk_orders import STAGE_BATCH, OrderStaging
from segments.orders import RowError, WriteCounts

ORDER_COLUMNS = ("order_id", "external_userid", "amount", "paid_at")
CUSTOMER_COLUMNS = ("external_userid", "name", "follow_userid", "added_at")
KEPT_ERRORS = 1000

Progress = Callable[[int], None]  # called with bytes read so far
Phase = Callable[[str], None]  # called with the name of a step that follows reading


class ImportFailed(Exception):
    """The file cannot be imported at all; nothing was changed."""


@dataclass
class ImportSummary(WriteCounts):
    read: int = 0
    skipped: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)  # (line, reason), the first KEPT_ERRORS

    def skip(self, line: int, reason: str) -> None:
        self.skipped += 1
        if len(self.errors) < KEPT_ERRORS:
            self.errors.append((line, reason))


def import_orders(session: Session, path: Path, tz: ZoneInfo, progress: Progress | None = None,
                  phase: Phase | None = None) -> ImportSummary:
    """Import an orders CSV (``order_id,external_userid,amount,paid_at[,status]``) into ``session``:
    raw fields are staged and merged set-based (segments.bulk_orders)."""
    summary = ImportSummary()
    staging = OrderStaging(session, tz, summary.skip)
    try:
        batch: list[tuple[Any, ...]] = []
        blocks = PlainBlocks()
        for rows, problems in _row_chunks(path, ORDER_COLUMNS, ("status",), progress, blocks):
            summary.read += len(rows) + len(problems)
            for problem in problems:
                summary.skip(*problem)
            batch += rows
            if len(batch) >= STAGE_BATCH:
                staging.add(batch, plain=blocks.batch_plain)
                blocks.next_batch()
                batch = []
        staging.add(batch, plain=blocks.batch_plain)
        if phase:
            phase("validating and merging")
        summary.add(staging.merge())
    finally:
        staging.drop()
    summary.errors.sort()
    return summary


def import_customers(session: Session, path: Path, tz: ZoneInfo, progress: Progress | None = None,
                     phase: Phase | None = None) -> ImportSummary:
    """Import ``external_userid,name,follow_userid,added_at[,birthday]``: upsert customer, staff, follow."""
    summary = ImportSummary()
    staff_ids: dict[str, int] = {}
    for line, record in _records(path, CUSTOMER_COLUMNS, ("birthday",), progress):
        summary.read += 1
        if "__error__" in record:
            summary.skip(line, record["__error__"])
            continue
        try:
            values = _customer_values(record)
        except RowError as exc:
            summary.skip(line, str(exc))
            continue
        created = _upsert_customer(session, staff_ids, values)
        summary.inserted += created
        summary.updated += not created
    return summary


def _customer_values(record: dict[str, str]) -> dict[str, Any]:
    external_userid = (record.get("external_userid") or "").strip()
    follow_userid = (record.get("follow_userid") or "").strip()
    if not external_userid or len(external_userid) > 128:
        raise RowError("external_userid is empty or longer than 128 characters")
    if not follow_userid or len(follow_userid) > 64:
        raise RowError("follow_userid is empty or longer than 64 characters")
    try:
        added_at = datetime.fromisoformat((record.get("added_at") or "").strip())
    except ValueError:
        raise RowError("added_at is not an ISO 8601 time") from None
    if added_at.tzinfo is None:
        raise RowError("added_at needs a UTC offset")
    birthday = None
    if (record.get("birthday") or "").strip():
        try:
            birthday = date.fromisoformat(record["birthday"].strip())
        except ValueError:
            raise RowError("birthday must be YYYY-MM-DD") from None
    return {"external_userid": external_userid, "name": (record.get("name") or "").strip()[:255],
            "follow_userid": follow_userid, "added_at": added_at.astimezone(UTC), "birthday": birthday}


def _upsert_customer(session: Session, staff_ids: dict[str, int], v: dict[str, Any]) -> bool:
    if v["follow_userid"] not in staff_ids:
        staff = session.scalar(select(Staff).where(Staff.userid == v["follow_userid"]))
        if staff is None:
            staff = Staff(userid=v["follow_userid"], name=v["follow_userid"])
            session.add(staff)
            session.flush()
        staff_ids[v["follow_userid"]] = staff.id
    customer = session.scalar(select(Customer).where(Customer.external_userid == v["external_userid"]))
    created = customer is None
    if customer is None:
        customer = Customer(external_userid=v["external_userid"], created_at=v["added_at"])
        session.add(customer)
    customer.name = v["name"] or customer.name or ""
    customer.owner_userid = customer.owner_userid or v["follow_userid"]
    customer.birthday = v["birthday"] or customer.birthday
    session.flush()
    follow = session.scalar(select(Follow).where(Follow.customer_id == customer.id,
                                                 Follow.staff_id == staff_ids[v["follow_userid"]]))
    if follow is None:
        session.add(Follow(customer_id=customer.id, staff_id=staff_ids[v["follow_userid"]], added_at=v["added_at"]))
    else:
        follow.added_at = follow.added_at or v["added_at"]
    return created


class RowProblem(NamedTuple):
    line: int
    reason: str


def _records(path: Path, required: tuple[str, ...], optional: tuple[str, ...],
             progress: Progress | None) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (line number, {column: value}) — {"__error__": reason} for a malformed row."""
    names = ("__line__", *required, *optional)
    for row in _rows(path, required, optional, progress):
        if type(row) is RowProblem:
            yield row.line, {"__error__": row.reason}
        else:
            yield row[0], {k: v for k, v in zip(names[1:], row[1:], strict=True) if v is not None}


class PlainBlocks:
    """The CSV text, read in blocks of about a megabyte, line by line; notes whether the blocks a batch
    of rows came from were *plain*: no whitespace but line ends, no control character, no quote (so no
    value can hold a line end). Values from plain text need no per-value check for such characters."""

    SIZE = 1 << 20
    _NOT_PLAIN = re.compile(r'[^\S\n\r]|[\x00-\x09\x0b\x0c\x0e-\x1f\x7f"]')

    def __init__(self) -> None:
        self.current_plain = True  # the block lines are being taken from
        self.batch_plain = True  # every block the current batch's rows came from

    def next_batch(self) -> None:
        self.batch_plain = self.current_plain

    def lines(self, text: io.TextIOBase) -> Iterator[str]:
        while block := text.read(self.SIZE):
            block += text.readline()  # end on a line end (a "\r" is completed by its "\n")
            self.current_plain = not self._NOT_PLAIN.search(block)
            self.batch_plain = self.batch_plain and self.current_plain
            yield from io.StringIO(block, newline="")


def _rows(path: Path, required: tuple[str, ...], optional: tuple[str, ...],
          progress: Progress | None) -> Iterator[tuple[Any, ...] | RowProblem]:
    """Yield (line, *values in the order required + optional, None for an absent optional column),
    or a RowProblem, in file order; raise ImportFailed if the file itself is unusable."""
    for rows, problems in _row_chunks(path, required, optional, progress):
        yield from sorted([*rows, *problems], key=itemgetter(0))


def _row_chunks(path: Path, required: tuple[str, ...], optional: tuple[str, ...], progress: Progress | None,
                blocks: PlainBlocks | None = None) -> Iterator[tuple[list[tuple[Any, ...]], list[RowProblem]]]:
    """Yield, for each run of up to STAGE_BATCH rows: the good rows as (line, *values in the order
    required + optional, None for an absent optional column) and the rows of the wrong width as
    RowProblems; raise ImportFailed if the file itself is unusable. The hot loop of big imports:
    rows are taken a run at a time, and numbered by line afterwards."""
    try:
        raw = open(path, "rb")  # noqa: SIM115 - closed in finally
    except OSError as exc:
        raise ImportFailed(f"cannot open {path}: {exc.strerror or exc}") from None
    try:
        if b"\x00" in raw.peek(8192)[:8192]:
            raise ImportFailed(f"{path} looks like a binary file, not a CSV: nothing imported")
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
        reader = csv.reader((blocks or PlainBlocks()).lines(text))
        header = _header(reader, path, required, optional)
        width = len(header)
        pick = _picker(header, required + optional)
        while True:
            first_line = reader.line_num + 1
            chunk = list(islice(reader, STAGE_BATCH))
            if not chunk:
                break
            lines = _last_lines(chunk, first_line, reader.line_num)
            rows = [(line, *pick(row)) for line, row in zip(lines, chunk, strict=True) if len(row) == width]
            problems = [] if len(rows) == len(chunk) else [
                RowProblem(line, f"expected {width} fields, found {len(row)}")
                for line, row in zip(lines, chunk, strict=True) if len(row) != width and not _blank(row)]
            if progress:
                progress(raw.tell())
            yield rows, problems
    except UnicodeDecodeError as exc:
        raise ImportFailed(f"{path} is not UTF-8 text (byte {exc.start} of a read block): nothing imported") from None
    except csv.Error as exc:
        raise ImportFailed(f"{path} is not a readable CSV file ({exc}): nothing imported") from None
    finally:
        raw.close()


def _blank(row: list[str]) -> bool:
    return not row or (len(row) == 1 and not row[0].strip())


def _last_lines(chunk: list[list[str]], first_line: int, last_line: int) -> Iterable[int]:
    """The line each row of ``chunk`` ends on (what csv.reader's line_num says after reading it), given
    that the chunk spans ``first_line`` to ``last_line``. A row ends one line after the previous one,
    plus one more for each line end inside its quoted values ("\n", "\r\n" or a lone "\r")."""
    if last_line - first_line + 1 == len(chunk):  # no value spans lines: numbered in sequence
        return range(first_line, last_line + 1)
    lines, line = [], first_line - 1
    for row in chunk:
        line += 1 + sum(v.count("\n") + v.count("\r") - v.count("\r\n") for v in row)
        lines.append(line)
    if line != last_line:  # csv.reader keeps line ends in values as read; never report a wrong line
        raise ImportFailed(f"cannot tell the lines of the rows between lines {first_line} and {last_line} "
                           "apart: nothing imported")
    return lines


def _picker(header: list[str], columns: tuple[str, ...]) -> Callable[[list[str]], tuple[str | None, ...]]:
    """A function from a CSV row to the named columns' values (None where the header lacks one)."""
    positions = [header.index(c) if c in header else None for c in columns]
    if None not in positions:
        get = itemgetter(*positions)
        return get if len(positions) > 1 else lambda row: (get(row),)
    return lambda row: tuple(None if p is None else row[p] for p in positions)


def _header(reader: Any, path: Path, required: tuple[str, ...], optional: tuple[str, ...]) -> list[str]:
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        raise ImportFailed(f"{path} is empty: nothing imported") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise ImportFailed(f"{path} has no column(s) {', '.join(missing)}; the header must name "
                           f"{','.join(required)}[,{','.join(optional)}]: nothing imported")
    return header
