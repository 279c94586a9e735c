"""Holiday greetings with a frozen clock: the tier's template, opt-outs and caps skipped with a
reason, quiet hours deferring, once per holiday, and submission as WeCom mass messages."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
import requests
from sqlalchemy import func, select
from wechatpy.exceptions import WeChatClientException

from bot.campaigns.greetings import plan_holiday_greetings
from bot.models import Customer, Follow, OutboxMessage, Staff
from bot.outbox.mass import poll_mass_results, submit_mass_messages
from bot.outbox.messages import MessageTemplates
from bot.outbox.policy import ContactPolicy

SHANGHAI = ZoneInfo("Asia/Shanghai")
MID_AUTUMN_MORNING = datetime(2026, 9, 25, 10, 0, tzinfo=SHANGHAI)


def seed_sandbox_and_customers(sandbox, db) -> None:
    """zhangsan's three contacts wm0–wm2, in the sandbox and in our database."""
    requests.post(f"{sandbox.url}/_sandbox/seed", json={"staff": [{"userid": "zhangsan"}], "contacts": [
        {"userid": "zhangsan", "external_userid": f"wm{i}", "name": f"客户{i}"} for i in range(3)]},
        timeout=10).raise_for_status()
    seed_customers(db)


def seed_customers(db) -> None:
    with db.begin() as s:
        staff = Staff(userid="zhangsan", name="张三")
        s.add(staff)
        s.flush()
        for i, (tier, opted_out) in enumerate([("high", False), ("low", False), ("low", False), ("mid", True)]):
            customer = Customer(external_userid=f"wm{i}", name=f"客户{i}", value_tier=tier, opted_out=opted_out,
                                owner_userid="zhangsan")
            s.add(customer)
            s.flush()
            s.add(Follow(customer_id=customer.id, staff_id=staff.id))
        s.add(Customer(external_userid="wmGONE", name="无跟进", owner_userid="lisi"))  # nobody to send from


def plan(app, db, now):
    settings = app.extensions["scrm.settings"]
    with db.begin() as s:
        return plan_holiday_greetings(s, settings, MessageTemplates.from_settings(settings), now)


def test_mid_autumn_greets_each_tier_once_and_skips_opt_outs(app, db):
    seed_customers(db)
    result = plan(app, db, MID_AUTUMN_MORNING)
    assert result.holidays == ["中秋"] and result.planned == 3 and result.deferred_to is None
    assert result.skipped == Counter({"opted out (退订)": 1})
    with db.sessions() as s:
        rows = {r.recipient: r for r in s.scalars(select(OutboxMessage))}
    assert rows["wm0"].content["template"] == "holiday/mid_autumn.high.j2"
    assert "高价值会员" in rows["wm0"].content["text"]
    assert rows["wm1"].content["template"] == "holiday/mid_autumn.j2"
    assert rows["wm3"].status == "skipped" and "wmGONE" not in rows
    again = plan(app, db, MID_AUTUMN_MORNING.replace(hour=15))
    assert again.planned == 0 and not again.skipped  # once per holiday
    assert plan(app, db, datetime(2026, 9, 24, 10, 0, tzinfo=SHANGHAI)).holidays == []


def test_planned_in_quiet_hours_waits_until_they_end(app, db):
    seed_customers(db)
    night = datetime(2026, 10, 1, 6, 30, tzinfo=SHANGHAI)  # 国庆, before 09:00
    result = plan(app, db, night)
    assert result.holidays == ["国庆"] and result.deferred_to == datetime(2026, 10, 1, 9, 0, tzinfo=SHANGHAI)
    policy = ContactPolicy.from_settings(app.extensions["scrm.settings"])
    assert submit_mass_messages(db, None, policy, now=night) == Counter()  # nothing goes out at night


def test_due_greetings_become_one_mass_message_per_member_and_text(wired, sandbox):
    db = wired.extensions["scrm.db"]
    seed_sandbox_and_customers(sandbox, db)
    plan(wired, db, MID_AUTUMN_MORNING)
    with db.begin() as s:  # the low-tier customer opts out after planning
        s.scalar(select(Customer).where(Customer.external_userid == "wm2")).opted_out = True
    processor = wired.extensions["scrm.processor"]
    policy = ContactPolicy.from_settings(wired.extensions["scrm.settings"])
    outcome = submit_mass_messages(db, processor.clients.contact, policy, now=MID_AUTUMN_MORNING)
    assert outcome == Counter({"submitted": 2, "skipped": 1})
    sent = requests.get(f"{sandbox.url}/_sandbox/sent", timeout=10).json()["mass_messages"]
    assert sorted(m["external_userid"] for m in sent) == [["wm0"], ["wm1"]]  # high and low texts differ
    assert {m["sender"] for m in sent} == {"zhangsan"}
    with db.sessions() as s:
        statuses = Counter(s.scalars(select(OutboxMessage.status)))
    assert statuses == Counter({"submitted": 2, "skipped": 2})

    msgid = next(m["msgid"] for m in sent if m["external_userid"] == ["wm1"])
    requests.post(f"{sandbox.url}/_sandbox/mass_messages/{msgid}/confirm", json={"capped": ["wm1"]},
                  timeout=10).raise_for_status()
    other = next(m["msgid"] for m in sent if m["external_userid"] == ["wm0"])
    assert poll_mass_results(db, processor.clients.contact) == Counter({"waiting": 1, "failed": 1})
    requests.post(f"{sandbox.url}/_sandbox/mass_messages/{other}/confirm", json={}, timeout=10).raise_for_status()
    assert poll_mass_results(db, processor.clients.contact) == Counter({"confirmed": 1})
    with db.sessions() as s:
        rows = {r.recipient: r for r in s.scalars(select(OutboxMessage))}
    assert rows["wm0"].status == "confirmed" and rows["wm0"].sent_at is not None
    assert rows["wm1"].status == "failed" and "WeCom cap" in rows["wm1"].reason


def test_a_crash_mid_submit_is_looked_up_never_sent_blindly_twice(wired, sandbox):
    from datetime import UTC, timedelta

    from bot.outbox.mass import resolve_interrupted

    db = wired.extensions["scrm.db"]
    seed_sandbox_and_customers(sandbox, db)
    contact = wired.extensions["scrm.processor"].clients.contact
    now = datetime.now(UTC) - timedelta(seconds=2)  # our clock a little behind WeCom's
    with db.begin() as s:
        for i, text in ((0, "已经到了 WeCom 的"), (1, "还没发出去的")):
            s.add(OutboxMessage(dedupe_key=f"k{i}", channel="mass_message", customer_id=i + 1, recipient=f"wm{i}",
                                sender_userid="zhangsan", trigger_kind="campaign", trigger_ref="r",
                                content={"text": text}, status="sending", updated_at=now - timedelta(minutes=10),
                                scheduled_at=now - timedelta(minutes=10)))
    # the first call reached WeCom before the crash; the second never left
    reached = contact.external_contact.add_msg_template({
        "chat_type": "single", "external_userid": ["wm0"], "sender": "zhangsan",
        "text": {"content": "已经到了 WeCom 的"}})
    assert resolve_interrupted(db, contact, 300, now=now) == Counter({"submitted": 1, "pending": 1})
    with db.sessions() as s:
        rows = {r.recipient: r for r in s.scalars(select(OutboxMessage))}
    assert rows["wm0"].status == "submitted" and rows["wm0"].wecom_msgid == reached["msgid"]
    assert rows["wm1"].status == "pending"
    anytime = ContactPolicy.from_settings(wired.extensions["scrm.settings"])
    from dataclasses import replace
    from datetime import time

    submit_mass_messages(db, contact, replace(anytime, quiet_start=time(0), quiet_end=time(0)), now=now)
    sent = requests.get(f"{sandbox.url}/_sandbox/sent", timeout=10).json()["mass_messages"]
    assert sorted(m["external_userid"][0] for m in sent) == ["wm0", "wm1"]  # each exactly once


def test_the_look_up_takes_a_task_of_this_member_that_no_row_has_already(wired, sandbox):
    """WeCom's list gives no creator for tasks made through the API: the same text to another member, or the
    same text sent to this member before (a row here has its msgid), is not the interrupted call's task."""
    from datetime import UTC, timedelta

    from bot.outbox.mass import resolve_interrupted

    db = wired.extensions["scrm.db"]
    seed_sandbox_and_customers(sandbox, db)
    requests.post(f"{sandbox.url}/_sandbox/seed", json={"staff": [{"userid": "lisi"}], "contacts": [
        {"userid": "lisi", "external_userid": "wmL", "name": "客户L"}]}, timeout=10).raise_for_status()
    contact = wired.extensions["scrm.processor"].clients.contact
    now = datetime.now(UTC) - timedelta(seconds=2)
    text = "双十二会员日"
    earlier = contact.external_contact.add_msg_template({
        "chat_type": "single", "external_userid": ["wm0"], "sender": "zhangsan", "text": {"content": text}})
    contact.external_contact.add_msg_template({
        "chat_type": "single", "external_userid": ["wmL"], "sender": "lisi", "text": {"content": text}})
    with db.begin() as s:
        s.add(OutboxMessage(dedupe_key="k0", channel="mass_message", customer_id=1, recipient="wm0",
                            sender_userid="zhangsan", trigger_kind="campaign", trigger_ref="r", content={"text": text},
                            status="submitted", wecom_msgid=earlier["msgid"], updated_at=now - timedelta(minutes=9),
                            scheduled_at=now - timedelta(minutes=10)))
        s.add(OutboxMessage(dedupe_key="k1", channel="mass_message", customer_id=2, recipient="wm1",
                            sender_userid="zhangsan", trigger_kind="campaign", trigger_ref="r2", content={"text": text},
                            status="sending", updated_at=now - timedelta(minutes=10),
                            scheduled_at=now - timedelta(minutes=10)))
    assert resolve_interrupted(db, contact, 300, now=now) == Counter({"pending": 1})
    with db.sessions() as s:
        assert s.scalar(select(OutboxMessage.status).where(OutboxMessage.recipient == "wm1")) == "pending"


def test_an_interrupted_group_mass_message_is_found_by_its_owner_in_the_task_list(wired, sandbox):
    from datetime import UTC, timedelta

    from bot.outbox.group_mass import resolve_interrupted

    db = wired.extensions["scrm.db"]
    seed_sandbox_and_customers(sandbox, db)
    chat_id = requests.post(f"{sandbox.url}/_sandbox/groups", json={"owner": "zhangsan", "name": "会员群"},
                            timeout=10).json()["chat_id"]
    contact = wired.extensions["scrm.processor"].clients.contact
    now = datetime.now(UTC) - timedelta(seconds=2)
    with db.begin() as s:
        s.add(OutboxMessage(dedupe_key="g1", channel="group_message", recipient=chat_id, sender_userid="zhangsan",
                            trigger_kind="group_broadcast", trigger_ref="r", content={"text": "群福利"},
                            status="sending", updated_at=now - timedelta(minutes=10),
                            scheduled_at=now - timedelta(minutes=10)))
    reached = contact.external_contact.add_msg_template({
        "chat_type": "group", "sender": "zhangsan", "chat_id_list": [chat_id], "text": {"content": "群福利"}})
    assert resolve_interrupted(db, contact, 300, now=now) == Counter({"submitted": 1})
    with db.sessions() as s:
        assert s.scalar(select(OutboxMessage.wecom_msgid).where(OutboxMessage.dedupe_key == "g1")) == reached["msgid"]


def test_a_busy_answer_after_wecom_made_the_task_is_looked_up_not_sent_again(wired, sandbox):
    """-1 (system busy) may come after add_msg_template made the task: no blind retry (the client's busy
    retries skip it), the rows stay "sending", and the look-up finds the task."""
    from dataclasses import replace
    from datetime import time, timedelta

    from bot.outbox.mass import resolve_interrupted

    db = wired.extensions["scrm.db"]
    seed_sandbox_and_customers(sandbox, db)
    plan(wired, db, MID_AUTUMN_MORNING)
    contact = wired.extensions["scrm.processor"].clients.contact
    anytime = replace(ContactPolicy.from_settings(wired.extensions["scrm.settings"]), quiet_start=time(0),
                      quiet_end=time(0))
    now = datetime.now(UTC) - timedelta(seconds=2)  # WeCom's clock: the look-up searches around it
    requests.post(f"{sandbox.url}/_sandbox/faults", json={"path": "externalcontact/add_msg_template", "errcode": -1,
                                                          "after": True}, timeout=10).raise_for_status()
    assert submit_mass_messages(db, contact, anytime, now=now) == Counter({"unknown": 1, "submitted": 2})
    sent = requests.get(f"{sandbox.url}/_sandbox/sent", timeout=10).json()["mass_messages"]
    assert sorted(m["external_userid"] for m in sent) == [["wm0"], ["wm1", "wm2"]]  # each task made once
    assert resolve_interrupted(db, contact, 300, now=now + timedelta(minutes=10)) == Counter({"submitted": 1})
    with db.sessions() as s:
        assert Counter(s.scalars(select(OutboxMessage.status))) == Counter({"submitted": 3, "skipped": 1})
        assert s.scalar(select(func.count()).where(OutboxMessage.wecom_msgid.is_(None),
                                                   OutboxMessage.status == "submitted")) == 0
    assert len(requests.get(f"{sandbox.url}/_sandbox/sent", timeout=10).json()["mass_messages"]) == 2


def test_results_of_a_mass_message_to_more_customers_than_a_page_are_all_recorded(wired, sandbox):
    """get_groupmsg_send_result pages (≤ 1000 rows, next_cursor until empty): a message to 1,205 customers
    records each one's result, the not-friend (2) and capped (3) ones on the second page among them."""
    from dataclasses import replace
    from datetime import time

    from bot.outbox.queue import enqueue

    db, n = wired.extensions["scrm.db"], 1205
    ids = [f"wmP{i:05d}" for i in range(n)]
    requests.post(f"{sandbox.url}/_sandbox/seed", json={"staff": [{"userid": "zhangsan"}], "contacts": [
        {"userid": "zhangsan", "external_userid": e, "name": e} for e in ids]}, timeout=30).raise_for_status()
    with db.begin() as s:
        customers = [Customer(external_userid=e, name=e, owner_userid="zhangsan") for e in ids]
        s.add_all(customers)
        s.flush()
        for customer in customers:
            enqueue(s, channel="mass_message", dedupe_key=f"page:{customer.id}", recipient=customer.external_userid,
                    trigger_kind="campaign", trigger_ref="paging", content={"text": "会员日"},
                    customer_id=customer.id, sender_userid="zhangsan", scheduled_at=MID_AUTUMN_MORNING)
    contact = wired.extensions["scrm.processor"].clients.contact
    anytime = replace(ContactPolicy.from_settings(wired.extensions["scrm.settings"]), quiet_start=time(0),
                      quiet_end=time(0))
    assert submit_mass_messages(db, contact, anytime, now=MID_AUTUMN_MORNING) == Counter({"submitted": n})
    [message] = requests.get(f"{sandbox.url}/_sandbox/sent", timeout=10).json()["mass_messages"]
    requests.post(f"{sandbox.url}/_sandbox/contacts/delete", json={"userid": "zhangsan", "external_userid": ids[1100],
                                                                   "by": "customer"}, timeout=10).raise_for_status()
    requests.post(f"{sandbox.url}/_sandbox/mass_messages/{message['msgid']}/confirm", json={"capped": [ids[1200]]},
                  timeout=10).raise_for_status()

    assert poll_mass_results(db, contact) == Counter({"confirmed": n - 2, "failed": 2})
    calls = requests.get(f"{sandbox.url}/_sandbox/calls", params={"path": "externalcontact/get_groupmsg_send_result"},
                         timeout=10).json()
    assert [("cursor" in c["body"], c["body"]["limit"]) for c in calls] == [(False, 1000), (True, 1000)]
    with db.sessions() as s:
        rows = dict(s.execute(select(OutboxMessage.recipient, OutboxMessage.status)).all())
    assert Counter(rows.values()) == Counter({"confirmed": n - 2, "failed": 2})
    assert (rows[ids[0]], rows[ids[999]], rows[ids[1000]], rows[ids[1204]]) == ("confirmed",) * 4
    assert (rows[ids[1100]], rows[ids[1200]]) == ("failed", "failed")


def test_a_long_chinese_text_is_cut_to_wecoms_4000_bytes_and_accepted(wired, sandbox):
    """WeCom counts text.content in bytes (WECOM.md §5): 1,500 Chinese characters are far under 4000
    characters but 4,500 bytes, which WeCom refuses whole. The row is cut at a character boundary when it is
    queued, and the submission goes through."""
    from dataclasses import replace
    from datetime import time

    from bot.outbox.queue import enqueue

    db = wired.extensions["scrm.db"]
    seed_sandbox_and_customers(sandbox, db)
    contact = wired.extensions["scrm.processor"].clients.contact
    long = "长" * 1500
    with pytest.raises(WeChatClientException) as refused:  # as written, WeCom refuses it
        contact.external_contact.add_msg_template({"external_userid": ["wm0"], "sender": "zhangsan",
                                                   "text": {"content": long}})
    assert refused.value.errcode == 40058
    with db.begin() as s:
        enqueue(s, channel="mass_message", dedupe_key="long", recipient="wm0", trigger_kind="campaign",
                trigger_ref="long", content={"text": long}, customer_id=1, sender_userid="zhangsan",
                scheduled_at=MID_AUTUMN_MORNING)
    anytime = replace(ContactPolicy.from_settings(wired.extensions["scrm.settings"]), quiet_start=time(0),
                      quiet_end=time(0))
    assert submit_mass_messages(db, contact, anytime, now=MID_AUTUMN_MORNING) == Counter({"submitted": 1})
    [message] = requests.get(f"{sandbox.url}/_sandbox/sent", timeout=10).json()["mass_messages"]
    sent = message["text"]["content"]
    assert sent == "长" * 1332 + "…" and len(sent.encode("utf-8")) == 3999
