"""Pushes the rules make on their own, with a frozen clock: the coupon after a paid order,
birthdays, tier-change actions (once per change), sequences (converted customers leave),
mass-message reminders (≤3 per 24 h) and the scheduled tier coupons."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import requests
from sqlalchemy import func, select

from bot.campaigns.automation import (
    birthday_greetings,
    post_purchase_coupons,
    reconcile_coupon_schedules,
    run_sequences,
    tier_change_actions,
)
from bot.campaigns.broadcasts import dispatch_due
from bot.models import Broadcast, Coupon, Customer, Follow, MassReminder, Order, OutboxMessage, TierChange
from bot.outbox.mass import remind_unconfirmed, submit_mass_messages
from bot.outbox.messages import MessageTemplates
from bot.outbox.policy import ContactPolicy
from tests.campaign_data import MORNING, SHANGHAI, seed_audience


def run(app, db, func_, now=MORNING):
    settings = app.extensions["scrm.settings"]
    with db.begin() as s:
        return func_(s, settings, MessageTemplates.from_settings(settings), now)


def outbox(db, **where):
    with db.sessions() as s:
        query = select(OutboxMessage).order_by(OutboxMessage.id)
        for key, value in where.items():
            query = query.where(getattr(OutboxMessage, key) == value)
        return s.scalars(query).all()


def order(s, customer_id, order_id, at, amount_fen=15000):
    s.add(Order(order_id=order_id, customer_id=customer_id, amount_fen=amount_fen, paid_at=at,
                paid_day=at.astimezone(SHANGHAI).date().toordinal()))


def test_a_paid_order_earns_a_thank_you_coupon_once(app, db):
    ids = seed_audience(db, {"low": 2})
    with db.begin() as s:
        order(s, ids[0], "old", MORNING - timedelta(days=90))  # history: no coupon for it
        order(s, ids[1], "new-1", MORNING - timedelta(hours=1))
    first = run(app, db, post_purchase_coupons)
    again = run(app, db, post_purchase_coupons)
    assert (first.planned, first.coupons, again.planned) == (1, 1, 0)
    [row] = outbox(db, trigger_kind="coupon")
    with db.sessions() as s:
        coupon = s.scalar(select(Coupon))
    assert row.customer_id == ids[1] and coupon.issue_ref == "order:new-1" and coupon.definition == "THANKS"
    assert f"{coupon.code[:4]}-{coupon.code[4:8]}-{coupon.code[8:]}" in row.content["text"]
    assert "满100.00元可用" in row.content["text"]


def test_a_coupon_goes_only_with_a_message_that_goes_out(app, db):
    """An opted-out customer and one whose owner no longer follows them get a skipped row and no
    coupon: a code nobody was told about is not counted as issued."""
    ids = seed_audience(db, {"low": 3})
    with db.begin() as s:
        s.get(Customer, ids[0]).opted_out = True
        s.execute(Follow.__table__.update().where(Follow.customer_id == ids[1]).values(ended_at=MORNING))
        for n, customer_id in enumerate(ids):
            order(s, customer_id, f"o-{n}", MORNING - timedelta(hours=1))
    result = run(app, db, post_purchase_coupons)
    assert (result.planned, result.coupons, sum(result.skipped.values())) == (1, 1, 2)
    rows = {r.customer_id: r for r in outbox(db, trigger_kind="coupon")}
    with db.sessions() as s:
        assert set(s.scalars(select(Coupon.customer_id))) == {ids[2]}
    assert [rows[i].status for i in ids] == ["skipped", "skipped", "pending"]
    assert "（未发放）" in rows[ids[0]].content["text"] and "（未发放）" not in rows[ids[2]].content["text"]
    assert run(app, db, post_purchase_coupons).coupons == 0


def thanked_buyers(app, db, n: int) -> list[int]:
    """``n`` low-tier customers who paid an hour ago, each with a thank-you coupon planned; their ids."""
    ids = seed_audience(db, {"low": n})
    with db.begin() as s:
        for i, customer_id in enumerate(ids):
            order(s, customer_id, f"o-{i}", MORNING - timedelta(hours=1))
    assert run(app, db, post_purchase_coupons).coupons == n
    return ids


def test_a_coupon_whose_message_does_not_go_out_is_withdrawn(wired, sandbox):
    """Four thank-you coupons ride on mass messages: one customer opts out before submission, one is not
    the member's customer in WeCom (fail_list), one gets WeCom's "already had a mass message" (result 3),
    one is delivered. The three undelivered coupons are withdrawn (refused at redemption, not counted as
    issued in the console); the delivered one stays redeemable."""
    from bot.campaigns.coupons import redeem
    from bot.outbox.mass import poll_mass_results
    from bot.web.console.greetings import coupon_figures

    db, settings = wired.extensions["scrm.db"], wired.extensions["scrm.settings"]
    contacts = [{"userid": "zhangsan", "external_userid": f"wm00000{i}", "name": f"C{i}"} for i in range(3)]
    requests.post(f"{sandbox.url}/_sandbox/seed", json={"staff": [{"userid": "zhangsan"}], "contacts": contacts},
                  timeout=10).raise_for_status()
    ids = thanked_buyers(wired, db, 4)
    with db.begin() as s:
        s.get(Customer, ids[0]).opted_out = True
        codes = {c.customer_id: c.code for c in s.scalars(select(Coupon))}
    rows = {r.customer_id: r for r in outbox(db, trigger_kind="coupon")}
    assert all(rows[i].content["coupon"] == codes[i] for i in ids)
    contact = wired.extensions["scrm.processor"].clients.contact
    anytime = replace(ContactPolicy.from_settings(settings), quiet_start=time(0), quiet_end=time(0))
    outcome = submit_mass_messages(db, contact, anytime, now=MORNING)
    assert outcome == Counter({"skipped": 1, "submitted": 2, "failed": 1})
    sent = requests.get(f"{sandbox.url}/_sandbox/sent", timeout=10).json()["mass_messages"]
    for message in sent:  # each text carries its own code: one mass message per customer
        requests.post(f"{sandbox.url}/_sandbox/mass_messages/{message['msgid']}/confirm",
                      json={"capped": ["wm000002"]}, timeout=10).raise_for_status()
    assert poll_mass_results(db, contact) == Counter({"confirmed": 1, "failed": 1})
    with db.begin() as s:
        status = {c.customer_id: c.status for c in s.scalars(select(Coupon))}
        assert status == {ids[0]: "withdrawn", ids[1]: "issued", ids[2]: "withdrawn", ids[3]: "withdrawn"}
        refused = redeem(s, codes[ids[0]], amount_fen=50_000, now=MORNING)
        assert not refused.ok and "withdrawn" in refused.reason
        assert redeem(s, codes[ids[1]], amount_fen=50_000, now=MORNING).ok
        [thanks] = [f for f in coupon_figures(s, settings, MORNING) if f.code == "THANKS"]
    assert (thanks.issued, thanks.withdrawn, thanks.redeemed) == (1, 3, 1)


def test_a_coupon_whose_message_the_member_never_confirmed_is_withdrawn_at_expiry(wired, sandbox):
    from bot.campaigns.coupons import expire_coupons
    from bot.outbox.mass import poll_mass_results

    db, settings = wired.extensions["scrm.db"], wired.extensions["scrm.settings"]
    contacts = [{"userid": "zhangsan", "external_userid": f"wm00000{i}", "name": f"C{i}"} for i in range(2)]
    requests.post(f"{sandbox.url}/_sandbox/seed", json={"staff": [{"userid": "zhangsan"}], "contacts": contacts},
                  timeout=10).raise_for_status()
    ids = thanked_buyers(wired, db, 2)
    contact = wired.extensions["scrm.processor"].clients.contact
    anytime = replace(ContactPolicy.from_settings(settings), quiet_start=time(0), quiet_end=time(0))
    assert submit_mass_messages(db, contact, anytime, now=MORNING) == Counter({"submitted": 2})
    sent = requests.get(f"{sandbox.url}/_sandbox/sent", timeout=10).json()["mass_messages"]
    confirmed = next(m for m in sent if m["external_userid"] == ["wm000000"])
    requests.post(f"{sandbox.url}/_sandbox/mass_messages/{confirmed['msgid']}/confirm", json={},
                  timeout=10).raise_for_status()
    assert poll_mass_results(db, contact) == Counter({"confirmed": 1, "waiting": 1})
    with db.begin() as s:
        expiry = expire_coupons(s, MORNING + timedelta(days=31))
    assert (expiry.expired, expiry.withdrawn) == (1, 1)
    with db.sessions() as s:
        statuses = dict(s.execute(select(Coupon.customer_id, Coupon.status)).all())
    assert statuses == {ids[0]: "expired", ids[1]: "withdrawn"}  # the second never reached its customer


def test_forgetting_a_customer_withdraws_the_coupon_of_a_message_that_now_never_goes_out(app, db):
    from bot.contacts.forget import forget_customer

    ids = thanked_buyers(app, db, 2)
    with db.begin() as s:
        forget_customer(s, s.get(Customer, ids[0]), "dpo", MORNING)
    with db.sessions() as s:
        statuses = dict(s.execute(select(Coupon.customer_id, Coupon.status)).all())
    assert statuses == {ids[0]: "withdrawn", ids[1]: "issued"}


def test_birthdays_with_a_coupon_for_the_top_tier(app, db):
    ids = seed_audience(db, {"high": 1, "low": 1})
    with db.begin() as s:
        s.get(Customer, ids[0]).birthday = date(1990, 11, 24)
        s.get(Customer, ids[1]).birthday = date(1985, 11, 24)
        s.add(Customer(external_userid="wmOTHER", birthday=date(1990, 11, 25), owner_userid="zhangsan"))
    result = run(app, db, birthday_greetings)
    assert (result.planned, result.coupons) == (2, 1)
    rows = {r.customer_id: r for r in outbox(db, trigger_kind="greeting")}
    assert "生日礼券" in rows[ids[0]].content["text"] and rows[ids[0]].content["template"] == "birthday/default.high.j2"
    assert rows[ids[1]].content["template"] == "birthday/default.j2" and "券码" not in rows[ids[1]].content["text"]
    assert run(app, db, birthday_greetings).planned == 0  # once a year


def test_leap_day_birthdays_are_greeted_on_28_february(app, db):
    ids = seed_audience(db, {"low": 1})
    with db.begin() as s:
        s.get(Customer, ids[0]).birthday = date(2000, 2, 29)
    feb28 = datetime(2027, 2, 28, 10, 0, tzinfo=SHANGHAI)
    assert run(app, db, birthday_greetings, feb28).planned == 1
    assert run(app, db, birthday_greetings, datetime(2028, 2, 28, 10, 0, tzinfo=SHANGHAI)).planned == 0  # leap year


def _change(s, customer_id, dimension, to, at=MORNING, reason="test"):
    s.add(TierChange(customer_id=customer_id, dimension=dimension, from_value="mid", to_value=to,
                     as_of=at.date(), reason=reason, created_at=at))


def test_tier_changes_fire_their_actions_once(app, db):
    ids = seed_audience(db, {"high": 1, "low": 2})
    with db.begin() as s:
        s.get(Customer, ids[1]).rfm_segment = "important_retain"
        _change(s, ids[0], "value_tier", "high")
        _change(s, ids[1], "rfm_segment", "important_retain", reason="R low: last order 200 days ago")
        _change(s, ids[2], "engagement", "churned", reason="no order or interaction for 120 days")
        _change(s, ids[2], "value_tier", "mid")  # no action configured
    first = run(app, db, tier_change_actions)
    assert (first.planned, first.coupons, first.notified) == (2, 1, 3)
    assert run(app, db, tier_change_actions).as_dict() == {"planned": 0, "coupons": 0, "notified": 0, "skipped": {}}
    pushes = {r.customer_id: r for r in outbox(db, trigger_kind="tier_change")}
    assert pushes[ids[0]].content["template"] == "tier_change/vip.j2"
    assert "回归礼券" in pushes[ids[1]].content["text"]
    with db.sessions() as s:  # one code per message (two actions on one change would not share one)
        [coupon] = s.scalars(select(Coupon)).all()
    assert (coupon.issue_ref, coupon.code) == (pushes[ids[1]].trigger_ref, pushes[ids[1]].content["coupon"])
    staff = {r.customer_id: r for r in outbox(db, channel="app_message")}
    assert {r.recipient for r in staff.values()} == {"zhangsan"}
    assert "升级为高价值客户（原为中价值）" in staff[ids[0]].content["text"]
    assert "R low: last order 200 days ago" in staff[ids[1]].content["text"]
    assert "流失" in staff[ids[2]].content["text"]
    with db.begin() as s:  # a later change of the same kind fires again (once per change)
        _change(s, ids[0], "value_tier", "high", at=MORNING + timedelta(days=40))
    assert run(app, db, tier_change_actions, MORNING + timedelta(days=40)).planned == 1


def test_the_nightly_re_tiers_notes_to_members_wait_for_the_end_of_quiet_hours(app, db):
    """The re-tier runs at 02:30 and its tier actions right after: a member's app message then waited for
    nothing and woke them. It is now due when quiet hours end (09:00 by default)."""
    night = MORNING.replace(hour=2, minute=40)
    ids = seed_audience(db, {"low": 1})
    with db.begin() as s:
        _change(s, ids[0], "engagement", "churned", at=night)
    assert run(app, db, tier_change_actions, night).notified == 1
    [note] = outbox(db, channel="app_message")
    assert note.scheduled_at.astimezone(SHANGHAI) == MORNING.replace(hour=9, minute=0)
    sender = app.extensions["scrm.processor"].sender
    sender.clock = lambda: night.astimezone(UTC)
    assert sender.due_ids() == []  # not at 02:40


def test_sequence_steps_come_due_and_converted_customers_leave(app, db):
    ids = seed_audience(db, {"low": 4})
    with db.begin() as s:
        added = {ids[0]: 3, ids[1]: 7, ids[2]: 7, ids[3]: 60}  # days before MORNING
        for cid, days in added.items():
            s.scalar(select(Follow).where(Follow.customer_id == cid)).added_at = MORNING - timedelta(days=days)
        order(s, ids[2], "bought", MORNING - timedelta(days=5))  # converted: leaves the sequence
    result = run(app, db, run_sequences)
    rows = {r.customer_id: r for r in outbox(db, trigger_kind="sequence")}
    assert set(rows) == {ids[0], ids[1]} and result.coupons == 1
    assert rows[ids[0]].content["template"] == "sequence/new_customer_guide.j2"
    assert "新客首单券" in rows[ids[1]].content["text"]
    assert run(app, db, run_sequences).planned == 0  # each step once
    later = run(app, db, run_sequences, MORNING + timedelta(days=4))  # ids[0] reaches day 7
    assert later.planned == 1


def test_a_customer_who_orders_before_a_deferred_no_order_step_goes_out_does_not_get_it(app, db):
    """The day-7 step (if_no_order, with the NEWBIE coupon) planned at 22:30 waits for 09:00; an order at
    08:00 converts the customer: at submit the step is skipped and its coupon withdrawn (it went out)."""
    night = MORNING.replace(hour=22, minute=30)
    [cid] = seed_audience(db, {"low": 1})
    with db.begin() as s:
        s.scalar(select(Follow).where(Follow.customer_id == cid)).added_at = night - timedelta(days=7, minutes=5)
    assert run(app, db, run_sequences, night).planned == 1
    [row] = outbox(db, trigger_kind="sequence")
    assert row.status == "pending" and row.scheduled_at.astimezone(SHANGHAI) == (night + timedelta(days=1)).replace(
        hour=9, minute=0)
    with db.begin() as s:
        order(s, cid, "morning", (night + timedelta(days=1)).replace(hour=8, minute=0))
    policy = ContactPolicy.from_settings(app.extensions["scrm.settings"])
    submitted = submit_mass_messages(db, None, policy, now=(night + timedelta(days=1)).replace(hour=9, minute=30))
    assert submitted == Counter({"skipped": 1})
    [row] = outbox(db, trigger_kind="sequence")
    assert row.status == "skipped" and row.reason.startswith("ordered since the step was planned")
    with db.sessions() as s:
        assert s.scalar(select(Coupon.status)) == "withdrawn"


def one_pending_mass_message(wired, sandbox) -> tuple[Any, ContactPolicy]:
    """One customer of zhangsan's with a due mass message; returns the contact client and a policy
    without quiet hours."""
    db, settings = wired.extensions["scrm.db"], wired.extensions["scrm.settings"]
    requests.post(f"{sandbox.url}/_sandbox/seed", json={"staff": [{"userid": "zhangsan"}], "contacts": [
        {"userid": "zhangsan", "external_userid": "wm000000", "name": "A"}]}, timeout=10).raise_for_status()
    seed_audience(db, {"low": 1})
    with db.begin() as s:
        s.add(OutboxMessage(dedupe_key="k", channel="mass_message", customer_id=s.scalar(select(Customer.id)),
                            recipient="wm000000", sender_userid="zhangsan", trigger_kind="campaign", trigger_ref="r",
                            content={"text": "hi"}, status="pending",
                            scheduled_at=datetime(2026, 1, 1, tzinfo=SHANGHAI)))
    contact = wired.extensions["scrm.processor"].clients.contact
    anytime = replace(ContactPolicy.from_settings(settings), quiet_start=time(0), quiet_end=time(0))
    return contact, anytime


def test_reminders_at_most_three_per_day(wired, sandbox):
    db = wired.extensions["scrm.db"]
    contact, anytime = one_pending_mass_message(wired, sandbox)
    assert submit_mass_messages(db, contact, anytime) == Counter({"submitted": 1})
    submitted_at = datetime.now(SHANGHAI)
    outcomes, clock = [], 0
    for hour in (1, 5, 6, 10, 15, 20, 30):
        requests.post(f"{sandbox.url}/_sandbox/clock/advance", json={"seconds": (hour - clock) * 3600},
                      timeout=10).raise_for_status()  # WeCom's clock moves with ours
        clock = hour
        outcomes.append(dict(remind_unconfirmed(db, contact, 4, now=submitted_at + timedelta(hours=hour))))
    assert outcomes == [{}, {"reminded": 1}, {"waiting": 1}, {"reminded": 1}, {"reminded": 1}, {"limit": 1},
                        {"reminded": 1}]
    reminders = [c for c in requests.get(f"{sandbox.url}/_sandbox/calls", timeout=10).json()
                 if c["path"] == "externalcontact/remind_groupmsg_send" and c["errcode"] == 0]
    assert len(reminders) == 4
    with db.sessions() as s:
        assert s.scalar(select(func.count()).select_from(MassReminder)) == 4


def test_scheduled_tier_coupons_are_broadcasts_with_codes(app, db):
    settings = app.extensions["scrm.settings"]
    seed_audience(db, {"mid": 20, "high": 5, "low": 5})
    with db.begin() as s:
        names = reconcile_coupon_schedules(s, settings, MORNING)
        assert names == ["coupon:FLASH", "coupon:VIP"]
        assert reconcile_coupon_schedules(s, settings, MORNING) == names  # idempotent
        flash = s.scalar(select(Broadcast).where(Broadcast.name == "coupon:FLASH"))
        friday = datetime(2026, 11, 27, 10, 0, tzinfo=SHANGHAI)
        assert flash.next_run_at == friday and flash.cron == "0 10 * * 5"
        [planned] = dispatch_due(s, settings, now=friday + timedelta(seconds=5))
        assert (planned.audience, planned.held_out, planned.to_send) == (20, 2, 18)
        coupons = s.scalars(select(Coupon).where(Coupon.definition == "FLASH")).all()
        assert len(coupons) == 18 and flash.next_run_at == friday + timedelta(days=7)
        texts = [r.content["text"] for r in s.scalars(select(OutboxMessage).where(OutboxMessage.status == "pending"))]
        assert all("全场88折" in t for t in texts) and len(set(texts)) == 18


def test_a_mass_message_refused_for_the_frequency_limit_is_submitted_again_after_the_block(wired, sandbox):
    """45009 means WeCom created nothing and blocks add_msg_template for a minute: the rows go back to
    pending for after the block (they used to fail), and are submitted once then."""
    db = wired.extensions["scrm.db"]
    requests.post(f"{sandbox.url}/_sandbox/faults", json={"path": "externalcontact/add_msg_template",
                                                         "errcode": 45009}, timeout=10).raise_for_status()
    contact, anytime = one_pending_mass_message(wired, sandbox)
    now = datetime.now(SHANGHAI)
    assert submit_mass_messages(db, contact, anytime, now=now) == Counter({"deferred": 1})
    [row] = outbox(db, channel="mass_message")
    assert row.status == "pending" and "45009" in row.reason
    assert row.scheduled_at >= now + timedelta(seconds=60)
    assert submit_mass_messages(db, contact, anytime, now=now + timedelta(seconds=30)) == Counter()
    assert submit_mass_messages(db, contact, anytime, now=now + timedelta(seconds=61)) == Counter({"submitted": 1})
    assert len(requests.get(f"{sandbox.url}/_sandbox/calls", params={"path": "externalcontact/add_msg_template"},
                            timeout=10).json()) == 2


def test_two_submits_at_once_send_a_mass_message_once(wired, sandbox):
    """The mass_send, broadcast_dispatch and greetings jobs all submit: each read the pending rows and
    submitted all it read, whatever another had claimed meanwhile (two tasks: the member sends it twice)."""
    import threading

    from bot.outbox.mass import claim_pending

    db = wired.extensions["scrm.db"]
    contact, anytime = one_pending_mass_message(wired, sandbox)
    with db.begin() as s:
        row_id = s.scalar(select(OutboxMessage.id))
        pending_at = datetime.now(SHANGHAI)
        assert claim_pending(s, [row_id], pending_at) == {row_id}
        assert claim_pending(s, [row_id], pending_at) == set()  # what the second of two readers claims
        s.rollback()
    start, outcomes = threading.Barrier(2), []

    def submit() -> None:
        start.wait()
        outcomes.append(submit_mass_messages(db, contact, anytime))

    threads = [threading.Thread(target=submit) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sum(outcomes, Counter()) == Counter({"submitted": 1})
    assert len(requests.get(f"{sandbox.url}/_sandbox/calls", params={"path": "externalcontact/add_msg_template"},
                            timeout=10).json()) == 1
