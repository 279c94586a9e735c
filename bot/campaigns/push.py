"""One push to a handful of customers (a birthday, a tier change, a sequence step, a coupon after an
order): the tier's template rendered per customer, the contact policy applied, and one outbox row
per customer with a key that makes a second push of the same thing impossible. Bulk audiences go
through bot/campaigns/broadcasts.py instead, which does the same in SQL."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from bot.campaigns.coupons import CouponOffer, coupon_vars, issue, unissued_vars
from bot.core.config import Settings
from bot.models import Customer, Follow, OutboxMessage, Staff
from bot.outbox.mass import UNLESS_ORDERED
from bot.outbox.messages import MessageTemplates, customer_vars, tier_keys
from bot.outbox.policy import ContactPolicy
from bot.outbox.queue import fit_text

NO_SENDER = "no member to send from (the owner no longer follows this customer)"


@dataclass
class PushResult:
    planned: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    already: int = 0
    coupons: int = 0
    outbox_ids: list[int] = field(default_factory=list)


def reachable(customer_ids: Sequence[int]) -> Any:
    """Customers (of ``customer_ids``) whose owner still follows them: a mass message can go out."""
    live = exists().where(Follow.customer_id == Customer.id, Follow.ended_at.is_(None), Follow.staff_id == Staff.id,
                          Staff.userid == Customer.owner_userid)
    return select(Customer.id).where(Customer.id.in_(list(customer_ids)), live)


def push(session: Session, settings: Settings, templates: MessageTemplates, customers: Sequence[Customer], *,
         kind: str, name: str, trigger_kind: str, trigger_ref: str, now: datetime,
         extra: Callable[[Customer], dict[str, Any]] | None = None, coupon: CouponOffer | None = None,
         unless_ordered_since: Mapping[int, datetime] | None = None) -> PushResult:
    """Plan ``kind/name`` (the tier's variant) as a mass message from each customer's owner, with
    ``coupon`` issued to those it is planned for (a skipped row says the coupon was not issued).
    The dedupe key is (trigger_kind, trigger_ref, customer): planning twice adds nothing."""
    result = PushResult()
    if not customers:
        return result
    policy = ContactPolicy.from_settings(settings)
    ids = [c.id for c in customers]
    keys = {c.id: f"{trigger_kind}:{trigger_ref}:{c.id}" for c in customers}
    existing = set(session.scalars(select(OutboxMessage.dedupe_key).where(
        OutboxMessage.dedupe_key.in_(list(keys.values())))))
    send_at = policy.next_allowed(now)
    # The caps of the day it goes out: planned at 22:30, it is tomorrow 09:00's push, not tonight's.
    blocked = policy.blocked(session, ids, "mass_message", send_at)
    live = set(session.scalars(reachable(ids)))
    reasons: dict[int, str | None] = {}
    for customer in customers:
        if keys[customer.id] in existing:
            result.already += 1
        else:
            reasons[customer.id] = blocked.get(customer.id) or (None if customer.id in live else NO_SENDER)
    coupon_extra, coupon_codes = _issue_coupons(session, settings, coupon, customers, reasons, now, result)
    for customer in customers:
        if customer.id not in reasons:
            continue
        reason = reasons[customer.id]
        variables = {**(extra(customer) if extra else {}), **coupon_extra(customer)}
        rendered = templates.render(kind, name, tier_keys(customer), customer=customer_vars(customer),
                                    brand=settings.app.brand_name, **variables)
        row = OutboxMessage(dedupe_key=keys[customer.id], channel="mass_message", customer_id=customer.id,
                            recipient=customer.external_userid, sender_userid=customer.owner_userid,
                            trigger_kind=trigger_kind, trigger_ref=trigger_ref[:128],
                            content={"text": fit_text("mass_message", rendered.text, rendered.template),
                                     "template": rendered.template,
                                     **({"coupon": coupon_codes[customer.id]} if customer.id in coupon_codes else {}),
                                     **({UNLESS_ORDERED: unless_ordered_since[customer.id].isoformat()}
                                        if unless_ordered_since and customer.id in unless_ordered_since else {})},
                            status="skipped" if reason else "pending", reason=reason, scheduled_at=send_at)
        session.add(row)
        session.flush()
        result.outbox_ids.append(row.id)
        if reason:
            result.skipped[reason] += 1
        else:
            result.planned += 1
    return result


def _issue_coupons(session: Session, settings: Settings, offer: CouponOffer | None, customers: Sequence[Customer],
                   reasons: dict[int, str | None], now: datetime,
                   result: PushResult) -> tuple[Callable[[Customer], dict[str, Any]], dict[int, str]]:
    """Issue the offer to the customers about to be planned (``reasons`` None) whom it allows. Returns the
    template variables per customer (the coupon, a "not issued" stand-in on a skipped row, or none) and the
    code each customer got, which their row records (a row that then does not go out withdraws it)."""
    if offer is None:
        return (lambda c: {}), {}
    definition = offer.definition
    allowed = {c.id for c in customers if c.id in reasons and definition.allows(c)}
    planned = [c.id for c in customers if c.id in allowed and reasons[c.id] is None]
    coupons = issue(session, offer.book, definition, planned, offer.issue_ref, now) if planned else {}
    result.coupons += len(coupons)
    stand_in = unissued_vars(definition)

    def variables(c: Customer) -> dict[str, Any]:
        if c.id in coupons:
            return {"coupon": coupon_vars(coupons[c.id], settings.tz)}
        return {"coupon": stand_in} if c.id in allowed else {}
    return variables, {customer_id: coupon.code for customer_id, coupon in coupons.items()}
