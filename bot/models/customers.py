"""Staff, customers, the follow relation between them, and per-customer order aggregates."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import Boolean, Date, ForeignKey, Index, SmallInteger, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from bot.models.base import Base, ByteOrderString, utcnow


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


class Customer(Base):
    """An external contact (客户), with the tier fields the re-tier job maintains."""

    __tablename__ = "customers"
    __table_args__ = (
        Index("ix_customers_value_tier_rfm_segment", "value_tier", "rfm_segment"),
        Index("ix_customers_rfm_segment", "rfm_segment"),
        Index("ix_customers_stage", "stage"),
        Index("ix_customers_activity", "activity"),
        Index("ix_customers_owner_userid", "owner_userid"),
        # PostgreSQL: room on each page for in-place (HOT) updates of re-tiered rows (migration 0006).
        {"postgresql_with": {"fillfactor": 70}},
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
    # Tier fields (segments/ writes these; NULL = not computed yet or not applicable).
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
    tiered_at: Mapped[datetime | None]
    last_interaction_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    follows: Mapped[list[Follow]] = relationship(back_populates="customer")

    def __repr__(self) -> str:
        return f"<Customer {self.external_userid}>"


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
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    def __repr__(self) -> str:
        return f"<CustomerAggregate customer={self.customer_id} orders={self.order_count}>"
