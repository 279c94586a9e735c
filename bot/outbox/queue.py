"""Putting messages in the outbox: one row per message, unique per (trigger, customer, channel)."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.models import OutboxMessage, utcnow


def enqueue(
    session: Session,
    *,
    channel: str,
    dedupe_key: str,
    recipient: str,
    trigger_kind: str,
    trigger_ref: str,
    content: dict[str, Any],
    customer_id: int | None = None,
    sender_userid: str | None = None,
    expires_at: datetime | None = None,
    status: str = "pending",
    reason: str | None = None,
) -> OutboxMessage | None:
    """Add a message; None if one with this key exists already (the same trigger never sends twice)."""
    key = dedupe_key if len(dedupe_key) <= 200 else hashlib.sha256(dedupe_key.encode()).hexdigest()
    if session.scalar(select(OutboxMessage.id).where(OutboxMessage.dedupe_key == key)) is not None:
        return None
    row = OutboxMessage(dedupe_key=key, channel=channel, customer_id=customer_id, recipient=recipient,
                        sender_userid=sender_userid, trigger_kind=trigger_kind, trigger_ref=trigger_ref[:128],
                        content=content, status=status, reason=reason, expires_at=expires_at, scheduled_at=utcnow())
    session.add(row)
    session.flush()
    return row


def kf_msgid(dedupe_key: str) -> str:
    """A kf ``msgid`` derived from the outbox key: ≤32 bytes of [0-9a-zA-Z_-], the same on every
    attempt, so WeCom refuses a second send of the same message."""
    return "scrm_" + hashlib.sha256(dedupe_key.encode()).hexdigest()[:27]
