"""Pushes the rules make on their own: the coupon a paid order earns (成交之后赠送抵用券),
birthday greetings (生日礼品), tier-change actions, follow-up sequences (SOP), and the tier coupons
on a schedule (kept as broadcasts). Each is keyed so that it happens once per cause."""

from __future__ import annotations

import calendar
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from jinja2 import TemplateNotFound
from sqlalchemy import exists, extract, func, literal, select
from sqlalchemy.orm import Session

from bot.campaigns.broadcasts import BroadcastSpec, create_broadcast, next_cron_time, tier_key_names
from bot.campaigns.coupons import CouponBook, CouponDefinition, CouponOffer
from bot.campaigns.push import push
from bot.campaigns.rules import CampaignRules, SequenceFlow, SequenceStep, TemplateRef
from bot.core.config import Settings
from bot.models import Broadcast, Customer, Follow, Order, OutboxMessage, SyncCursor, TierChange
from bot.outbox import enqueue
from bot.outbox.messages import MessageTemplates, customer_vars, tier_keys
from bot.outbox.policy import ContactPolicy

logger = logging.getLogger(__name__)
# Causes older than this are history, not news: a fresh install does not thank last year's buyers.
FRESH = timedelta(days=2)
STALE_TIER_CHANGE = timedelta(days=7)


@dataclass
class AutomationResult:
    planned: int = 0
    coupons: int = 0
    notified: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def add(self, other: Any) -> None:
        self.planned += other.planned
        self.coupons += other.coupons
        self.skipped.update(other.skipped)

    def as_dict(self) -> dict[str, Any]:
        return {"planned": self.planned, "coupons": self.coupons, "notified": self.notified,
                "skipped": dict(self.skipped)}


def _cursor(session: Session, name: str) -> int | None:
    row = session.get(SyncCursor, name)
    return int(row.cursor) if row and row.cursor else None


def _save_cursor(session: Session, name: str, value: int) -> None:
    row = session.get(SyncCursor, name)
    if row is None:
        session.add(SyncCursor(name=name, cursor=str(value)))
    else:
        row.cursor = str(value)
    session.flush()


def _offer(book: CouponBook, definition: CouponDefinition | None, issue_ref: str) -> CouponOffer | None:
    return CouponOffer(book, definition, issue_ref) if definition is not None else None


# ---------------------------------------------------------------- 成交之后赠送抵用券


def post_purchase_coupons(session: Session, settings: Settings, templates: MessageTemplates,
                          now: datetime, limit: int = 5000) -> AutomationResult:
    """Each recent paid order earns its customer ``coupons.post_purchase``, with a thank-you."""
    result = AutomationResult()
    code = settings.coupons.post_purchase
    if not code:
        return result
    book = CouponBook.from_settings(settings)
    definition = book.get(code)
    last = _cursor(session, "coupons:post_purchase") or 0
    orders = session.execute(select(Order.id, Order.order_id, Order.customer_id).where(
        Order.id > last, Order.status == "paid", Order.paid_at >= now - FRESH).order_by(Order.id).limit(limit)).all()
    if not orders:
        newest = session.scalar(select(func.max(Order.id)))
        if newest and newest > last:
            _save_cursor(session, "coupons:post_purchase", newest)  # skip history once
        return result
    customers = {c.id: c for c in session.scalars(select(Customer).where(
        Customer.id.in_({o.customer_id for o in orders})))}
    for order in orders:
        customer = customers[order.customer_id]
        if not definition.allows(customer):
            continue
        result.add(push(session, settings, templates, [customer], kind="coupon", name="thanks", trigger_kind="coupon",
                        trigger_ref=f"order:{order.order_id}", now=now,
                        coupon=_offer(book, definition, f"order:{order.order_id}")))
    _save_cursor(session, "coupons:post_purchase", orders[-1].id)
    return result


# ---------------------------------------------------------------- 生日礼品


def birthday_greetings(session: Session, settings: Settings, templates: MessageTemplates,
                       now: datetime) -> AutomationResult:
    """Customers whose birthday is today (local; 29 Feb counts on 28 Feb in other years) get
    birthday/<tier>, and the birthday coupon when their tier may have it."""
    result = AutomationResult()
    if not settings.greetings.birthday:
        return result
    today = now.astimezone(settings.tz).date()
    days = [today.day]
    if today.month == 2 and today.day == 28 and not calendar.isleap(today.year):
        days.append(29)
    customers = list(session.scalars(select(Customer).where(
        Customer.birthday.is_not(None), extract("month", Customer.birthday) == today.month,
        extract("day", Customer.birthday).in_(days)).order_by(Customer.id)))
    if not customers:
        return result
    book = CouponBook.from_settings(settings)
    code = settings.greetings.birthday_coupon
    ref = f"birthday:{today.year}"
    result.add(push(session, settings, templates, customers, kind="birthday", name="default",
                    trigger_kind="greeting", trigger_ref=ref, now=now,
                    coupon=_offer(book, book.get(code) if code else None, ref)))
    return result


# ---------------------------------------------------------------- tier-change actions


def tier_change_actions(session: Session, settings: Settings, templates: MessageTemplates,
                        now: datetime) -> AutomationResult:
    """Run the configured actions for TierChange rows not seen before, each once per change."""
    result = AutomationResult()
    rules = CampaignRules.from_settings(settings)
    last = _cursor(session, "tier_actions") or 0
    newest = session.scalar(select(func.max(TierChange.id))) or 0
    if not rules.tier_actions or newest <= last:
        return result
    book = CouponBook.from_settings(settings)
    for action in rules.tier_actions:
        changes = session.execute(select(TierChange, Customer).join(Customer, Customer.id == TierChange.customer_id)
                                  .where(TierChange.id > last, TierChange.id <= newest,
                                         TierChange.dimension == action.dimension, TierChange.to_value == action.to,
                                         TierChange.created_at >= now - STALE_TIER_CHANGE)
                                  .order_by(TierChange.id)).all()
        for change, customer in changes:
            ref = f"tier_change:{change.id}:{action.index}"
            if action.message is not None:
                definition = book.get(action.coupon) if action.coupon else None
                result.add(push(session, settings, templates, [customer], kind=action.message.kind,
                                name=action.message.name, trigger_kind="tier_change", trigger_ref=ref, now=now,
                                coupon=_offer(book, definition, ref)))  # a code per message it rides on
            if action.notify_owner is not None and customer.owner_userid:
                result.notified += _notify_owner(session, settings, templates, action.notify_owner, customer,
                                                 change, ref, now)
    _save_cursor(session, "tier_actions", newest)
    return result


def _notify_owner(session: Session, settings: Settings, templates: MessageTemplates, template: TemplateRef,
                  customer: Customer, change: TierChange, ref: str, now: datetime) -> int:
    from bot.outbox.messages import STAGE_NAMES, TIER_NAMES
    from segments.rfm import SEGMENT_NAMES

    names = {**TIER_NAMES, **SEGMENT_NAMES, **STAGE_NAMES, "active": "活跃", "silent": "沉默", "churned": "流失"}
    if change.dimension == "churn_risk":  # low/medium/high name risk bands here, not value tiers
        names = {"low": "流失风险低", "medium": "流失风险中", "high": "流失风险高"}
    rendered = templates.render(template.kind, template.name, tier_keys(customer), customer=customer_vars(customer),
                                brand=settings.app.brand_name,
                                change={"dimension": change.dimension, "from": change.from_value or "",
                                        "to": change.to_value or "", "reason": change.reason,
                                        "from_name": names.get(change.from_value or "", change.from_value or ""),
                                        "to_name": names.get(change.to_value or "", change.to_value or "")})
    # The nightly re-tier runs at 02:30: its notes wait for the end of quiet hours, not wake the member.
    row = enqueue(session, channel="app_message", dedupe_key=f"{ref}:owner", recipient=customer.owner_userid or "",
                  trigger_kind="tier_action", trigger_ref=ref, customer_id=customer.id,
                  content={"text": rendered.text, "template": rendered.template},
                  scheduled_at=ContactPolicy.from_settings(settings).next_allowed(now))
    return 1 if row else 0


# ---------------------------------------------------------------- sequences (SOP)


def run_sequences(session: Session, settings: Settings, templates: MessageTemplates,
                  now: datetime) -> AutomationResult:
    """Plan every sequence step that has come due (within the last two days: a step is not sent
    late to customers who started long before the sequence existed)."""
    result = AutomationResult()
    rules = CampaignRules.from_settings(settings)
    book = CouponBook.from_settings(settings)
    for flow in rules.sequences:
        starts = _flow_starts(flow)
        for step in flow.steps:
            due_from, due_to = now - timedelta(days=step.day) - FRESH, now - timedelta(days=step.day)
            rows = session.execute(select(Customer, starts.c.started_at).join(
                starts, starts.c.customer_id == Customer.id).where(
                starts.c.started_at > due_from, starts.c.started_at <= due_to,
                *step.audience.conditions(session, settings.tz),
                *_still_in(flow, step, starts.c.started_at)).order_by(Customer.id)).all()
            by_start: dict[date, list[Customer]] = {}
            for customer, started_at in rows:
                by_start.setdefault(started_at.astimezone(settings.tz).date(), []).append(customer)
            since = {customer.id: _aware(started_at) for customer, started_at in rows} \
                if flow.exit_on_order or step.if_no_order else None  # checked again when it goes out
            for started, customers in by_start.items():
                ref = f"{flow.name}:{step.index}:{started.isoformat()}"
                definition = book.get(step.coupon) if step.coupon else None
                result.add(push(session, settings, templates, customers, kind=step.template.kind,
                                name=step.template.name, trigger_kind="sequence", trigger_ref=ref, now=now,
                                coupon=_offer(book, definition, f"sequence:{ref}"), unless_ordered_since=since))
    return result


@dataclass(frozen=True)
class PendingStep:
    """A sequence step one customer will still get: which flow and step, when it comes due, what it sends."""

    flow: str
    day: int
    template: str
    due_at: datetime
    coupon: str


def pending_steps(session: Session, settings: Settings, customer: Customer, now: datetime,
                  rules: CampaignRules | None = None, book: CouponBook | None = None) -> list[PendingStep]:
    """The steps of every flow this customer is in that are not planned yet and will be (due in the
    future, or due within the window :func:`run_sequences` still plans), in due order. Steps whose
    audience or order condition the customer does not meet now are left out: they would be skipped."""
    rules = rules or CampaignRules.from_settings(settings)
    book = book or CouponBook.from_settings(settings)
    pending: list[PendingStep] = []
    for flow in rules.sequences:
        started_at = session.scalar(_flow_start_of(flow, customer.id))
        if started_at is None:
            continue
        started_at = _aware(started_at)
        for step in flow.steps:
            due_at = started_at + timedelta(days=step.day)
            if due_at <= now - FRESH:
                continue
            ref = f"{flow.name}:{step.index}:{started_at.astimezone(settings.tz).date().isoformat()}"
            planned = session.scalar(select(OutboxMessage.id).where(
                OutboxMessage.dedupe_key == f"sequence:{ref}:{customer.id}"))
            if planned is not None:
                continue
            still = session.scalar(select(Customer.id).where(
                Customer.id == customer.id, *step.audience.conditions(session, settings.tz),
                *_still_in(flow, step, literal(started_at, Order.paid_at.type))))
            if still is None:
                continue
            coupon = book.get(step.coupon).title if step.coupon else ""
            pending.append(PendingStep(flow.name, step.day, str(step.template), due_at, coupon))
    return sorted(pending, key=lambda p: p.due_at)


def _flow_start_of(flow: SequenceFlow, customer_id: int) -> Any:
    """:func:`_flow_starts` for one customer, through the customer's own index entries."""
    if flow.entry is None:
        return select(func.min(Follow.added_at)).where(Follow.customer_id == customer_id,
                                                       Follow.added_at.is_not(None))
    dimension, value = flow.entry
    return select(func.max(TierChange.created_at)).where(TierChange.customer_id == customer_id,
                                                         TierChange.dimension == dimension,
                                                         TierChange.to_value == value)


def _aware(moment: datetime) -> datetime:
    """SQLite hands back naive UTC datetimes."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _flow_starts(flow: SequenceFlow) -> Any:
    """customer_id → when this customer entered the flow (first add, or the latest entry into the tier)."""
    entry = flow.entry
    if entry is None:
        return (select(Follow.customer_id, func.min(Follow.added_at).label("started_at"))
                .where(Follow.added_at.is_not(None)).group_by(Follow.customer_id).subquery())
    dimension, value = entry
    return (select(TierChange.customer_id, func.max(TierChange.created_at).label("started_at"))
            .where(TierChange.dimension == dimension, TierChange.to_value == value)
            .group_by(TierChange.customer_id).subquery())


def _still_in(flow: SequenceFlow, step: SequenceStep, started_at: Any) -> list[Any]:
    """A customer who ordered since the start has converted: out of the flow (exit_on_order) or
    past this step (if_no_order)."""
    if not (flow.exit_on_order or step.if_no_order):
        return []
    ordered = exists().where(Order.customer_id == Customer.id, Order.status == "paid", Order.paid_at >= started_at)
    return [~ordered]


# ---------------------------------------------------------------- tier coupons on a schedule


def reconcile_coupon_schedules(session: Session, settings: Settings, now: datetime) -> list[str]:
    """Keep one broadcast ``coupon:<CODE>`` per ``[coupons] schedules`` entry (audience, cron,
    the template's per-tier variants); entries removed from the config are cancelled."""
    rules = CampaignRules.from_settings(settings)
    templates = MessageTemplates.from_settings(settings)
    wanted: dict[str, Any] = {}
    for schedule in rules.coupon_schedules:
        name = f"coupon:{schedule.coupon}"
        sources = _template_sources(templates, schedule.template, tier_key_names(settings))
        wanted[name] = (schedule, sources)
        existing = session.scalar(select(Broadcast).where(Broadcast.name == name))
        if existing is None:
            create_broadcast(session, settings, BroadcastSpec(name, schedule.audience.to_dict(), sources,
                                                              cron=schedule.cron, coupon=schedule.coupon), now)
            continue
        if existing.status == "cancelled" or existing.cron != schedule.cron:
            existing.status = "scheduled"
            existing.next_run_at = next_cron_time(schedule.cron, settings, now)
        wanted_fields = {"cron": schedule.cron, "audience": schedule.audience.to_dict(), "templates": sources,
                         "coupon": schedule.coupon}
        for key, value in wanted_fields.items():
            if getattr(existing, key) != value:  # this runs every minute: write only what changed
                setattr(existing, key, value)
    for stale in session.scalars(select(Broadcast).where(Broadcast.name.like("coupon:%"),
                                                         Broadcast.status == "scheduled")):
        if stale.name not in wanted:
            stale.status, stale.next_run_at = "cancelled", None
    session.flush()
    return sorted(wanted)


def _template_sources(templates: MessageTemplates, ref: TemplateRef, keys: set[str]) -> dict[str, str]:
    env = templates.env
    sources = {"default": env.loader.get_source(env, templates.choose(ref.kind, ref.name))[0]}  # type: ignore[union-attr]
    for key in sorted(keys):
        path = f"{ref.kind}/{ref.name}.{key}.j2"
        try:
            sources[key] = env.loader.get_source(env, path)[0]  # type: ignore[union-attr]
        except TemplateNotFound:
            continue
    return sources
