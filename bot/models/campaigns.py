"""What operators and rules push on their own initiative: broadcasts and their runs, coupons,
and the reminders sent for mass messages members have not confirmed yet."""

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, SmallInteger, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from bot.models.base import Base, utcnow

BROADCAST_STATUSES = ("scheduled", "done", "cancelled", "failed")
# withdrawn: the message that carried it did not go out, so no customer holds the code.
COUPON_STATUSES = ("issued", "redeemed", "expired", "withdrawn")


class Broadcast(Base):
    """A tiered broadcast: audience (a structured filter), one template per tier with a default,
    and a schedule (once at ``send_at`` or on a ``cron`` expression in local time)."""

    __tablename__ = "broadcasts"
    __table_args__ = (Index("ix_broadcasts_status_next_run_at", "status", "next_run_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    audience: Mapped[dict[str, Any]] = mapped_column(JSON)
    templates: Mapped[dict[str, str]] = mapped_column(JSON)  # tier key or "default" → Jinja2 source
    send_at: Mapped[datetime | None]
    cron: Mapped[str | None] = mapped_column(String(100))
    holdout_percent: Mapped[int] = mapped_column(SmallInteger, default=10)
    coupon: Mapped[str | None] = mapped_column(String(64))  # a [coupons] definition code, issued to each recipient
    status: Mapped[str] = mapped_column(String(16), default="scheduled")
    next_run_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class BroadcastRun(Base):
    """One planned send of a broadcast: its audience split into sent, held out and skipped."""

    __tablename__ = "broadcast_runs"
    __table_args__ = (UniqueConstraint("broadcast_id", "run_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    broadcast_id: Mapped[int] = mapped_column(ForeignKey("broadcasts.id", ondelete="CASCADE"))
    run_at: Mapped[datetime]
    send_after: Mapped[datetime]  # run_at moved past quiet hours
    audience: Mapped[int] = mapped_column(default=0)
    to_send: Mapped[int] = mapped_column(default=0)
    held_out: Mapped[int] = mapped_column(default=0)
    skipped: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Coupon(Base):
    """One coupon issued to one customer: an unguessable code, redeemable once before it expires.
    The definition's terms are copied in, so editing the config never changes an issued coupon."""

    __tablename__ = "coupons"
    __table_args__ = (
        UniqueConstraint("definition", "customer_id", "issue_ref"),
        Index("ix_coupons_customer_id_status", "customer_id", "status"),
        Index("ix_coupons_status_expires_at", "status", "expires_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    definition: Mapped[str] = mapped_column(String(64))
    title: Mapped[str] = mapped_column(String(100), default="")
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"))
    issue_ref: Mapped[str] = mapped_column(String(128))  # why it was issued: order:X, broadcast:N, birthday:2026…
    value_fen: Mapped[int] = mapped_column(default=0)
    percent_off: Mapped[int] = mapped_column(SmallInteger, default=0)
    min_spend_fen: Mapped[int] = mapped_column(default=0)
    status: Mapped[str] = mapped_column(String(16), default="issued")
    issued_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    redeemed_at: Mapped[datetime | None]
    order_id: Mapped[str | None] = mapped_column(String(128))  # the order it was used on (revenue attribution)
    redeem_note: Mapped[str | None] = mapped_column(Text)


class MassReminder(Base):
    """A remind_groupmsg_send call: WeCom allows three per mass message per 24 hours."""

    __tablename__ = "mass_reminders"
    __table_args__ = (Index("ix_mass_reminders_msgid_reminded_at", "msgid", "reminded_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    msgid: Mapped[str] = mapped_column(String(128))
    reminded_at: Mapped[datetime] = mapped_column(default=utcnow)
