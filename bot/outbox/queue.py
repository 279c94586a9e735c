"""Putting messages in the outbox: one row per message, unique per (trigger, customer, channel)."""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from bot.models import Coupon, OutboxMessage, utcnow

logger = logging.getLogger(__name__)

# WeCom's limit on a text message's bytes (UTF-8) per channel: kf/send_msg and send_msg_on_event 2048,
# message/send (app message) 2048, send_welcome_msg and add_msg_template (single or group chat) 4000.
TEXT_LIMITS = {"kf": 2048, "kf_event": 2048, "app_message": 2048, "welcome": 4000, "mass_message": 4000,
               "group_message": 4000}
ELLIPSIS = "…"


def fit_text(channel: str, text: str, template: str = "") -> str:
    """``text`` within the channel's byte limit: over it, WeCom refuses the whole message (a welcome's
    20 s would pass meanwhile), so the end is cut at a character boundary and marked with an ellipsis,
    and the cut is logged. Operators' templates and the customer's own words (a reply may quote them)
    can both run long."""
    limit = TEXT_LIMITS.get(channel)
    data = text.encode("utf-8")
    if limit is None or len(data) <= limit:
        return text
    kept = data[:limit - len(ELLIPSIS.encode("utf-8"))].decode("utf-8", errors="ignore")
    logger.warning("%s text%s is %d bytes, over WeCom's %d: sent shortened", channel,
                   f" of {template}" if template else "", len(data), limit)
    return kept + ELLIPSIS


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
    scheduled_at: datetime | None = None,
) -> OutboxMessage | None:
    """Add a message; None if one with this key exists already (the same trigger never sends twice).
    ``scheduled_at``: not before then (default: now)."""
    key = dedupe_key if len(dedupe_key) <= 200 else hashlib.sha256(dedupe_key.encode()).hexdigest()
    if session.scalar(select(OutboxMessage.id).where(OutboxMessage.dedupe_key == key)) is not None:
        return None
    if isinstance(content.get("text"), str):
        content = {**content, "text": fit_text(channel, content["text"], str(content.get("template") or ""))}
    row = OutboxMessage(dedupe_key=key, channel=channel, customer_id=customer_id, recipient=recipient,
                        sender_userid=sender_userid, trigger_kind=trigger_kind, trigger_ref=trigger_ref[:128],
                        content=content, status=status, reason=reason, expires_at=expires_at,
                        scheduled_at=scheduled_at or utcnow())
    session.add(row)
    session.flush()
    return row


def kf_msgid(dedupe_key: str) -> str:
    """A kf ``msgid`` derived from the outbox key: ≤32 bytes of [0-9a-zA-Z_-], the same on every
    attempt, so WeCom refuses a second send of the same message."""
    return "scrm_" + hashlib.sha256(dedupe_key.encode()).hexdigest()[:27]


def withdraw_carried_coupons(session: Session, *where: Any) -> int:
    """Coupons carried by the outbox rows ``where`` selects (their content names the code) that are still
    unused become ``withdrawn``: the message that told the customer about them did not go out (skipped
    after planning, refused by WeCom, not delivered), so nobody holds the code; the row keeps the reason.
    One statement; returns how many."""
    carried = select(OutboxMessage.content["coupon"].as_string()).where(*where)
    withdrawn = session.execute(update(Coupon).where(Coupon.status == "issued", Coupon.code.in_(carried))
                                .values(status="withdrawn")
                                .execution_options(synchronize_session=False)).rowcount or 0
    if withdrawn:
        logger.info("%d coupon(s) withdrawn: the messages carrying them did not go out", withdrawn)
    return withdrawn
