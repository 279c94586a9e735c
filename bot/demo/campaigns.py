"""Demo scenes for what the service sends on its own: a tiered broadcast with its preview,
hold-out and effect report, a coupon redeemed once, a tier change with its actions, a birthday.
The clock is the real one; quiet hours are switched off for the demo so it shows sends at any hour."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import timedelta
from typing import Any

import requests
from sqlalchemy import select

from bot.campaigns.automation import birthday_greetings, tier_change_actions
from bot.campaigns.broadcasts import BroadcastSpec, create_broadcast, effect_report, plan_run, preview
from bot.campaigns.coupons import CouponBook, display_code, issue, redeem
from bot.demo.run import DemoRun
from bot.messages import MessageTemplates
from bot.models import Customer, Order, OutboxMessage, TierChange, utcnow
from bot.outbox.mass import poll_mass_results, submit_mass_messages
from bot.outbox.policy import ContactPolicy

TEMPLATES = {"default": "{{ brand }}本周上新，回复「退订」不再接收。",
             "high": "{{ tier_name }}会员专享：新品抢先看，专属客服为您服务。",
             "important_retain": "好久不见！{{ brand }}为您准备了回归礼，回来看看吧。"}


def run_campaign_scenes(run: DemoRun) -> list[list[str]]:
    db = run.app.extensions["scrm.db"]
    settings = replace(run.app.extensions["scrm.settings"],
                       outbox=replace(run.app.extensions["scrm.settings"].outbox, quiet_hours=""))
    processor = run.app.extensions["scrm.processor"]
    contact = processor.clients.contact
    rows: list[list[str]] = []
    now = utcnow()
    spec = BroadcastSpec("demo:上新", {}, TEMPLATES, send_at=now)
    with db.begin() as session:
        shown = preview(session, settings, spec, now)
        broadcast = create_broadcast(session, settings, spec, now)
        run_ = plan_run(session, settings, broadcast, now, now).run
        broadcast.status, broadcast.next_run_at = "done", None
        summary = (f"audience {run_.audience}: {run_.to_send} to send, {run_.held_out} held out "
                   f"(10% per tier), skipped {sum(run_.skipped.values())} "
                   f"({', '.join(f'{n} {r}' for r, n in run_.skipped.items()) or '-'}); the preview expected "
                   f"≈{shown.to_send} to send (the hold-out is drawn at random)")
    rows.append(["broadcast preview + plan", summary])
    submitted = submit_mass_messages(db, contact, ContactPolicy.from_settings(settings), now=now)
    calls = len(requests.get(f"{run.sandbox.url}/_sandbox/sent", timeout=30).json()["mass_messages"])
    for message in requests.get(f"{run.sandbox.url}/_sandbox/sent", timeout=30).json()["mass_messages"]:
        requests.post(f"{run.sandbox.url}/_sandbox/mass_messages/{message['msgid']}/confirm", json={},
                      timeout=30).raise_for_status()
    results = poll_mass_results(db, contact)
    rows.append(["mass messages to WeCom", f"{submitted.get('submitted', 0)} recipients in {calls} add_msg_template "
                 f"calls (one per member and text); members confirmed → {results.get('confirmed', 0)} confirmed"])
    rows.append(["effect report (simulated orders)", _effect(db, broadcast, run_.id, now)])
    rows.append(["coupon redeemed twice", _coupon(db, settings, now)])
    rows.append(["tier change → actions", _tier_change(db, settings, now)])
    with db.begin() as session:
        birthdays = birthday_greetings(session, settings, MessageTemplates.from_settings(settings), now)
    rows.append(["birthdays today", f"{birthdays.planned} greeting(s) planned, {birthdays.coupons} birthday "
                 f"coupon(s) for top-tier customers; skipped {dict(birthdays.skipped) or '-'}"])
    return [[scene, " ".join(text.split())] for scene, text in rows]


def _effect(db: Any, broadcast: Any, run_id: int, now: Any) -> str:
    """Customers who got the message order a little more often than the hold-out group (simulated)."""
    rng = random.Random(5)
    with db.begin() as session:
        members = session.execute(select(OutboxMessage.customer_id, OutboxMessage.status).where(
            OutboxMessage.trigger_ref == f"broadcast_run:{run_id}", OutboxMessage.status != "skipped")).all()
        for customer_id, status in members:
            if rng.random() < (0.06 if status == "held_out" else 0.14):
                at = now + timedelta(days=rng.randint(0, 6), hours=1)
                session.add(Order(order_id=f"demo-after-{customer_id}", customer_id=customer_id,
                                  amount_fen=rng.choice([9900, 19900, 29900]), paid_at=at,
                                  paid_day=at.date().toordinal()))
        session.flush()
        report = effect_report(session, broadcast, 14, now=now + timedelta(days=14))
    lift = report.conversion_lift
    if lift is None:
        return "no hold-out group"
    return (f"ordered within 14 days: sent {report.sent.conversion * 100:.1f}% of {report.sent.customers}, "
            f"held out {report.held_out.conversion * 100:.1f}% of {report.held_out.customers}; lift "
            f"{lift.difference * 100:+.1f} pts (95% CI {lift.low * 100:+.1f} … {lift.high * 100:+.1f})")


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
        second = redeem(session, code, amount_fen=35000, now=now)
    return f"{display_code(code)} (专属优惠券 满300减50): first → {first.reason}; second → refused, {second.reason}"


def _tier_change(db: Any, settings: Any, now: Any) -> str:
    with db.begin() as session:
        customer = session.scalar(select(Customer).where(Customer.value_tier.in_(("mid", "low")))
                                   .order_by((Customer.value_tier == "mid").desc(), Customer.id))
        if customer is None:
            return "no mid- or low-tier customer"
        before = customer.value_tier
        session.add(TierChange(customer_id=customer.id, dimension="value_tier", from_value=before, to_value="high",
                               as_of=now.date(), reason="amount > 1000 and orders > 5 and activity high",
                               created_at=now))
        customer.value_tier = "high"
        session.flush()
        result = tier_change_actions(session, settings, MessageTemplates.from_settings(settings), now)
        owner = session.scalar(select(OutboxMessage.content).where(
            OutboxMessage.channel == "app_message", OutboxMessage.trigger_kind == "tier_action",
            OutboxMessage.customer_id == customer.id))
    vip = "VIP message planned" if result.planned else f"VIP message skipped ({', '.join(result.skipped)})"
    return f"{customer.name} {before} → high: {vip}; owner told: {owner['text'] if owner else '-'}"
