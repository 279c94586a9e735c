"""Demo scenes for what the service sends on its own: a tiered broadcast with its preview,
hold-out and effect report, a coupon redeemed once, a tier change with its actions, a birthday.
The clock is the real one, but the broadcast is dated a report window ago so that its effect report
is complete; quiet hours are switched off for the demo so it shows sends at any hour. Every figure
is read back from what the product computed; what no demo customer can do (order after a message)
comes from a stated model and goes in through the orders API like any shop's orders."""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import requests
from sqlalchemy import func, select

from bot.campaigns.automation import birthday_greetings, tier_change_actions
from bot.campaigns.broadcasts import (
    BroadcastSpec,
    create_broadcast,
    dispatch_due,
    effect_report,
    find_broadcast,
    preview,
    run_ref,
)
from bot.campaigns.coupons import CouponBook, display_code, issue, redeem
from bot.demo.run import DemoRun
from bot.models import ApiToken, BroadcastRun, Customer, CustomerTier, Order, OutboxMessage, TierChange, utcnow
from bot.outbox.mass import poll_mass_results, submit_mass_messages
from bot.outbox.messages import MessageTemplates
from bot.outbox.policy import ContactPolicy
from bot.tagging.rules import TagRules
from bot.tagging.system import apply_aggregate_rules
from bot.web.api import MAX_ORDERS_PER_REQUEST, new_token
from segments.policy import ACTIVITY_LEVELS, TierPolicy, ValueRule
from segments.retier import retier, tidy_after_commit

BROADCAST_NAME = "demo:上新"
TEMPLATES = {"default": "{{ brand }}本周上新，回复「退订」不再接收。",
             "high": "{{ tier_name }}会员专享：新品抢先看，专属客服为您服务。",
             "important_retain": "好久不见！{{ brand }}为您准备了回归礼，回来看看吧。"}


@dataclass(frozen=True)
class MessageEffectModel:
    """What the demo assumes a broadcast does, since no customer of the demo can answer it. Both
    groups keep the orders the seed gave them (drawn before the hold-out, so alike in both); on
    top of that a share of the customers who got the message order once more."""

    extra_order_share: float = 0.08
    amounts_yuan: tuple[int, ...] = (99, 199, 299)
    seed: int = 5

    def describe(self, days: int) -> str:
        return (f"simulated: {self.extra_order_share:.0%} of the customers sent the message, drawn at random, "
                f"order once more ({'/'.join(map(str, self.amounts_yuan))} 元) within the {days} days; both "
                "groups keep their seeded orders")


@dataclass
class CampaignScenes:
    """The rows to print, and what the closing hints point at."""

    rows: list[list[str]] = field(default_factory=list)
    broadcast: str = BROADCAST_NAME
    report_days: int = 14
    upgraded_customer_id: int | None = None


def run_campaign_scenes(run: DemoRun) -> CampaignScenes:
    db = run.app.extensions["scrm.db"]
    settings = replace(run.app.extensions["scrm.settings"],
                       outbox=replace(run.app.extensions["scrm.settings"].outbox, quiet_hours=""))
    processor = run.app.extensions["scrm.processor"]
    contact = processor.clients.contact
    token = _api_token(db)
    scenes = CampaignScenes(report_days=settings.broadcasts.report_days)
    rows = scenes.rows
    now = utcnow()
    # Sent a report window (and an hour) ago, so the window has closed: the report printed here and
    # `scrm broadcast report` afterwards count the same orders.
    sent_at = now - timedelta(days=scenes.report_days, hours=1)
    spec = BroadcastSpec(BROADCAST_NAME, {}, TEMPLATES, send_at=sent_at)
    with db.begin() as session:
        shown = preview(session, settings, spec, sent_at)
        broadcast = create_broadcast(session, settings, spec, sent_at)
        run_ = next(r for r in dispatch_due(session, settings, sent_at) if r.broadcast_id == broadcast.id)
        summary = (f"sent {scenes.report_days} days and an hour ago (the demo's clock for this scene): audience "
                   f"{run_.audience}: {run_.to_send} to send, {run_.held_out} held out "
                   f"({broadcast.holdout_percent}% per tier), skipped {sum(run_.skipped.values())} "
                   f"({', '.join(f'{n} {r}' for r, n in run_.skipped.items()) or '-'}); the preview expected "
                   f"≈{shown.to_send} to send (the hold-out is drawn at random)")
    rows.append(["broadcast preview + plan", summary])
    submitted = submit_mass_messages(db, contact, ContactPolicy.from_settings(settings), now=sent_at)
    sent = requests.get(f"{run.sandbox.url}/_sandbox/sent", timeout=30).json()["mass_messages"]
    for message in sent:
        requests.post(f"{run.sandbox.url}/_sandbox/mass_messages/{message['msgid']}/confirm", json={},
                      timeout=30).raise_for_status()
    results = poll_mass_results(db, contact)
    rows.append(["mass messages to WeCom", f"{submitted.get('submitted', 0)} recipients in {len(sent)} "
                 "add_msg_template calls (one per member and text); the members confirmed them in the sandbox → "
                 f"{results.get('confirmed', 0)} confirmed"])
    rows.append(["effect report", _effect(run, token, run_.id, scenes.report_days, MessageEffectModel())])
    rows.append(["coupon redeemed twice", _coupon(db, settings, now)])
    upgrade, scenes.upgraded_customer_id = _tier_change(run, token, settings)
    rows.append(["tier change → actions", upgrade])
    with db.begin() as session:
        birthdays = birthday_greetings(session, settings, MessageTemplates.from_settings(settings), utcnow())
    rows.append(["birthdays today", f"{birthdays.planned} greeting(s) planned, {birthdays.coupons} birthday "
                 f"coupon(s) for top-tier customers; skipped {dict(birthdays.skipped) or '-'}"])
    scenes.rows = [[scene, " ".join(text.split())] for scene, text in rows]
    return scenes


def _api_token(db: Any) -> str:
    """The demo's orders come in the way a shop's do: through the orders API, with a bearer token."""
    token, digest = new_token()
    with db.begin() as session:
        session.add(ApiToken(name="demo", token_sha256=digest))
    return token


def post_orders(run: DemoRun, token: str, orders: list[dict[str, Any]]) -> Counter[str]:
    """POST /api/v1/orders in batches; the counts per result (inserted, updated, unchanged, error)."""
    summary: Counter[str] = Counter()
    for start in range(0, len(orders), MAX_ORDERS_PER_REQUEST):
        response = requests.post(f"{run.bot.url}/api/v1/orders", json=orders[start:start + MAX_ORDERS_PER_REQUEST],
                                 headers={"Authorization": f"Bearer {token}"}, timeout=300)
        response.raise_for_status()
        summary.update(response.json()["summary"])
    return summary


def _effect(run: DemoRun, token: str, run_id: int, days: int, model: MessageEffectModel) -> str:
    """The model's extra orders go in through the API, dated inside the report window; the figures
    are the same effect report `scrm broadcast report` computes."""
    db = run.app.extensions["scrm.db"]
    with db.sessions() as session:
        start = session.get(BroadcastRun, run_id).send_after
        members = session.execute(
            select(Customer.id, Customer.external_userid).join(OutboxMessage, OutboxMessage.customer_id == Customer.id)
            .where(OutboxMessage.trigger_ref == run_ref(run_id), OutboxMessage.status.not_in(("skipped", "held_out")))
            .order_by(Customer.id)).all()
    rng = random.Random(model.seed)
    orders = []
    for customer_id, external_userid in members:
        if rng.random() < model.extra_order_share:
            paid_at = start + timedelta(seconds=rng.uniform(60, days * 86400 - 60))
            orders.append({"order_id": f"demo-effect-{run_id}-{customer_id}", "external_userid": external_userid,
                           "amount": rng.choice(model.amounts_yuan), "paid_at": paid_at.isoformat(),
                           "status": "paid"})
    posted = post_orders(run, token, orders)
    with db.begin() as session:
        report = effect_report(session, find_broadcast(session, BROADCAST_NAME), days)
    lift = report.conversion_lift
    figures = "no hold-out group" if lift is None else (
        f"ordered within {days} days: sent {report.sent.converters} of {report.sent.customers} "
        f"({report.sent.conversion * 100:.1f}%), held out {report.held_out.converters} of "
        f"{report.held_out.customers} ({report.held_out.conversion * 100:.1f}%); lift {lift.difference * 100:+.2f} "
        f"pts (95% CI {lift.low * 100:+.2f} … {lift.high * 100:+.2f})")
    return (f"{model.describe(days)}: {posted.get('inserted', 0)} orders posted to /api/v1/orders → {figures}")


def _coupon(db: Any, settings: Any, now: Any) -> str:
    book = CouponBook.from_settings(settings)
    with db.begin() as session:
        customer = session.scalar(select(Customer).where(Customer.value_tier.is_not(None))
                                   .order_by((Customer.value_tier == "high").desc(), Customer.id))
        if customer is None:
            return "no tiered customer"
        coupon = issue(session, book, book.get("VIP"), [customer.id], "demo", now)[customer.id]
        code = coupon.code
    with db.begin() as session:
        first = redeem(session, display_code(code), amount_fen=35000, now=now)
    with db.begin() as session:
        second = redeem(session, code, amount_fen=35000, now=now, tz=settings.tz)
    return f"{display_code(code)} (专属优惠券 满300减50): first → {first.reason}; second → refused, {second.reason}"


def orders_to_reach(rule: ValueRule, orders: int, paid_fen: int, least_yuan: int = 99) -> tuple[int, int]:
    """How many more paid orders, of how many whole 元 each (``least_yuan`` at least, an ordinary
    order), take a customer past ``rule``'s order and amount thresholds: one order at least."""
    want_orders = max(rule.orders_gt + 1 if rule.orders_gt is not None else 0, rule.orders_gte or 0)
    want_fen = max(rule.amount_gt_fen + 1 if rule.amount_gt_fen is not None else 0, rule.amount_gte_fen or 0)
    count = max(1, want_orders - orders)
    return count, max(least_yuan, math.ceil(max(0, want_fen - paid_fen) / count / 100))


def _tier_change(run: DemoRun, token: str, settings: Any) -> tuple[str, int | None]:
    """A customer active enough for the top value tier buys enough to reach it: the orders go in
    through the API, the re-tier the scheduler runs moves them, and the configured tier actions fire."""
    db = run.app.extensions["scrm.db"]
    policy = TierPolicy.of(settings)
    top = policy.value_rules[0]
    with db.sessions() as session:
        next_best = policy.value_tiers[1] if len(policy.value_tiers) > 1 else top.name
        found = session.execute(
            select(Customer.id, Customer.external_userid, Customer.name, CustomerTier.value_tier,
                   CustomerTier.activity)
            .join(CustomerTier, CustomerTier.customer_id == Customer.id)
            .where(CustomerTier.value_tier != top.name,
                   CustomerTier.activity.in_(top.activity_in or ACTIVITY_LEVELS))
            .order_by((CustomerTier.value_tier == next_best).desc(), Customer.id).limit(1)).first()
        if found is None:
            return f"no customer outside {top.name} is active enough for it ({top.describe()})", None
        customer_id, external_userid, name, before, activity = found
        orders, paid_fen = session.execute(select(func.count(), func.coalesce(func.sum(Order.amount_fen), 0))
                                           .where(Order.customer_id == customer_id, Order.status == "paid")).one()
    count, yuan = orders_to_reach(top, orders, int(paid_fen))
    now = utcnow()
    posted = post_orders(run, token, [
        {"order_id": f"demo-upgrade-{customer_id}-{i}", "external_userid": external_userid, "amount": yuan,
         "paid_at": (now - timedelta(minutes=i + 1)).isoformat(), "status": "paid"} for i in range(count)])
    as_of = datetime.now(settings.tz).date()
    with db.begin() as session:  # what the nightly re-tier job does
        result = retier(session, policy, as_of, settings.tz)
        apply_aggregate_rules(session, TagRules.from_settings(settings), settings.tags.push_to_wecom)
    tidy_after_commit(db.engine, result)
    with db.begin() as session:  # what the tier-actions job does
        tier_change_actions(session, settings, MessageTemplates.from_settings(settings), utcnow())
        change = session.scalar(select(TierChange).where(TierChange.customer_id == customer_id,
                                                         TierChange.dimension == "value_tier")
                                .order_by(TierChange.id.desc()).limit(1))
        after = session.scalar(select(CustomerTier.value_tier).where(CustomerTier.customer_id == customer_id))
        vip = session.execute(select(OutboxMessage.status, OutboxMessage.reason).where(
            OutboxMessage.customer_id == customer_id, OutboxMessage.trigger_kind == "tier_change")).first()
        owner = session.scalar(select(OutboxMessage.content).where(
            OutboxMessage.channel == "app_message", OutboxMessage.trigger_kind == "tier_action",
            OutboxMessage.customer_id == customer_id))
    story = (f"{name} (id {customer_id}) was {before} with {orders} paid orders, {paid_fen / 100:.2f} 元, activity "
             f"{activity}; {posted.get('inserted', 0)} orders of {yuan} 元 posted to /api/v1/orders; the re-tier "
             f"moved {result.changes.get('value_tier', 0)} customers' value tier in all")
    if change is None or after == before:
        return f"{story}; {name} stayed {after}", customer_id
    message = "-" if vip is None else "VIP message planned" if vip.status != "skipped" \
        else f"VIP message skipped ({vip.reason})"
    return (f"{story}: {name} {change.from_value} → {after} ({change.reason}); {message}; owner told: "
            f"{owner['text'] if owner else '-'}"), customer_id
