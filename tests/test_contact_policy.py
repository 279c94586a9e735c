"""Contact policy with a frozen clock: quiet hours defer, opt-out and caps refuse with a reason."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from bot.core.config import ConfigError
from bot.models import Customer, OutboxMessage
from bot.outbox.policy import ContactPolicy
from bot.startup import load_settings

SHANGHAI = ZoneInfo("Asia/Shanghai")


def policy(**outbox) -> ContactPolicy:
    return ContactPolicy.from_settings(load_settings(overrides={"outbox": outbox}, environ={}))


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=SHANGHAI)


def test_quiet_hours_defer_to_their_end_in_local_time():
    p = policy()
    assert not p.in_quiet_hours(at("2026-11-23T20:59"))
    assert p.in_quiet_hours(at("2026-11-23T21:00")) and p.in_quiet_hours(at("2026-11-24T08:59"))
    assert p.next_allowed(at("2026-11-23T22:30")) == at("2026-11-24T09:00")
    assert p.next_allowed(at("2026-11-24T03:00")) == at("2026-11-24T09:00")
    assert p.next_allowed(at("2026-11-24T10:00")) == at("2026-11-24T10:00")
    # the same instant given in UTC: 13:30 UTC is 21:30 in Shanghai
    assert p.in_quiet_hours(datetime(2026, 11, 23, 13, 30, tzinfo=UTC))
    daytime = policy(quiet_hours="12:00-14:00")
    assert daytime.in_quiet_hours(at("2026-11-23T12:30")) and not daytime.in_quiet_hours(at("2026-11-23T21:30"))
    assert not policy(quiet_hours="").in_quiet_hours(at("2026-11-23T03:00"))


def test_mass_message_periods_follow_the_configured_rule():
    now = at("2026-02-11T10:00")  # a Wednesday in a 28-day February
    assert policy().mass_period(now) == (at("2026-02-01T00:00"), 28)
    assert policy(mass_message_rule="4_per_month").mass_period(now) == (at("2026-02-01T00:00"), 4)
    assert policy(mass_message_rule="7_per_week").mass_period(now) == (at("2026-02-09T00:00"), 7)
    assert policy(mass_message_rule="1_per_day").mass_period(now) == (at("2026-02-11T00:00"), 1)


def test_opt_out_and_caps_refuse_with_reasons(db):
    now = at("2026-11-24T10:00")
    with db.begin() as s:
        people = [Customer(external_userid=f"wm{i}", name=str(i), opted_out=(i == 0)) for i in range(5)]
        s.add_all(people)
        s.flush()
        ids = [c.id for c in people]

        def push(customer_id: int, when: datetime, key: str, channel: str = "mass_message",
                 trigger: str = "campaign", status: str = "sent") -> None:
            s.add(OutboxMessage(dedupe_key=key, channel=channel, customer_id=customer_id, recipient="x",
                                trigger_kind=trigger, trigger_ref="t", content={}, status=status, scheduled_at=when))

        push(ids[1], now - timedelta(hours=1), "today")                     # daily cap (1) reached
        for d in (1, 2, 3):
            push(ids[2], now - timedelta(days=d), f"week{d}")               # weekly cap (3) reached
        push(ids[3], now - timedelta(days=1), "failed", status="failed")    # failures do not count
        push(ids[3], now - timedelta(hours=2), "reply", channel="kf", trigger="reply")  # replies do not count
    p = policy()
    with db.sessions() as s:
        blocked = p.blocked(s, ids, "mass_message", now)
    assert blocked == {ids[0]: "opted out (退订)", ids[1]: "brand cap: 1 push(es) per day reached",
                       ids[2]: "brand cap: 3 pushes per 7 days reached"}
    strict = policy(daily_cap=10, weekly_cap=10, mass_message_rule="4_per_month")
    with db.sessions() as s:
        assert "WeCom mass-message cap" not in strict.blocked(s, ids, "mass_message", now).get(ids[2], "")
        with db.begin() as w:
            w.add(OutboxMessage(dedupe_key="m4", channel="mass_message", customer_id=ids[2], recipient="x",
                                trigger_kind="greeting", trigger_ref="t", content={}, status="sent",
                                scheduled_at=at("2026-11-02T10:00")))
        assert strict.blocked(s, ids, "mass_message", now)[ids[2]].startswith("WeCom mass-message cap (4_per_month")


def test_bad_policy_settings_name_the_key():
    with pytest.raises(ConfigError, match="outbox.quiet hours must look like"):
        load_settings(overrides={"outbox": {"quiet_hours": "9pm-9am"}}, environ={})
    with pytest.raises(ConfigError, match="outbox.mass_message_rule"):
        load_settings(overrides={"outbox": {"mass_message_rule": "5_per_month"}}, environ={})


def test_a_push_planned_in_quiet_hours_counts_against_the_day_it_goes_out(db):
    """Planned at 22:30 it goes out at 09:00 tomorrow: today's push (daily cap 1) does not stop it (it was
    skipped with "brand cap: 1 push(es) per day reached" although tomorrow had nothing)."""
    from bot.campaigns.push import push
    from bot.models import Follow, Staff
    from bot.outbox.messages import MessageTemplates

    evening = at("2026-11-24T22:30")
    settings = load_settings(overrides={"outbox": {"daily_cap": 1}}, environ={})
    with db.begin() as s:
        staff = Staff(userid="zhangsan", name="张三")
        customer = Customer(external_userid="wmLATE", name="晚", owner_userid="zhangsan")
        s.add_all([staff, customer])
        s.flush()
        s.add(Follow(customer_id=customer.id, staff_id=staff.id))
        s.add(OutboxMessage(dedupe_key="today", channel="mass_message", customer_id=customer.id, recipient="x",
                            trigger_kind="campaign", trigger_ref="t", content={}, status="sent",
                            scheduled_at=at("2026-11-24T10:00")))
        s.flush()
        push(s, settings, MessageTemplates(), [customer], kind="nba", name="content", trigger_kind="sequence",
             trigger_ref="new_customer:0", now=evening)
        row = s.scalar(select(OutboxMessage).where(OutboxMessage.dedupe_key != "today"))
        assert (row.status, row.reason) == ("pending", None)
        assert row.scheduled_at == at("2026-11-25T09:00")
