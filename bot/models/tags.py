"""One tag system (seed 003): mirrored corp tag groups and tags, local aliases, customer tags."""

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from bot.models.base import Base, utcnow

TAG_SOURCES = ("wecom", "staff", "rule")


class TagGroup(Base):
    __tablename__ = "tag_groups"

    id: Mapped[int] = mapped_column(primary_key=True)
    wecom_group_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    order: Mapped[int] = mapped_column(default=0)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    tags: Mapped[list["Tag"]] = relationship(back_populates="group")

    def __repr__(self) -> str:
        return f"<TagGroup {self.name}>"


class Tag(Base):
    __tablename__ = "tags"
    __table_args__ = (UniqueConstraint("group_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    wecom_tag_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("tag_groups.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    order: Mapped[int] = mapped_column(default=0)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    group: Mapped[TagGroup] = relationship(back_populates="tags")

    def __repr__(self) -> str:
        return f"<Tag {self.name}>"


class TagAlias(Base):
    """A synonym folded onto a canonical tag ("客户已下单" → "客户首单")."""

    __tablename__ = "tag_aliases"

    id: Mapped[int] = mapped_column(primary_key=True)
    alias: Mapped[str] = mapped_column(String(64), unique=True)
    tag_id: Mapped[int] = mapped_column(ForeignKey("tags.id", ondelete="CASCADE"), index=True)


class CustomerTag(Base):
    """A tag on a customer, with where it came from. Removal keeps the row (history)."""

    __tablename__ = "customer_tags"
    __table_args__ = (
        UniqueConstraint("customer_id", "tag_id"),
        # Audience selection by tag: tag first, live rows only.
        Index("ix_customer_tags_tag_id_removed_at_customer_id", "tag_id", "removed_at", "customer_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"))
    tag_id: Mapped[int] = mapped_column(ForeignKey("tags.id", ondelete="CASCADE"))
    source: Mapped[str] = mapped_column(String(16))  # one of TAG_SOURCES
    rule: Mapped[str | None] = mapped_column(String(64))
    added_by: Mapped[str | None] = mapped_column(String(64))
    added_at: Mapped[datetime] = mapped_column(default=utcnow)
    removed_at: Mapped[datetime | None]
    removed_by: Mapped[str | None] = mapped_column(String(64))
    # What WeCom still has to be told: "add", "remove", or None when WeCom agrees with this row.
    push_state: Mapped[str | None] = mapped_column(String(16), index=True)
    push_error: Mapped[str | None] = mapped_column(Text)
