"""渠道活码 (channels: a WeCom 「联系我」 contact way with our rules for the customers it brings)
and 在职/离职继承 (customer hand-overs between members, one row per customer moved)."""

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, SmallInteger, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from bot.models.base import Base, ByteOrderString, utcnow

CHANNEL_STATUSES = ("active", "deleted", "missing")
TRANSFER_KINDS = ("onjob", "resigned")
# planned → waiting (WeCom accepted the call; the customer has 24 h to refuse) → one of the settled ones.
TRANSFER_STATUSES = ("planned", "waiting", "succeeded", "refused", "takeover_full", "no_record", "failed")
SETTLED_TRANSFER_STATUSES = ("succeeded", "refused", "takeover_full", "no_record", "failed")
IN_FLIGHT_WHERE = "status IN ('planned', 'waiting')"


class Channel(Base):
    """A channel code: ``state`` is the key WeCom echoes in the add event; ``config_id`` and
    ``qr_code`` come from add_contact_way (NULL for a channel only known from the config)."""

    __tablename__ = "channels"

    id: Mapped[int] = mapped_column(primary_key=True)
    state: Mapped[str] = mapped_column(String(30), unique=True)
    name: Mapped[str] = mapped_column(String(64), default="")
    members: Mapped[list[str]] = mapped_column(JSON, default=list)  # userids receiving the adds
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)  # "组/标签" put on each customer
    stage: Mapped[str | None] = mapped_column(String(32))
    welcome: Mapped[str] = mapped_column(String(64), default="default")  # templates/messages/welcome/<name>
    skip_verify: Mapped[bool] = mapped_column(Boolean, default=True)
    expires_at: Mapped[datetime | None]
    config_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    qr_code: Mapped[str | None] = mapped_column(Text)
    cost_fen: Mapped[int | None]
    source: Mapped[str] = mapped_column(String(16), default="cli")  # cli | config | wecom
    status: Mapped[str] = mapped_column(String(16), default="active")  # CHANNEL_STATUSES
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    def rules(self) -> dict[str, Any]:
        """What the add handler applies: the shape of a ``[contacts] channels`` entry."""
        return {"tags": list(self.tags or []), "stage": self.stage, "welcome": self.welcome or "default"}

    def __repr__(self) -> str:
        return f"<Channel {self.state}>"


class Transfer(Base):
    """One customer handed from one member to another. WeCom's call only starts it (errcode 0);
    the outcome comes later from transfer_result or the transfer_fail callback."""

    __tablename__ = "transfers"
    __table_args__ = (
        Index("ix_transfers_batch", "batch"),
        Index("ix_transfers_external_userid_takeover_userid", "external_userid", "takeover_userid"),
        Index("ix_transfers_status", "status"),
        # A customer in flight is claimed: a second run of the same plan (a double submit) meets this
        # index when it records its rows, before it asks WeCom, rather than being answered 40129.
        Index("uq_transfers_in_flight", "external_userid", "handover_userid", unique=True,
              sqlite_where=text(IN_FLIGHT_WHERE), postgresql_where=text(IN_FLIGHT_WHERE)),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    batch: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(16))  # TRANSFER_KINDS
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id", ondelete="SET NULL"))
    external_userid: Mapped[str] = mapped_column(ByteOrderString(128))
    handover_userid: Mapped[str] = mapped_column(String(64))
    takeover_userid: Mapped[str] = mapped_column(String(64))
    why: Mapped[str] = mapped_column(String(128), default="")
    status: Mapped[str] = mapped_column(String(16), default="planned")  # TRANSFER_STATUSES
    errcode: Mapped[int | None]
    result_status: Mapped[int | None] = mapped_column(SmallInteger)  # transfer_result: 1–5
    fail_reason: Mapped[str | None] = mapped_column(String(64))
    takeover_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    settled_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    def __repr__(self) -> str:
        return f"<Transfer {self.kind} {self.handover_userid}→{self.takeover_userid} {self.status}>"


class GroupTransfer(Base):
    """One group chat of a departed (or leaving) member given to a new owner (groupchat/transfer)."""

    __tablename__ = "group_transfers"
    __table_args__ = (Index("ix_group_transfers_batch", "batch"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    batch: Mapped[str] = mapped_column(String(32))
    chat_id: Mapped[str] = mapped_column(ByteOrderString(128))
    handover_userid: Mapped[str] = mapped_column(String(64))
    takeover_userid: Mapped[str] = mapped_column(String(64))
    # planned | succeeded | failed | unknown (no answer) | already (90508 / 90507: moved or being moved before this run)
    status: Mapped[str] = mapped_column(String(16), default="planned")
    errcode: Mapped[int | None]
    errmsg: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
