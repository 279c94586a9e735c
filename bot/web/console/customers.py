"""The console's customer list: search and filters compiled to SQL (the broadcast audience model plus
text search and opt-out), keyset pages, the filtered CSV export, and one customer's full record."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from io import StringIO
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import and_, exists, or_, select
from sqlalchemy.orm import Session, contains_eager
from sqlalchemy.sql.elements import ColumnElement

from bot.campaigns.audience import LIST_KEYS, Audience
from bot.core.db import contains_pattern
from bot.models import (
    Customer,
    CustomerAggregate,
    CustomerTag,
    CustomerTier,
    Follow,
    Interaction,
    Order,
    Tag,
    TagAlias,
    TagGroup,
    TierChange,
)
from bot.outbox.messages import TIER_NAMES
from segments.explain import explanation, stored_stats
from segments.export import COLUMNS, SafeCsvWriter, customer_pages
from segments.policy import TierPolicy
from segments.predict_view import PredictionView, prediction_view

PAGE_SIZE = 50
MAX_SEARCH = 100
OPT_OUT_CHOICES = ("", "yes", "no")
HISTORY_LIMIT = 100


@dataclass(frozen=True)
class CustomerFilter:
    """What the list page's form asks for; ``audience`` is the broadcast builder's filter dict."""

    search: str = ""
    audience: Mapping[str, Any] | None = None
    opted_out: str = ""

    @classmethod
    def from_args(cls, args: Any) -> CustomerFilter:
        """From request args (a MultiDict): one key per audience list, ``tag`` and ``owner`` comma-separated,
        ``has_ordered`` yes/no."""
        raw: dict[str, Any] = {}
        for key in LIST_KEYS:
            values = [v for v in args.getlist(key) if v.strip()]
            if values:
                raw[key] = values
        for field_name, key in (("tag", "tags_any"), ("owner", "owners")):
            values = [v.strip() for v in args.get(field_name, "").split(",") if v.strip()]
            if values:
                raw[key] = values
        if args.get("has_ordered") in ("yes", "no"):
            raw["has_ordered"] = args["has_ordered"] == "yes"
        for key in PREDICTION_NUMBERS:  # a number where one is given; anything else for the parser to name
            text = args.get(key, "").strip()
            if text:
                raw[key] = _number(text)
        if args.get("next_order_before", "").strip():
            raw["next_order_before"] = args["next_order_before"].strip()
        legacy = [v for v in args.getlist("channel") if v.strip()]  # the list page's links before channels joined
        if legacy:
            raw["channels"] = [*raw.get("channels", []), *legacy]
        opted = args.get("opted_out", "")
        query = "".join(ch for ch in args.get("q", "") if ch.isprintable())  # a NUL ends LIKE on SQLite: all match
        return cls(query.strip()[:MAX_SEARCH], raw, opted if opted in OPT_OUT_CHOICES else "")

    def conditions(self, session: Session, value_tiers: tuple[str, ...], tz: ZoneInfo, tiers_joined: bool = False
                   ) -> list[ColumnElement[bool]]:
        """WHERE conditions on ``customers``; raises AudienceError (a ValueError) naming a bad value.
        ``tiers_joined``: for a query that joins ``customer_tiers`` (``list_page``), see ``Audience.conditions``."""
        where = Audience.parse(dict(self.audience or {}), value_tiers).conditions(session, tz, tiers_joined)
        if self.search:
            where.append(_matches(self.search))
        if self.opted_out:
            where.append(Customer.opted_out.is_(self.opted_out == "yes"))
        return where


PREDICTION_NUMBERS = ("p_alive_below", "predicted_value_above", "expected_purchases_above")
# Every request argument CustomerFilter.from_args reads for the audience: the builder's live count
# sends these (the page renders them into the form, so the two cannot drift apart).
AUDIENCE_ARGS = (*LIST_KEYS, "tag", "owner", "has_ordered", *PREDICTION_NUMBERS, "next_order_before", "channel")


def _number(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def _matches(text: str) -> ColumnElement[bool]:
    """Name contains the text, the external id is it, or a live tag (or an alias of one) is named it."""
    like = contains_pattern(text)
    tag_ids = select(Tag.id).join(TagGroup, TagGroup.id == Tag.group_id).where(Tag.name == text)
    alias_ids = select(TagAlias.tag_id).where(TagAlias.alias == text)
    tagged = exists().where(CustomerTag.customer_id == Customer.id, CustomerTag.removed_at.is_(None),
                            or_(CustomerTag.tag_id.in_(tag_ids), CustomerTag.tag_id.in_(alias_ids)))
    return or_(Customer.name.like(like, escape="\\"), Customer.external_userid == text, tagged)


def channel_choices(session: Session) -> list[str]:
    """The channel codes customers were added through (distinct over the follows' State index)."""
    return [state for state in session.scalars(select(Follow.state).where(Follow.state.is_not(None), Follow.state != "")
                                               .distinct().order_by(Follow.state).limit(500))]


@dataclass
class Page:
    customers: list[Customer]
    next_after: int | None


def list_page(session: Session, where: list[ColumnElement[bool]], after: int = 0, size: int = PAGE_SIZE) -> Page:
    """One page in id order starting after ``after`` (keyset: a deep page costs what the first does).
    The tiers are joined, so that tier filters (``conditions(tiers_joined=True)``) are tested customer by
    customer as the page is walked in id order, which stops at the page's end (1M customers, two tiers
    and a segment: 65 ms → 1 ms; a filter no one matches walks them all, ~0.2 s)."""
    # The join also fills each customer's tiers (instead of a second, eager join), and it names the
    # page's start on the tier side too: PostgreSQL would otherwise merge-join from the first tier row.
    joined = and_(CustomerTier.customer_id == Customer.id, CustomerTier.customer_id > after)
    rows = list(session.scalars(select(Customer).outerjoin(CustomerTier, joined).options(contains_eager(Customer.tier))
                                .where(Customer.id > after, *where).order_by(Customer.id).limit(size + 1)))
    more = len(rows) > size
    rows = rows[:size]
    return Page(rows, rows[-1].id if more and rows else None)


def csv_chunks(session: Session, where: list[ColumnElement[bool]], tz: ZoneInfo) -> Iterator[str]:
    """The filtered customers as formula-safe CSV, one chunk per page of the export (times local to ``tz``)."""
    buffer = StringIO()
    writer = SafeCsvWriter(buffer)
    writer.writerow(COLUMNS)
    for rows in customer_pages(session, where, tz=tz):
        writer.writerows(rows)
        yield _drain(buffer)
    yield _drain(buffer)


def _drain(buffer: StringIO) -> str:
    text = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    return text


@dataclass
class CustomerRecord:
    customer: Customer
    aggregate: CustomerAggregate | None
    why: list[str]
    tags: list[tuple[str, str]]
    changes: list[TierChange]
    orders: list[Order]
    interactions: list[Interaction]
    prediction: PredictionView | None = None


WHY_LABELS = {"rfm_segment": "RFM 分群", "value_tier": "价值分层", "stage": "阶段", "engagement": "活跃状态",
              "activity": "互动活跃度"}  # the R, F and M lines name themselves


def why_lines(session: Session, customer: Customer, policy: TierPolicy, as_of: date, tz: ZoneInfo) -> list[str]:
    """The reasons ``scrm customer show`` gives, in Chinese (as the sidebar shows them), compared with the
    population the last re-tier used."""
    why = explanation(session, customer, policy, as_of, tz, stats=stored_stats(session), tier_names=TIER_NAMES).why_zh
    return [f"截至 {as_of.isoformat()}"] + [f"{WHY_LABELS[key]}：{line}" if key in WHY_LABELS else line
                                           for key, line in why.items()]


def customer_record(session: Session, customer_id: int, policy: TierPolicy, as_of: date, tz: ZoneInfo
                    ) -> CustomerRecord | None:
    customer = session.get(Customer, customer_id)
    if customer is None:
        return None
    tags = [(group, name) for group, name in session.execute(
        select(TagGroup.name, Tag.name).join(Tag, Tag.group_id == TagGroup.id)
        .join(CustomerTag, CustomerTag.tag_id == Tag.id)
        .where(CustomerTag.customer_id == customer_id, CustomerTag.removed_at.is_(None))
        .order_by(TagGroup.name, Tag.name))]
    changes = list(session.scalars(select(TierChange).where(TierChange.customer_id == customer_id)
                                   .order_by(TierChange.id.desc()).limit(HISTORY_LIMIT)))
    orders = list(session.scalars(select(Order).where(Order.customer_id == customer_id)
                                  .order_by(Order.paid_at.desc()).limit(HISTORY_LIMIT)))
    interactions = list(session.scalars(select(Interaction).where(Interaction.customer_id == customer_id)
                                        .order_by(Interaction.occurred_at.desc()).limit(HISTORY_LIMIT)))
    return CustomerRecord(customer, session.get(CustomerAggregate, customer_id),
                          why_lines(session, customer, policy, as_of, tz), tags, changes, orders, interactions,
                          prediction_view(session, customer_id))
