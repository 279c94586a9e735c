"""Bookkeeping of the re-tier job: which customers must be looked at again, and what each run used."""

from datetime import date, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Date, String
from sqlalchemy.orm import Mapped, mapped_column

from bot.models.base import Base, utcnow


class TierDirty(Base):
    """A customer whose order aggregates changed since the last re-tier (order writers mark it; the
    re-tier takes the marks it reads). No foreign key: a mark for a deleted customer is harmless."""

    __tablename__ = "tier_dirty"

    customer_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)


class TierRun(Base):
    """One re-tier: its as-of day, the policy it applied (a digest), and the population statistics
    it compared customers with — what the next run needs to recompute only what may have moved."""

    __tablename__ = "tier_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    as_of: Mapped[date] = mapped_column(Date)
    policy_digest: Mapped[str] = mapped_column(String(64))
    full: Mapped[bool]
    stats: Mapped[dict[str, Any]] = mapped_column(JSON)
    max_interaction_id: Mapped[int] = mapped_column(BigInteger)
    recomputed: Mapped[int] = mapped_column(BigInteger)
    started_at: Mapped[datetime]
    seconds: Mapped[float]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
