"""Customers out, as CSV: tiers, metrics and tags, streamed in pages so memory stays flat; and the one
CSV writer every file the product writes goes through, which keeps cells from running as formulas.
Times go out as ISO 8601 in app.timezone with its offset (``2026-12-07T20:41:00+08:00``)."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Sequence
from datetime import tzinfo
from decimal import Decimal
from typing import IO, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from bot.core.times import local_iso
from bot.models import Customer, CustomerAggregate, CustomerPrediction, CustomerTag, Tag

COLUMNS = ["external_userid", "name", "owner_userid", "value_tier", "rfm_segment", "r_score", "f_score", "m_score",
           "score", "stage", "engagement", "activity", "order_count", "total_amount", "last_order_at", "tags",
           "opted_out", "p_alive", "churn_risk", "expected_purchases", "predicted_value", "next_order_on",
           "average_days_between_orders"]
PAGE = 5000
# OWASP "CSV injection": Excel and WPS run a cell that begins with one of these as a formula.
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(cell: Any) -> Any:
    """A text cell that a spreadsheet would run as a formula, prefixed with ``'`` (shown as text, not run).
    Only text is touched: numbers the product writes (ints, Decimals) stay numbers, negatives included."""
    if isinstance(cell, str) and cell.startswith(FORMULA_TRIGGERS):
        return "'" + cell
    return cell


class SafeCsvWriter:
    """``csv.writer`` whose every text cell passes :func:`spreadsheet_safe`: names, tags and reasons
    come from customers, staff and input files, and end up opened in Excel."""

    def __init__(self, out: IO[str]) -> None:
        self._writer = csv.writer(out)

    def writerow(self, row: Iterable[Any]) -> None:
        self._writer.writerow([spreadsheet_safe(cell) for cell in row])

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for row in rows:
            self.writerow(row)


def export_customers(session: Session, out: IO[str], where: Sequence[ColumnElement[bool]] = (), *,
                     tz: tzinfo) -> int:
    """Every customer matching ``where`` (conditions on ``customers``), written as CSV page by page, its
    times local to ``tz``."""
    writer = SafeCsvWriter(out)
    writer.writerow(COLUMNS)
    written = 0
    for rows in customer_pages(session, where, tz=tz):
        writer.writerows(rows)
        written += len(rows)
    return written


def customer_pages(session: Session, where: Sequence[ColumnElement[bool]] = (), *,
                   tz: tzinfo) -> Iterator[list[list[object]]]:
    """The export's rows, a page at a time in id order (keyset: each page starts after the last id)."""
    for page in _pages(session, where, 0, PAGE, tz):
        yield [row for _, row in page]


def customer_records(session: Session, where: Sequence[ColumnElement[bool]] = (), after: int = 0,
                     limit: int = 100, *, tz: tzinfo) -> list[dict[str, Any]]:
    """The export's columns as JSON-ready records (amounts as exact decimal strings, tags as a list, the
    opt-out as a boolean, times local to ``tz`` as in the CSV, each with its id for the next page), at
    most ``limit`` after id ``after``."""
    records = []
    for customer_id, row in next(_pages(session, where, after, limit, tz), []):
        record: dict[str, Any] = {"id": customer_id}
        for column, value in zip(COLUMNS, row, strict=True):
            record[column] = str(value) if isinstance(value, Decimal) else None if value == "" else value
        record["tags"] = [t for t in (record["tags"] or "").split(";") if t]
        record["opted_out"] = record["opted_out"] == "true"
        records.append(record)
    return records


def _pages(session: Session, where: Sequence[ColumnElement[bool]], after: int,
           page_size: int, tz: tzinfo) -> Iterator[list[tuple[int, list[object]]]]:
    last_id = after
    while True:
        page = session.execute(
            select(Customer, CustomerAggregate, CustomerPrediction)
            .outerjoin(CustomerAggregate, CustomerAggregate.customer_id == Customer.id)
            .outerjoin(CustomerPrediction, CustomerPrediction.customer_id == Customer.id)
            .where(Customer.id > last_id, *where).order_by(Customer.id).limit(page_size)).all()
        if not page:
            return
        ids = [c.id for c, _, _ in page]
        sqlite = session.get_bind().dialect.name == "sqlite"
        joined = func.group_concat(Tag.name, ";") if sqlite else func.string_agg(Tag.name, ";")
        tags = dict(session.execute(
            select(CustomerTag.customer_id, joined)
            .join(Tag, Tag.id == CustomerTag.tag_id)
            .where(CustomerTag.customer_id.in_(ids), CustomerTag.removed_at.is_(None))
            .group_by(CustomerTag.customer_id)).all())
        yield [(c.id, _row(c, a, tags.get(c.id, ""), tz) + _predicted(p) + [_average_gap(a)]) for c, a, p in page]
        last_id = ids[-1]


def _row(c: Customer, a: CustomerAggregate | None, tags: str, tz: tzinfo) -> list[object]:
    # A local time with its offset begins with the year, so the formula guard never prefixes it.
    last = (local_iso(a.last_order_at, tz) if a else None) or ""
    # Scores and amounts go out as numbers (int, Decimal), so a negative one stays a number.
    return [c.external_userid, c.name, c.owner_userid or "", c.value_tier or "", c.rfm_segment or "",
            _n(c.r_score), _n(c.f_score), _n(c.m_score), _n(c.score), c.stage or "", c.engagement or "",
            c.activity or "", a.order_count if a else 0, _yuan(a.paid_amount_fen if a else 0), last,
            ";".join(sorted(t for t in tags.split(";") if t)), "true" if c.opted_out else "false"]


def _predicted(p: CustomerPrediction | None) -> list[object]:
    if p is None:
        return ["", "", "", "", ""]
    return [round(p.p_alive, 4), p.churn_risk, round(p.expected_purchases, 4), _yuan(p.predicted_value_fen),
            p.next_order_on.isoformat() if p.next_order_on else ""]


def _average_gap(a: CustomerAggregate | None) -> Decimal | str:
    """Days between purchase days on average (Klaviyo's average_days_between_orders): the span from the
    first to the last purchase day over the gaps between them; empty below two purchase days."""
    if a is None or not a.paid_days or a.paid_days < 2 or a.first_order_day is None or a.last_order_day is None:
        return ""
    return (Decimal(a.last_order_day - a.first_order_day) / (a.paid_days - 1)).quantize(Decimal("0.1"))


def _n(value: int | None) -> int | str:
    return "" if value is None else value


def _yuan(fen: int) -> Decimal:
    """Fen as 元 with two decimals, written as 12.30 / -0.05 (exact, never via float)."""
    return Decimal(fen).scaleb(-2)
