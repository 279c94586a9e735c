"""The operator console's own tables: operator accounts, failed sign-ins (throttling) and the audit log."""

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from bot.models.base import Base, utcnow

OPERATOR_ROLES = ("admin", "operator", "viewer")


class Operator(Base):
    """A person who signs in to the console; only a password hash is stored."""

    __tablename__ = "operators"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))  # one of OPERATOR_ROLES
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # Bumped on every disable: part of the console's session mark, so re-enabling ends old sessions too.
    session_epoch: Mapped[int] = mapped_column(default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_login_at: Mapped[datetime | None]

    def __repr__(self) -> str:
        return f"<Operator {self.name} {self.role}>"


class LoginFailure(Base):
    """One failed sign-in for a name from an address: counted over a window to throttle guessing."""

    __tablename__ = "login_failures"
    __table_args__ = (Index("ix_login_failures_name_ip_at", "name", "ip", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    ip: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditEntry(Base):
    """Who changed what, when, with the state before and after (JSON, no secrets)."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_at", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(128), default="")
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    ip: Mapped[str | None] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(default=utcnow)


class RuleOverride(Base):
    """An operator's edit of one rule list made in the console (``tags.rules``, ``kf.reply_rules`` or
    ``contacts.channels``): it replaces the config file's value, which stays the default seed.
    ``revision`` grows with every save, so a running process sees cheaply that it must reload."""

    __tablename__ = "rule_overrides"

    key: Mapped[str] = mapped_column(String(40), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON)
    revision: Mapped[int] = mapped_column(Integer, default=1)
    updated_by: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    def __repr__(self) -> str:
        return f"<RuleOverride {self.key} r{self.revision}>"


class ConsoleFigures(Base):
    """The dashboard's tier figures as last computed (one row): they take a scan of the whole tier
    table (1–9 s at 1M customers on SQLite), so a restarted or second web process shows these at once
    instead of scanning again, and recomputes them in the background when they are outdated."""

    __tablename__ = "console_figures"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(100))  # what they were computed from (latest tier run, change, customer)
    computed_at: Mapped[datetime]
    figures: Mapped[dict[str, Any]] = mapped_column(JSON)


class SchedulerLease(Base):
    """Without Redis, who runs the scheduler: one row per lease, taken by a process when it is free or
    expired and renewed by its holder, so a second `scrm scheduler` (or `scrm serve`) stands by."""

    __tablename__ = "scheduler_leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime]
