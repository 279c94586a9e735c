"""CSV imports of orders and customers. A bad row is skipped and reported with its line number; a
file that cannot be read (missing, neither UTF-8 nor GB18030, binary, wrong header) fails as a whole
and, being one transaction, changes nothing.

Encodings: UTF-8 (with or without a BOM) and GB18030, a superset of the GBK that Excel writes on a
Chinese Windows. ``auto`` reads a file that is valid UTF-8 as UTF-8 and any other as GB18030."""

from __future__ import annotations

import codecs
import csv
import io
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from itertools import chain
from operator import itemgetter
from pathlib import Path
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.core.forgotten import is_forgotten
from bot.models import Customer, Follow, Staff
from segments.bulk_orders import STAGE_BATCH, OrderStaging, canonical_rows_pattern
from segments.orders import RowError, WriteCounts, local_or_aware

ORDER_COLUMNS = ("order_id", "external_userid", "amount", "paid_at")
CUSTOMER_COLUMNS = ("external_userid", "name", "follow_userid", "added_at")
KEPT_ERRORS = 1000
ENCODINGS = ("auto", "utf-8", "gb18030")
_CODECS = {"utf-8": "utf-8-sig", "gb18030": "gb18030"}  # utf-8-sig: a BOM is dropped, its absence is fine
SCAN_BLOCK = 1 << 20

Progress = Callable[[int], None]  # called with bytes read so far
Phase = Callable[[str], None]  # called with the name of each step that follows reading (MERGE_STEPS)


class ImportFailed(Exception):
    """The file cannot be imported at all; nothing was changed."""


@dataclass
class ImportSummary(WriteCounts):
    read: int = 0
    skipped: int = 0
    encoding: str = "utf-8"  # the one the file was read in
    errors: list[tuple[int, str]] = field(default_factory=list)  # (line, reason), the first KEPT_ERRORS

    def skip(self, line: int, reason: str) -> None:
        self.skipped += 1
        if len(self.errors) < KEPT_ERRORS:
            self.errors.append((line, reason))


def import_orders(session: Session, path: Path, tz: ZoneInfo, progress: Progress | None = None,
                  phase: Phase | None = None, encoding: str = "auto") -> ImportSummary:
    """Import an orders CSV (``order_id,external_userid,amount,paid_at[,status]``) into ``session``:
    raw fields are staged and merged set-based (segments.bulk_orders)."""
    summary = ImportSummary(encoding=resolve_encoding(path, encoding))
    staging = OrderStaging(session, tz, summary.skip)
    try:
        batch: list[tuple[Any, ...]] = []
        blocks = PlainBlocks(canonical_rows_pattern, divert=staging.add_block if staging.takes_blocks else None)
        for row in _rows(path, summary.encoding, ORDER_COLUMNS, ("status",), progress, blocks):
            summary.read += 1
            if type(row) is RowProblem:
                summary.skip(*row)
                continue
            batch.append(row)
            if len(batch) >= STAGE_BATCH:
                staging.add(batch, plain=blocks.batch_plain, canonical=blocks.batch_canonical)
                blocks.next_batch()
                batch = []
        staging.add(batch, plain=blocks.batch_plain, canonical=blocks.batch_canonical)
        summary.read += blocks.diverted_lines  # one row a line
        summary.add(staging.merge(phase))
    finally:
        staging.drop()
    summary.errors.sort()
    return summary


def import_customers(session: Session, path: Path, tz: ZoneInfo, progress: Progress | None = None,
                     phase: Phase | None = None, encoding: str = "auto") -> ImportSummary:
    """Import ``external_userid,name,follow_userid,added_at[,birthday]``: upsert customer, staff, follow."""
    summary = ImportSummary(encoding=resolve_encoding(path, encoding))
    staff_ids: dict[str, int] = {}
    for line, record in _records(path, summary.encoding, CUSTOMER_COLUMNS, ("birthday",), progress):
        summary.read += 1
        if "__error__" in record:
            summary.skip(line, record["__error__"])
            continue
        try:
            values = _customer_values(record, tz)
        except RowError as exc:
            summary.skip(line, str(exc))
            continue
        created = _upsert_customer(session, staff_ids, values)
        if created is None:
            summary.skip(line, "the customer was forgotten (scrm customer forget); not imported again")
            continue
        summary.inserted += created
        summary.updated += not created
    return summary


def _customer_values(record: dict[str, str], tz: ZoneInfo) -> dict[str, Any]:
    external_userid = (record.get("external_userid") or "").strip()
    follow_userid = (record.get("follow_userid") or "").strip()
    if not external_userid or len(external_userid) > 128:
        raise RowError("external_userid is empty or longer than 128 characters")
    if not follow_userid or len(follow_userid) > 64:
        raise RowError("follow_userid is empty or longer than 64 characters")
    try:
        added_at = local_or_aware(datetime.fromisoformat((record.get("added_at") or "").strip()), tz)
    except ValueError:
        raise RowError("added_at is not an ISO 8601 time") from None
    if not 1970 <= added_at.year <= 2999:  # year 1 with an offset overflowed on the way to UTC
        raise RowError(f"added_at is out of range (years 1970–2999), got {added_at.year}")
    name = (record.get("name") or "").strip()
    if len(name) > 255:
        raise RowError(f"name is longer than 255 characters ({len(name)})")
    birthday = None
    if (record.get("birthday") or "").strip():
        try:
            birthday = date.fromisoformat(record["birthday"].strip())
        except ValueError:
            raise RowError("birthday must be YYYY-MM-DD") from None
    return {"external_userid": external_userid, "name": name,
            "follow_userid": follow_userid, "added_at": added_at.astimezone(UTC), "birthday": birthday}


def _upsert_customer(session: Session, staff_ids: dict[str, int], v: dict[str, Any]) -> bool | None:
    """Whether the customer was created; None for a contact erased on request, which stays erased."""
    if v["follow_userid"] not in staff_ids:
        staff = session.scalar(select(Staff).where(Staff.userid == v["follow_userid"]))
        if staff is None:
            staff = Staff(userid=v["follow_userid"], name=v["follow_userid"])
            session.add(staff)
            session.flush()
        staff_ids[v["follow_userid"]] = staff.id
    customer = session.scalar(select(Customer).where(Customer.external_userid == v["external_userid"]))
    if customer is None and is_forgotten(session, v["external_userid"]):
        return None
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


def _records(path: Path, encoding: str, required: tuple[str, ...], optional: tuple[str, ...],
             progress: Progress | None) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (line number, {column: value}) — {"__error__": reason} for a malformed row."""
    names = ("__line__", *required, *optional)
    for row in _rows(path, encoding, required, optional, progress):
        if type(row) is RowProblem:
            yield row.line, {"__error__": row.reason}
        else:
            yield row[0], {k: v for k, v in zip(names[1:], row[1:], strict=True) if v is not None}


class PlainBlocks:
    """The CSV text, read in blocks of about a megabyte, line by line; notes whether the blocks a batch
    of rows came from were *plain*: no whitespace but line ends, no control character, no quote (so no
    value can hold a line end). Values from plain text need no per-value check for such characters.
    Given a pattern for the header (``canonical``), also notes whether every line of those blocks
    matched it (*canonical* rows, whose shape SQL then need not check). Given ``divert``, hands each
    canonical block with "\n" line ends that starts a record to ``divert(block, first line number)``
    as it is, instead of to the CSV reader (every line of such a block is one row, without quotes)."""

    SIZE = 1 << 20
    # ASCII blocks (most files) are checked as bytes, 10× faster than a regular expression
    _NOT_PLAIN_ASCII = bytes(c for c in range(0x21) if c not in b"\n\r") + b'\x7f"'
    _NOT_PLAIN = re.compile("[" + re.escape("".join(
        sorted({chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()} - {"\n", "\r"})
        + [chr(c) for c in range(0x20) if chr(c) not in "\n\r"] + ["\x7f", '"'])) + "]")

    def __init__(self, canonical: Callable[[list[str]], re.Pattern[str] | None] | None = None,
                 divert: Callable[[list[str], str, int], None] | None = None) -> None:
        self.current_plain = True  # the block lines are being taken from
        self.batch_plain = True  # every block the current batch's rows came from
        self.current_canonical = self.batch_canonical = canonical is not None
        self._pattern_for = canonical
        self._pattern: re.Pattern[str] | None = None
        self._names: list[str] = []
        self._divert = divert
        self.report: Callable[[], None] | None = None  # progress, after each diverted block
        self.diverted_lines = 0  # lines handed to divert: the reader's line numbers lag by as many
        self.reader: Any = None  # the CSV reader taking the other blocks' lines (set by _rows)
        self.record_end = 0  # the reader's line count after its latest record (set by _rows)

    def header(self, names: list[str]) -> None:
        """The file's column names, known before the first block of rows is read."""
        self._names = names
        self._pattern = self._pattern_for(names) if self._pattern_for else None

    def next_batch(self) -> None:
        self.batch_plain = self.current_plain
        self.batch_canonical = self.current_canonical

    def lines(self, text: io.TextIOBase) -> Iterator[str]:
        return chain.from_iterable(io.StringIO(block, newline="") for block in self._blocks(text))

    def _blocks(self, text: io.TextIOBase) -> Iterator[str]:
        if first_line := text.readline():
            yield first_line  # the header, alone: the blocks of rows are read once it has been parsed
        while block := text.read(self.SIZE):
            block += text.readline()  # end on a line end (a "\r" is completed by its "\n")
            plain = self.plain(block)
            canonical = plain and self._pattern is not None and self._pattern.fullmatch(block) is not None
            if canonical and self._divert and "\r" not in block and self._reader_between_records():
                self._divert(self._names, block, self.reader.line_num + self.diverted_lines + 1)
                self.diverted_lines += block.count("\n")
                if self.report:
                    self.report()
                continue
            self.current_plain, self.current_canonical = plain, canonical
            self.batch_plain = self.batch_plain and plain
            self.batch_canonical = self.batch_canonical and canonical
            yield block

    def _reader_between_records(self) -> bool:
        """Whether the reader, asking for its next line, is about to start a record (and not inside a
        quoted value that runs on over lines)."""
        return self.reader is not None and self.reader.line_num == self.record_end

    @classmethod
    def plain(cls, text: str) -> bool:
        if text.isascii():
            return len(text.encode("ascii").translate(None, cls._NOT_PLAIN_ASCII)) == len(text)
        return not cls._NOT_PLAIN.search(text)


def resolve_encoding(path: Path, requested: str = "auto") -> str:
    """The encoding to read ``path`` in: ``requested``, or for ``auto`` UTF-8 when the whole file is valid
    UTF-8 and GB18030 otherwise (whose own errors _rows reports). One streamed pass over the bytes."""
    if requested not in ENCODINGS:
        raise ImportFailed(f"unknown encoding {requested!r}: use one of {', '.join(ENCODINGS)}")
    if requested != "auto":
        return requested
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with open(path, "rb") as raw:
            while block := raw.read(SCAN_BLOCK):
                if block.isascii() and not decoder.getstate()[0]:
                    continue  # most blocks: ASCII is UTF-8, checked 20x faster than by decoding
                decoder.decode(block)
            decoder.decode(b"", final=True)
    except OSError as exc:
        raise ImportFailed(f"cannot open {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        return "gb18030"
    return "utf-8"


def _undecodable_line(path: Path, encoding: str) -> int:
    """The line holding the first byte that is not ``encoding``; 0 if none. Neither encoding uses the
    byte of "\n" inside a character, so counting it among the bytes counts lines."""
    decoder = codecs.getincrementaldecoder(_CODECS[encoding])()
    line = 1
    with open(path, "rb") as raw:
        while True:
            block = raw.read(SCAN_BLOCK)
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as exc:  # exc.object: the bytes held back from the last block + this one
                return line + exc.object[:exc.start].count(b"\n")
            if not block:
                return 0
            line += block.count(b"\n")


def _rows(path: Path, encoding: str, required: tuple[str, ...], optional: tuple[str, ...],
          progress: Progress | None, blocks: PlainBlocks | None = None) -> Iterator[tuple[Any, ...] | RowProblem]:
    """Yield (line, *values in the order required + optional, None for an absent optional column),
    or a RowProblem; raise ImportFailed if the file itself is unusable. A row may leave out optional
    columns that end the header. The hot loop of big imports."""
    try:
        raw = open(path, "rb")  # noqa: SIM115 - closed in finally
    except OSError as exc:
        raise ImportFailed(f"cannot open {path}: {exc.strerror or exc}") from None
    try:
        start = raw.peek(8192)[:8192]
        if start.startswith((b"\xff\xfe", b"\xfe\xff")):
            raise ImportFailed(f"{path} is UTF-16 text (Excel's 'Unicode text', tab-separated): save it as "
                               "'CSV UTF-8 (comma delimited)' or 'CSV' and import that; nothing imported")
        if b"\x00" in start:
            raise ImportFailed(f"{path} looks like a binary file, not a CSV: nothing imported")
        text = io.TextIOWrapper(raw, encoding=_CODECS[encoding], newline="")
        blocks = blocks or PlainBlocks()
        reader = csv.reader(blocks.lines(text))
        header = _header(reader, path, required, optional)
        blocks.header(header)
        blocks.reader, blocks.record_end = reader, reader.line_num
        if progress:
            blocks.report = lambda: progress(raw.tell())
        width = len(header)
        shortest = width - _optional_tail(header, optional)
        pick = _picker(header, required + optional)
        next_report = 10_000
        for row in reader:
            blocks.record_end = read = reader.line_num
            line = read + blocks.diverted_lines
            if len(row) != width:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if not shortest <= len(row) < width:
                    yield RowProblem(line, f"expected {width} fields, found {len(row)}")
                    continue
                row += [""] * (width - len(row))
            yield (line, *pick(row))
            if progress and line >= next_report:
                progress(raw.tell())
                next_report = line + 10_000
        if progress:
            progress(raw.tell())
    except UnicodeDecodeError:
        raise ImportFailed(_not_text(path, encoding)) from None
    except csv.Error as exc:
        raise ImportFailed(f"{path} is not a readable CSV file ({exc}): nothing imported") from None
    finally:
        raw.close()


def _not_text(path: Path, encoding: str) -> str:
    line = _undecodable_line(path, encoding)
    where = f"line {line}" if line else "the file"
    if encoding == "gb18030":
        return (f"{path} is not UTF-8 or GB18030 text ({where} is neither; save it as UTF-8 CSV): "
                "nothing imported")
    return f"{path} is not UTF-8 text ({where}; --encoding gb18030 reads GBK/GB18030): nothing imported"


def _optional_tail(header: list[str], optional: tuple[str, ...]) -> int:
    """How many of the header's last columns are optional ones (a row may leave those out)."""
    count = 0
    for name in reversed(header):
        if name not in optional:
            break
        count += 1
    return count


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
