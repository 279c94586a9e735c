"""What happened and what we said: inbox events, interactions, tier changes, outbox messages."""

from datetime import date, datetime
from typing import Any

from sqlalchemy import JSON, Date, ForeignKey, Index, SmallInteger, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from bot.models.base import Base, utcnow

INBOX_STATUSES = ("pending", "processing", "handled", "unhandled", "failed", "dead")


class InboxEvent(Base):
    """One decrypted WeCom callback, stored before the webhook answers 200."""

    __tablename__ = "inbox_events"
    __table_args__ = (Index("ix_inbox_events_status_next_attempt_at", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    dedupe_key: Mapped[str] = mapped_column(String(160), unique=True)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    msg_type: Mapped[str] = mapped_column(String(32))
    event: Mapped[str | None] = mapped_column(String(64))
    change_type: Mapped[str | None] = mapped_column(String(64))
    msg_id: Mapped[str | None] = mapped_column(String(64))
    payload: Mapped[str] = mapped_column(Text)  # the decrypted XML, as received
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime | None]
    locked_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    handled_at: Mapped[datetime | None]
    duplicates: Mapped[int] = mapped_column(default=0)

    @property
    def kind(self) -> str:
        return "/".join(part for part in (self.msg_type, self.event, self.change_type) if part)

    def __repr__(self) -> str:
        return f"<InboxEvent {self.id} {self.kind} {self.status}>"


class Interaction(Base):
    """A customer action that feeds activity (kf message, moment like, coupon redeemed…).
    ``source_ref`` makes an interaction recordable once (e.g. moment id + customer)."""

    __tablename__ = "interactions"
    __table_args__ = (
        Index("ix_interactions_customer_id_occurred_at", "customer_id", "occurred_at"),
        Index("ix_interactions_occurred_at", "occurred_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    occurred_at: Mapped[datetime]
    source_ref: Mapped[str | None] = mapped_column(String(200), unique=True)
    staff_userid: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class TierChange(Base):
    """One change of one tier dimension for one customer, with before/after and why."""

    __tablename__ = "tier_changes"
    __table_args__ = (
        Index("ix_tier_changes_customer_id_created_at", "customer_id", "created_at"),
        Index("ix_tier_changes_dimension_to_value_as_of", "dimension", "to_value", "as_of"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"))
    dimension: Mapped[str] = mapped_column(String(32))
    from_value: Mapped[str | None] = mapped_column(String(32))
    to_value: Mapped[str | None] = mapped_column(String(32))
    as_of: Mapped[date] = mapped_column(Date)
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class OutboxMessage(Base):
    """Every outbound message is a row here before it is sent; ``dedupe_key`` (trigger,
    customer, channel) makes a second send of the same message impossible."""

    __tablename__ = "outbox_messages"
    __table_args__ = (
        Index("ix_outbox_messages_status_scheduled_at", "status", "scheduled_at"),
        Index("ix_outbox_messages_customer_id_created_at", "customer_id", "created_at"),
        Index("ix_outbox_messages_trigger_ref_status", "trigger_ref", "status"),
        # The pace of app messages per member (WeCom drops beyond 30 a minute / 1,000 an hour).
        Index("ix_outbox_messages_app_message_recipient_sent_at", "recipient", "sent_at",
              sqlite_where=text("channel = 'app_message'"), postgresql_where=text("channel = 'app_message'")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    dedupe_key: Mapped[str] = mapped_column(String(200), unique=True)
    channel: Mapped[str] = mapped_column(String(32))  # kf, welcome, mass_message, moment, app_message
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id", ondelete="SET NULL"))
    recipient: Mapped[str] = mapped_column(String(128))
    sender_userid: Mapped[str | None] = mapped_column(String(64))
    trigger_kind: Mapped[str] = mapped_column(String(32))
    trigger_ref: Mapped[str] = mapped_column(String(128))
    content: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    reason: Mapped[str | None] = mapped_column(Text)
    wecom_msgid: Mapped[str | None] = mapped_column(String(128))
    attempts: Mapped[int] = mapped_column(SmallInteger, default=0)
    scheduled_at: Mapped[datetime] = mapped_column(default=utcnow)
    # A hard deadline from WeCom (welcome codes live 20 s): not sent after it, skipped with a reason.
    expires_at: Mapped[datetime | None]
    sent_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class SyncCursor(Base):
    """Where a paged pull from WeCom stopped (``kf:<open_kfid>``, …), saved after every page so a
    crash neither re-reads nor skips."""

    __tablename__ = "sync_cursors"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    cursor: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class KfConversation(Base):
    """One WeChat user talking to one 微信客服 account: the 48-hour / 5-message send window is
    counted from ``last_customer_message_at``."""

    __tablename__ = "kf_conversations"
    __table_args__ = (UniqueConstraint("open_kfid", "external_userid"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    open_kfid: Mapped[str] = mapped_column(String(64))
    external_userid: Mapped[str] = mapped_column(String(128))
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id", ondelete="SET NULL"), index=True)
    last_customer_message_at: Mapped[datetime | None]
    sent_since_customer_message: Mapped[int] = mapped_column(default=0)
    last_servicer_message_at: Mapped[datetime | None]
    # Handed to the waiting pool or taken by a servicer (kf service_state 2/3): the API may not send.
    with_people_since: Mapped[datetime | None]
    last_reply_at: Mapped[datetime | None]
