"""客户群: customer groups as WeCom has them, their members (linked to customers where known), and
broadcasts whose audience is groups."""

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, SmallInteger, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from bot.models.base import Base, utcnow

GROUP_STATUSES = {0: "跟进人正常", 1: "跟进人离职", 2: "离职继承中", 3: "离职继承完成"}
MEMBER_STAFF, MEMBER_EXTERNAL = 1, 2


class CustomerGroup(Base):
    """One customer group chat (客户群). ``member_version`` is WeCom's version of the member list the
    rows below reflect: a callback whose LastMemVer differs from it means one was missed, and the
    group is fetched again whole."""

    __tablename__ = "customer_groups"
    __table_args__ = (Index("ix_customer_groups_owner_userid", "owner_userid"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    chat_id: Mapped[str] = mapped_column(String(128), unique=True)
    name: Mapped[str] = mapped_column(default="")
    owner_userid: Mapped[str] = mapped_column(String(64), default="")
    notice: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[int] = mapped_column(SmallInteger, default=0)  # groupchat/list status (GROUP_STATUSES)
    wecom_created_at: Mapped[datetime | None]
    member_version: Mapped[str] = mapped_column(String(64), default="")
    # The value tier or RFM segment whose group this is (set by an operator); NULL = an ordinary group.
    tier: Mapped[str | None] = mapped_column(String(32))
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)  # operators' own labels for the group
    welcome_template_id: Mapped[str | None] = mapped_column(String(128))
    welcome_text: Mapped[str | None] = mapped_column(Text)
    join_config_id: Mapped[str | None] = mapped_column(String(128))
    join_state: Mapped[str | None] = mapped_column(String(30))
    join_qr_code: Mapped[str | None] = mapped_column(Text)
    dismissed_at: Mapped[datetime | None]
    synced_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    members: Mapped[list["GroupMember"]] = relationship(back_populates="group", cascade="all, delete-orphan",
                                                      passive_deletes=True)

    def __repr__(self) -> str:
        return f"<CustomerGroup {self.chat_id}>"


class GroupMember(Base):
    """A member of a group: a staff member (type 1) or an external contact (type 2), linked to the
    customer when the external contact is one. Leaving keeps the row (``left_at``) for history."""

    __tablename__ = "group_members"
    __table_args__ = (
        UniqueConstraint("group_id", "member_id"),
        Index("ix_group_members_customer_id", "customer_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("customer_groups.id", ondelete="CASCADE"))
    member_id: Mapped[str] = mapped_column(String(128))  # userid or external_userid
    member_type: Mapped[int] = mapped_column(SmallInteger, default=MEMBER_EXTERNAL)
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id", ondelete="SET NULL"))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    name: Mapped[str] = mapped_column(default="")
    group_nickname: Mapped[str] = mapped_column(default="")
    join_time: Mapped[datetime | None]
    join_scene: Mapped[int | None] = mapped_column(SmallInteger)  # groupchat/get: 1 邀请, 2 邀请链接, 3 扫码
    invitor_userid: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str | None] = mapped_column(String(30))  # the 加入群聊 code's state it joined through
    left_at: Mapped[datetime | None]
    quit_scene: Mapped[int | None] = mapped_column(SmallInteger)  # callback: 0 自己退群, 1 被移出

    group: Mapped[CustomerGroup] = relationship(back_populates="members")

    def __repr__(self) -> str:
        return f"<GroupMember {self.member_id} of group {self.group_id}>"


class GroupBroadcast(Base):
    """A broadcast to groups: a filter over groups, one text per group tier key (the group's tier,
    else the dominant tier of its members) with a default, sent through each group's owner."""

    __tablename__ = "group_broadcasts"
    __table_args__ = (Index("ix_group_broadcasts_status_next_run_at", "status", "next_run_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    audience: Mapped[dict[str, Any]] = mapped_column(JSON)
    templates: Mapped[dict[str, str]] = mapped_column(JSON)
    send_at: Mapped[datetime | None]
    cron: Mapped[str | None] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16), default="scheduled")
    next_run_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class GroupBroadcastRun(Base):
    """One planned send of a group broadcast: its groups split into to-send and skipped (with why)."""

    __tablename__ = "group_broadcast_runs"
    __table_args__ = (UniqueConstraint("broadcast_id", "run_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    broadcast_id: Mapped[int] = mapped_column(ForeignKey("group_broadcasts.id", ondelete="CASCADE"))
    run_at: Mapped[datetime]
    send_after: Mapped[datetime]
    audience: Mapped[int] = mapped_column(default=0)
    to_send: Mapped[int] = mapped_column(default=0)
    skipped: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class GroupSop(Base):
    """群 SOP: timed steps sent to each matching group, counted in days from the group's creation in
    WeCom. ``steps`` = [{"day": N, "template": "group_sop/<name>"}]; each step reaches a group once."""

    __tablename__ = "group_sops"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    audience: Mapped[dict[str, Any]] = mapped_column(JSON)
    steps: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="active")  # active | cancelled
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
