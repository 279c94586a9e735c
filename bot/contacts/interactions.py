"""Recording what customers do (kf messages, moment likes, adds…): once per ``source_ref``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.models import Customer, Interaction


def add_interaction(session: Session, customer: Customer, kind: str, source_ref: str, occurred: datetime,
                    staff_userid: str | None = None, detail: dict[str, Any] | None = None,
                    touch: bool = True) -> bool:
    """True if recorded now, False if this ``source_ref`` was recorded before. ``touch`` moves the
    customer's last-interaction time (a churn signal must not look like engagement)."""
    if session.scalar(select(Interaction.id).where(Interaction.source_ref == source_ref)) is not None:
        return False
    session.add(Interaction(customer_id=customer.id, kind=kind, occurred_at=occurred, source_ref=source_ref,
                            staff_userid=staff_userid, detail=detail or {}))
    if touch and (customer.last_interaction_at is None or customer.last_interaction_at < occurred):
        customer.last_interaction_at = occurred
    session.flush()
    return True
