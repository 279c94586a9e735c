"""Staff, customers, the follow relation between them, and per-customer order aggregates."""

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Date,
    ForeignKey,
    Index,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    false,
    select,
    text,
)
from sqlalchemy.ext.hybrid import hybrid_property
from sqlalchemy.orm import Mapped, mapped_column, relationship
from sqlalchemy.sql.elements import ColumnElement

from bot.models.base import Base, ByteOrderString, utcnow

ADD_WAY_ASSIGNED = 202  # 管理员/负责人分配: the follow a hand-over gives the takeover member


class Staff(Base):
    """A WeCom member (员工 / 跟进人)."""

    __tablename__ = "staff"

    id: Mapped[int] = mapped_column(primary_key=True)
    userid: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(default="")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    def __repr__(self) -> str:
        return f"<Staff {self.userid}>"


def _tier_field(name: str) -> Any:
    """Customer.<name>: the customer's CustomerTier.<name> (None without a row); setting it creates the row."""

    def get(self: "Customer") -> Any:
        return getattr(self.tier, name) if self.tier is not None else None

    def set_(self: "Customer", value: Any) -> None:
        if self.tier is None:
            self.tier = CustomerTier()
        setattr(self.tier, name, value)

    def expression(cls: "type[Customer]") -> Any:
        column = getattr(CustomerTier, name)
        return select(column).where(CustomerTier.customer_id == cls.id).scalar_subquery().label(name)

    return hybrid_property(get, set_, expr=expression)


class Customer(Base):
    """An external contact (客户); its tiers are in CustomerTier (``customer.tier``)."""

    __tablename__ = "customers"
    __table_args__ = (
        Index("ix_customers_owner_userid", "owner_userid"),
        # The few customers a push may skip, found without reading everyone (a broadcast preview).
        Index("ix_customers_opted_out", "id", sqlite_where=text("opted_out = 1"), postgresql_where=text("opted_out")),
        Index("ix_customers_no_owner_follow", "id", sqlite_where=text("owner_follows = 0"),
              postgresql_where=text("NOT owner_follows")),
        {"postgresql_with": {"fillfactor": 70}},  # migration 0006 (tiers were kept here then)
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    external_userid: Mapped[str] = mapped_column(ByteOrderString(128), unique=True)
    name: Mapped[str] = mapped_column(default="")
    contact_type: Mapped[int] = mapped_column(SmallInteger, default=1)  # 1 WeChat user, 2 WeCom user
    gender: Mapped[int] = mapped_column(SmallInteger, default=0)
    unionid: Mapped[str | None] = mapped_column(String(128))
    avatar: Mapped[str | None] = mapped_column(Text)
    corp_name: Mapped[str | None]
    birthday: Mapped[date | None] = mapped_column(Date)
    owner_userid: Mapped[str | None] = mapped_column(String(64))
    opted_out: Mapped[bool] = mapped_column(Boolean, default=False)
    opted_out_at: Mapped[datetime | None]
    # Whether the owner (owner_userid) has a live follow of this customer: the one way a push reaches them.
    # Kept by database triggers (migration 0019) on every write of follows, owners and staff; read-only here.
    owner_follows: Mapped[bool] = mapped_column(Boolean, server_default=false(), nullable=False)
    last_interaction_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    follows: Mapped[list["Follow"]] = relationship(back_populates="customer")
    tier: Mapped["CustomerTier | None"] = relationship(lazy="joined", cascade="all, delete-orphan",
                                                     passive_deletes=True)

    # The tier fields, kept in customer_tiers (see CustomerTier); NULL = not computed or not applicable.
    # In SQL each is a correlated lookup by key; queries over many customers join customer_tiers instead.
    value_tier = _tier_field("value_tier")
    rfm_segment = _tier_field("rfm_segment")
    r_score = _tier_field("r_score")
    f_score = _tier_field("f_score")
    m_score = _tier_field("m_score")
    score = _tier_field("score")
    stage = _tier_field("stage")
    engagement = _tier_field("engagement")
    activity = _tier_field("activity")
    activity_score = _tier_field("activity_score")
    tiered_at = _tier_field("tiered_at")

    def __repr__(self) -> str:
        return f"<Customer {self.external_userid}>"


class CustomerTier(Base):
    """A customer's tiers, written by the re-tier job (segments/retier.py). A table of their own: a
    re-tier that changes most customers writes these narrow rows (a first run inserts them into an
    empty table) instead of rewriting every customer row and its indexes (bench/tier_table.py).
    A customer without a row has no tiers yet.

    No index holds a tier column (migration 0009): both databases scan these narrow rows fast (a count
    per tier over 1M rows 0.14–0.30 s on SQLite, 0.10–0.17 s on PostgreSQL; a rare tier's customers
    0.04 s / 0.08 s), while building four indexes took 1.4 s of a 4.9 s first re-tier on SQLite and
    3.0 s of 10.3 s on PostgreSQL, and keeping them current slowed every re-tier's writes."""

    __tablename__ = "customer_tiers"
    __table_args__ = (
        # PostgreSQL: room on each page for in-place (HOT) updates of re-tiered rows.
        {"postgresql_with": {"fillfactor": 70}},
    )

    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"), primary_key=True)
    value_tier: Mapped[str | None] = mapped_column(String(32))
    rfm_segment: Mapped[str | None] = mapped_column(String(32))
    r_score: Mapped[int | None] = mapped_column(SmallInteger)
    f_score: Mapped[int | None] = mapped_column(SmallInteger)
    m_score: Mapped[int | None] = mapped_column(SmallInteger)
    score: Mapped[int | None] = mapped_column(SmallInteger)
    stage: Mapped[str | None] = mapped_column(String(32))
    engagement: Mapped[str | None] = mapped_column(String(32))
    activity: Mapped[str | None] = mapped_column(String(32))
    activity_score: Mapped[int | None]
    tiered_at: Mapped[datetime | None]  # NULL: only set by hand (a channel's stage), never re-tiered

    def __repr__(self) -> str:
        return f"<CustomerTier customer={self.customer_id} {self.value_tier} {self.rfm_segment}>"


class Follow(Base):
    """Customer ↔ staff: who added whom, when, through which channel (State)."""

    __tablename__ = "follows"
    __table_args__ = (
        UniqueConstraint("customer_id", "staff_id"),
        Index("ix_follows_staff_id_ended_at", "staff_id", "ended_at"),
        Index("ix_follows_state", "state"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"))
    staff_id: Mapped[int] = mapped_column(ForeignKey("staff.id", ondelete="CASCADE"))
    remark: Mapped[str] = mapped_column(default="")
    description: Mapped[str] = mapped_column(Text, default="")
    add_way: Mapped[int | None]
    state: Mapped[str | None] = mapped_column(String(64))
    added_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    ended_reason: Mapped[str | None] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    customer: Mapped[Customer] = relationship(back_populates="follows")
    staff: Mapped[Staff] = relationship()

    @classmethod
    def is_an_add(cls) -> ColumnElement[bool]:
        """The customer added the member (a channel's add), not a hand-over to them: it keeps the channel's
        state, so the customer stays the channel's, but it is counted once, at the first add."""
        return cls.add_way.is_distinct_from(ADD_WAY_ASSIGNED)


class CustomerAggregate(Base):
    """Per-customer order totals, maintained in the same transaction as each order write so
    re-tiering never scans the order table. Money is integer fen."""

    __tablename__ = "customer_aggregates"
    __table_args__ = (
        Index("ix_customer_aggregates_last_order_at", "last_order_at"),
        # Buyers ordered by each RFM input: quintile cut points by offset, and the customers whose value
        # lies between an old and a new mean or cut point (incremental re-tier).
        *(Index(f"ix_customer_aggregates_buyers_{column}", column, sqlite_where=text("order_count > 0"),
                postgresql_where=text("order_count > 0"))
          for column in ("order_count", "paid_amount_fen", "last_order_day")),
    )

    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"), primary_key=True)
    order_count: Mapped[int] = mapped_column(default=0)
    paid_amount_fen: Mapped[int] = mapped_column(default=0)
    refund_count: Mapped[int] = mapped_column(default=0)
    refunded_amount_fen: Mapped[int] = mapped_column(default=0)
    first_order_at: Mapped[datetime | None]
    last_order_at: Mapped[datetime | None]
    first_order_day: Mapped[int | None]
    last_order_day: Mapped[int | None]
    # What BG/NBD and Gamma-Gamma need (segments/predict.py), kept so that their summaries read these
    # rows instead of grouping every paid order by customer and day: distinct local days with a paid
    # order, and the paid money of the first of them. NULL: not known (rows written before migration
    # 0014 without orders to backfill from, or written by hand); the predictions then read the orders.
    paid_days: Mapped[int | None]
    first_day_fen: Mapped[int | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    def __repr__(self) -> str:
        return f"<CustomerAggregate customer={self.customer_id} orders={self.order_count}>"
