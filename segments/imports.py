"""CSV imports of orders and customers. A bad row is skipped and reported with its line number; a
file that cannot be read (missing, not UTF-8, binary, wrong header) fails as a whole and, being one
transaction, changes nothing."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.models import Customer, Follow, Staff
from segments.orders import OrderRow, OrderWriter, RowError, WriteCounts, parse_order

ORDER_COLUMNS = ("order_id", "external_userid", "amount", "paid_at")
CUSTOMER_COLUMNS = ("external_userid", "name", "follow_userid", "added_at")
BATCH = 20_000
KEPT_ERRORS = 1000

Progress = Callable[[int], None]  # called with bytes read so far


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


def import_orders(session: Session, path: Path, tz: ZoneInfo, progress: Progress | None = None) -> ImportSummary:
    """Import an orders CSV (``order_id,external_userid,amount,paid_at[,status]``) into ``session``."""
    summary = ImportSummary()
    writer = OrderWriter(session, defer_aggregates=True)
    batch: dict[str, OrderRow] = {}
    now = datetime.now(UTC)
    for line, record in _records(path, ORDER_COLUMNS, ("status",), progress):
        summary.read += 1
        if "__error__" in record:
            summary.skip(line, record["__error__"])
            continue
        try:
            row = parse_order(record, tz, now)
        except RowError as exc:
            summary.skip(line, str(exc))
            continue
        if row.order_id in batch or len(batch) >= BATCH:  # a repeat within the file updates the earlier row
            summary.add(writer.write(list(batch.values())))
            batch.clear()
        batch[row.order_id] = row
    summary.add(writer.write(list(batch.values())))
    writer.finish()
    return summary


def import_customers(session: Session, path: Path, tz: ZoneInfo, progress: Progress | None = None) -> ImportSummary:
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


def _records(path: Path, required: tuple[str, ...], optional: tuple[str, ...],
             progress: Progress | None) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (line number, {column: value}); raise ImportFailed if the file itself is unusable."""
    try:
        raw = open(path, "rb")  # noqa: SIM115 - closed in finally
    except OSError as exc:
        raise ImportFailed(f"cannot open {path}: {exc.strerror or exc}") from None
    try:
        if b"\x00" in raw.peek(8192)[:8192]:
            raise ImportFailed(f"{path} looks like a binary file, not a CSV: nothing imported")
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
        reader = csv.reader(text)
        header = _header(reader, path, required, optional)
        width = len(header)
        for row in reader:
            if progress and reader.line_num % 10_000 == 0:
                progress(raw.tell())
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != width:
                yield reader.line_num, {"__error__": f"expected {width} fields, found {len(row)}"}
                continue
            yield reader.line_num, dict(zip(header, row, strict=True))
        if progress:
            progress(raw.tell())
    except UnicodeDecodeError as exc:
        raise ImportFailed(f"{path} is not UTF-8 text (byte {exc.start} of a read block): nothing imported") from None
    except csv.Error as exc:
        raise ImportFailed(f"{path} is not a readable CSV file ({exc}): nothing imported") from None
    finally:
        raw.close()


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
