"""节假日问候: on a holiday, every customer who has not opted out gets the holiday's template for
their tier as a mass message from their owner. One outbox row per customer and holiday (a second
run the same day adds nothing); the contact policy decides who is skipped and when it may go."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from bot.campaigns.holidays import holidays_on
from bot.core.config import Settings
from bot.models import Customer, CustomerTier, Follow, OutboxMessage, Staff
from bot.outbox.messages import TIER_NAMES, MessageTemplates
from bot.outbox.policy import ContactPolicy
from bot.outbox.queue import fit_text
from segments.rfm import SEGMENT_NAMES


@dataclass
class GreetingPlan:
    holidays: list[str] = field(default_factory=list)
    planned: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    deferred_to: datetime | None = None


def plan_holiday_greetings(session: Session, settings: Settings, templates: MessageTemplates,
                           now: datetime) -> GreetingPlan:
    day = now.astimezone(settings.tz).date()
    plan = GreetingPlan()
    policy = ContactPolicy.from_settings(settings)
    send_at = policy.next_allowed(now)
    plan.deferred_to = send_at if send_at != now else None
    for holiday in holidays_on(day, settings.greetings.holidays):
        plan.holidays.append(holiday.name)
        audience = session.execute(_audience()).all()
        blocked = policy.blocked(session, [row.id for row in audience], "mass_message", send_at)
        texts: dict[tuple[str | None, str | None], Any] = {}
        existing = set(session.scalars(select(OutboxMessage.customer_id).where(
            OutboxMessage.trigger_kind == "greeting", OutboxMessage.trigger_ref == f"{holiday.code}:{day.year}")))
        for row in audience:
            if row.id in existing:
                continue
            key = (row.rfm_segment, row.value_tier)
            if key not in texts:
                texts[key] = templates.render(
                    "holiday", holiday.code, [row.rfm_segment, row.value_tier], holiday=holiday.name,
                    brand=settings.app.brand_name, tier_name=TIER_NAMES.get(row.value_tier or "", ""),
                    segment_name=SEGMENT_NAMES.get(row.rfm_segment or "", ""))
            rendered = texts[key]
            reason = blocked.get(row.id)
            session.add(OutboxMessage(
                dedupe_key=f"greeting:{holiday.code}:{day.isoformat()}:{row.id}", channel="mass_message",
                customer_id=row.id, recipient=row.external_userid, sender_userid=row.owner_userid,
                trigger_kind="greeting", trigger_ref=f"{holiday.code}:{day.year}",
                content={"text": fit_text("mass_message", rendered.text, rendered.template),
                         "template": rendered.template},
                status="skipped" if reason else "pending", reason=reason, scheduled_at=send_at))
            if reason:
                plan.skipped[reason] += 1
            else:
                plan.planned += 1
    session.flush()
    return plan


def _audience() -> Any:
    """Customers with an owner who still follows them (a mass message goes out from that member)."""
    live = exists().where(Follow.customer_id == Customer.id, Follow.ended_at.is_(None), Follow.staff_id == Staff.id,
                          Staff.userid == Customer.owner_userid)
    return (select(Customer.id, Customer.external_userid, Customer.owner_userid, CustomerTier.value_tier,
                   CustomerTier.rfm_segment)
            .select_from(Customer).outerjoin(CustomerTier, CustomerTier.customer_id == Customer.id)
            .where(Customer.owner_userid.is_not(None), live).order_by(Customer.id))
