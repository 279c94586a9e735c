"""Event handlers end to end: the sandbox delivers encrypted callbacks to the real webhook, the
bot calls the sandbox's API, and what reaches customers is read back from the sandbox."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from bot.models import Customer, CustomerTag, InboxEvent, Interaction, OutboxMessage, Tag, TagGroup, utcnow
from tests.support import control, read

CHANNEL = "live_0618"


@pytest.fixture
def overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    return {**overrides, "contacts": {"channels": {CHANNEL: {"tags": ["渠道/直播间"], "stage": "new"}}},
            "app": {**overrides["app"], "brand_name": "测试店"}}


def drain(app) -> dict:
    return dict(app.extensions["scrm.processor"].drain())


def live_tags(db, external_userid: str) -> set[str]:
    with db.sessions() as s:
        rows = s.execute(select(TagGroup.name, Tag.name).join(Tag).join(CustomerTag).join(Customer)
                         .where(Customer.external_userid == external_userid, CustomerTag.removed_at.is_(None)))
        return {f"{g}/{n}" for g, n in rows}


def wecom_tags(sandbox, external_userid: str) -> set[str]:
    follows = read(sandbox, f"contacts/{external_userid}")["follows"]
    return {f"{t['group_name']}/{t['tag_name']}" for f in follows for t in f["tags"]}


def known_customer(db, external_userid: str, name: str, tier: str, segment: str | None) -> None:
    with db.begin() as s:
        s.add(Customer(external_userid=external_userid, name=name, value_tier=tier, rfm_segment=segment,
                       stage="repeat"))


@pytest.fixture
def staff(sandbox):
    control(sandbox, "seed", {"staff": [{"userid": "zhangsan", "name": "张三"}],
                              "kf_accounts": [{"open_kfid": "wkSHOP", "name": "官方客服"}]})


# ---------------------------------------------------------------- new customers


def test_channel_add_tags_customer_here_and_in_wecom_and_welcomes(wired, sandbox, staff):
    added = control(sandbox, "contacts/add", {"userid": "zhangsan", "name": "李四", "state": CHANNEL})
    assert drain(wired) == {"handled": 1}
    db = wired.extensions["scrm.db"]
    assert live_tags(db, added["external_userid"]) == {"渠道/直播间"}
    assert wecom_tags(sandbox, added["external_userid"]) == {"渠道/直播间"}  # mark_tag reached WeCom
    welcomes = read(sandbox, "sent")["welcomes"]
    assert len(welcomes) == 1 and welcomes[0]["sent_at"] - welcomes[0]["issued_at"] < 20
    assert "李四您好，我是测试店的张三" in welcomes[0]["text"]
    with db.sessions() as s:
        customer = s.scalar(select(Customer))
        assert customer.stage == "new"
        row = s.scalar(select(OutboxMessage))
        assert (row.channel, row.status, row.content["template"]) == ("welcome", "sent", "welcome/default.j2")
        assert s.scalar(select(CustomerTag)).push_state is None


def test_the_welcome_goes_out_before_the_channel_tags_are_pushed(wired, sandbox, staff):
    """Tag pushes (tag list, add, mark: up to three WeCom calls) used to run inside the event, between
    the new customer and the welcome's 20 s; they now follow the commit and the welcome."""
    control(sandbox, "contacts/add", {"userid": "zhangsan", "name": "李四", "state": CHANNEL})
    assert drain(wired) == {"handled": 1}
    paths = [c["path"] for c in read(sandbox, "calls")]
    assert paths.index("externalcontact/send_welcome_msg") < paths.index("externalcontact/mark_tag")


def test_a_tag_push_that_gets_no_answer_leaves_the_tag_for_the_next_sync_and_the_event_handled(
        wired, sandbox, staff):
    """A transport error (not a WeCom errcode) in mark_tag used to fail the add event after the fact:
    its retry came too late for the welcome. The event is handled, the welcome sent, the tag left to push."""
    wired.extensions["scrm.processor"].clients.contact.timeout = 0.5
    control(sandbox, "delays", {"path": "externalcontact/mark_tag", "seconds": 2.0, "mode": "drop", "count": 1})
    added = control(sandbox, "contacts/add", {"userid": "zhangsan", "name": "李四", "state": CHANNEL})
    assert drain(wired) == {"handled": 1}
    assert len(read(sandbox, "sent")["welcomes"]) == 1
    db = wired.extensions["scrm.db"]
    assert live_tags(db, added["external_userid"]) == {"渠道/直播间"}
    with db.sessions() as s:
        assert s.scalar(select(CustomerTag)).push_state == "add"  # still to push: `scrm sync tags` does it


def test_with_archiving_on_the_welcome_follows_the_customers_consent(wired, sandbox, staff):
    """Where 会话存档 is on, the add carries no WelcomeCode; msg_audit_approved brings it (WECOM.md §2)."""
    added = control(sandbox, "contacts/add", {"userid": "zhangsan", "name": "李四", "welcome": False})
    assert drain(wired) == {"handled": 1}
    assert read(sandbox, "sent")["welcomes"] == []
    control(sandbox, "contacts/archive-approved", {"userid": "zhangsan", "external_userid": added["external_userid"]})
    assert drain(wired) == {"handled": 1}
    [welcome] = read(sandbox, "sent")["welcomes"]
    assert "李四您好，我是测试店的张三" in welcome["text"] and welcome["sent_at"] - welcome["issued_at"] < 20


def test_adding_a_member_is_recorded_but_is_not_yet_an_exchange(wired, sandbox, staff):
    """Seed 003: 陌生用户 have not interacted; 潜在 have chatted or liked. The add is recorded (and weighs in
    activity), but it no longer sets last_interaction_at, which made every new contact 潜在 on the
    high-ticket path at once (the stage rule itself: tests/test_tiering_engine.py); a kf message does."""
    db = wired.extensions["scrm.db"]
    added = control(sandbox, "contacts/add", {"userid": "zhangsan", "name": "李四"})
    assert drain(wired) == {"handled": 1}
    with db.sessions() as s:
        customer = s.scalar(select(Customer).where(Customer.external_userid == added["external_userid"]))
        assert customer.last_interaction_at is None
        assert s.scalar(select(Interaction.kind).where(Interaction.customer_id == customer.id)) == "added"
    kf_say(sandbox, added["external_userid"], "你好")
    drain(wired)
    with db.sessions() as s:
        assert s.scalar(select(Customer.last_interaction_at).where(
            Customer.external_userid == added["external_userid"])) is not None


def test_returning_vip_gets_the_vip_welcome(wired, sandbox, staff):
    db = wired.extensions["scrm.db"]
    known_customer(db, "wmVIP", "王总", "high", "important_value")
    known_customer(db, "wmGOLD", "赵姐", "high", "important_retain")
    for external_userid in ("wmVIP", "wmGOLD", "wmNEW"):
        control(sandbox, "contacts/add", {"userid": "zhangsan", "external_userid": external_userid, "name": "客户"})
    drain(wired)
    with db.sessions() as s:
        used = dict(s.execute(select(OutboxMessage.recipient, OutboxMessage.content)).all())
    assert used["wmVIP"]["template"] == "welcome/default.important_value.j2"
    assert used["wmGOLD"]["template"] == "welcome/default.high.j2"
    assert used["wmNEW"]["template"] == "welcome/default.j2"
    texts = {w["external_userid"]: w["text"] for w in read(sandbox, "sent")["welcomes"]}
    assert "好久不见" in texts["wmVIP"] and "专属客服" in texts["wmGOLD"] and "很高兴认识您" in texts["wmNEW"]


def test_no_welcome_code_and_a_missed_window_are_recorded_not_sent(wired, sandbox, staff):
    control(sandbox, "contacts/add", {"userid": "zhangsan", "name": "甲", "welcome": False})
    sender = wired.extensions["scrm.processor"].sender
    sender.clock = lambda: utcnow() + timedelta(seconds=25)  # processing fell 25 s behind
    control(sandbox, "contacts/add", {"userid": "zhangsan", "name": "乙"})
    drain(wired)
    with wired.extensions["scrm.db"].sessions() as s:
        rows = s.scalars(select(OutboxMessage).order_by(OutboxMessage.id)).all()
    assert [r.status for r in rows] == ["skipped", "skipped"]
    assert "no WelcomeCode" in rows[0].reason and "window passed" in rows[1].reason
    assert read(sandbox, "sent")["welcomes"] == []


def test_welcome_already_delivered_is_not_retried(wired, sandbox, staff):
    control(sandbox, "faults", {"path": "externalcontact/send_welcome_msg", "errcode": 41051})
    control(sandbox, "contacts/add", {"userid": "zhangsan", "name": "丙"})
    assert drain(wired) == {"handled": 1}
    wired.extensions["scrm.processor"].sender.send_due()
    with wired.extensions["scrm.db"].sessions() as s:
        row = s.scalar(select(OutboxMessage))
    assert row.status == "failed" and row.reason.startswith("WeCom 41051")
    assert len(read(sandbox, "calls", path="externalcontact/send_welcome_msg")) == 1


def test_staff_tag_edits_in_wecom_flow_back_and_synonyms_fold(wired, sandbox, staff):
    added = control(sandbox, "contacts/add", {"userid": "zhangsan", "name": "丁"})
    ids = {"userid": "zhangsan", "external_userid": added["external_userid"]}
    control(sandbox, "contacts/edit", {**ids, "add_tags": ["客户等级/金牌", "其他/客户已下单"]})
    drain(wired)
    db = wired.extensions["scrm.db"]
    assert live_tags(db, ids["external_userid"]) == {"客户等级/金牌", "交易/客户首单"}
    control(sandbox, "contacts/edit", {**ids, "remove_tags": ["客户等级/金牌"]})
    drain(wired)
    assert live_tags(db, ids["external_userid"]) == {"交易/客户首单"}
    with db.sessions() as s:
        removed = s.scalar(select(CustomerTag).where(CustomerTag.removed_at.is_not(None)))
        assert removed.removed_by == "zhangsan"  # history kept, with who removed it


def test_customer_leaving_alerts_the_owner(wired, sandbox, staff):
    added = control(sandbox, "contacts/add", {"userid": "zhangsan", "name": "戊"})
    drain(wired)
    control(sandbox, "contacts/delete", {"userid": "zhangsan", "external_userid": added["external_userid"],
                                         "by": "customer"})
    drain(wired)
    alerts = read(sandbox, "sent")["app_messages"]
    assert len(alerts) == 1 and alerts[0]["touser"] == "zhangsan"
    assert "流失提醒" in alerts[0]["text"]["content"] and "戊" in alerts[0]["text"]["content"]
    with wired.extensions["scrm.db"].sessions() as s:
        assert s.scalar(select(func.count()).select_from(Interaction).where(Interaction.kind == "churn_signal")) == 1


def test_corp_tag_changes_in_the_console_are_mirrored(wired, sandbox, staff):
    created = control(sandbox, "tags", {"name": "兴趣/户外"})
    drain(wired)
    db = wired.extensions["scrm.db"]
    with db.sessions() as s:
        assert s.scalar(select(Tag.name).where(Tag.wecom_tag_id == created["id"])) == "户外"
    control(sandbox, "tags", {"id": created["id"], "name": "户外运动"})
    assert drain(wired) == {"handled": 1}
    with db.sessions() as s:
        assert s.scalar(select(Tag.name).where(Tag.wecom_tag_id == created["id"])) == "户外运动"
    control(sandbox, "tags", {"id": created["id"], "delete": True})
    assert drain(wired) == {"handled": 1}
    with db.sessions() as s:
        assert s.scalar(select(Tag.deleted).where(Tag.wecom_tag_id == created["id"])) is True


# ---------------------------------------------------------------- 微信客服


def kf_say(sandbox, external_userid: str, *contents: str, **extra: Any) -> dict[str, Any]:
    return control(sandbox, "kf/text", {"open_kfid": "wkSHOP", "external_userid": external_userid,
                                        "contents": list(contents), **extra})


def kf_replies(sandbox, external_userid: str) -> list[str]:
    return [m["text"]["content"] for m in read(sandbox, "sent")["kf"] if m["touser"] == external_userid]


def test_writing_to_kf_soon_after_a_push_counts_as_a_campaign_reply_once(wired, sandbox, staff):
    """DESIGN §4.4 counts campaign replies towards activity; the reply the service can see is a message
    to 微信客服 within tiers.campaign_reply_days of a push that reached the customer."""
    db = wired.extensions["scrm.db"]
    known_customer(db, "wmPUSHED", "周先生", "mid", None)
    known_customer(db, "wmQUIET", "吴女士", "mid", None)
    known_customer(db, "wmSTOP", "郑女士", "mid", None)
    with db.begin() as s:
        for external_userid, status in (("wmPUSHED", "confirmed"), ("wmQUIET", "submitted"), ("wmSTOP", "confirmed")):
            customer_id = s.scalar(select(Customer.id).where(Customer.external_userid == external_userid))
            s.add(OutboxMessage(dedupe_key=f"push:{external_userid}", channel="mass_message", customer_id=customer_id,
                                recipient=external_userid, trigger_kind="campaign", trigger_ref="双11",
                                content={"text": "双11 会员价"}, status=status, sent_at=utcnow() - timedelta(days=1)))
    kf_say(sandbox, "wmPUSHED", "你们双11的活动还有吗", "多少钱")
    kf_say(sandbox, "wmQUIET", "你好")
    kf_say(sandbox, "wmSTOP", "退订")
    drain(wired)
    with db.sessions() as s:
        replies = s.execute(select(Customer.external_userid, Interaction.detail).join(Interaction)
                            .where(Interaction.kind == "campaign_reply")).all()
    # once per push; not for one the member never sent, nor for 退订 (no engagement with the push)
    assert [r[0] for r in replies] == ["wmPUSHED"]


def test_price_question_gets_a_reply_for_the_customers_tier(wired, sandbox, staff):
    db = wired.extensions["scrm.db"]
    known_customer(db, "wmHIGH", "王总", "high", None)
    known_customer(db, "wmLOW", "小李", "low", None)
    kf_say(sandbox, "wmHIGH", "这个多少钱？")
    kf_say(sandbox, "wmLOW", "这个多少钱？")
    assert drain(wired) == {"handled": 2}
    high, low = kf_replies(sandbox, "wmHIGH"), kf_replies(sandbox, "wmLOW")
    assert len(high) == 1 and "专属客户经理" in high[0]
    assert len(low) == 1 and "促销" in low[0]
    assert "意向/问过价格" in live_tags(db, "wmHIGH")  # keyword auto-tag rule
    with db.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Interaction).where(Interaction.kind == "kf_message")) == 2


def test_a_message_read_hours_after_it_was_written_gets_no_automatic_reply(wired, sandbox, staff, monkeypatch):
    """A first sync (or one after an outage) reads three days back: the bot does not answer hours late."""
    import handlers.kf

    kf_say(sandbox, "wmLATE", "多少钱")
    read_at = utcnow() + timedelta(minutes=61)
    monkeypatch.setattr(handlers.kf, "utcnow", lambda: read_at)
    assert drain(wired) == {"handled": 1}
    assert kf_replies(sandbox, "wmLATE") == []
    with wired.extensions["scrm.db"].sessions() as s:
        row = s.scalar(select(OutboxMessage))
        assert s.scalar(select(func.count()).select_from(Interaction).where(Interaction.kind == "kf_message")) == 1
    assert row.status == "skipped" and "too old to answer automatically" in row.reason
    assert "kf.reply_max_age_minutes = 60" in row.reason


def test_a_malformed_kf_message_is_skipped_and_the_sync_goes_on(wired, sandbox, staff):
    """A customer message without external_userid used to fail the page for good: the cursor stayed put,
    and every later sync of the kf account failed on it."""
    kf_say(sandbox, "", "坏消息", deliver=False)
    kf_say(sandbox, "wmFINE", "多少钱")
    assert drain(wired) == {"handled": 1}
    assert len(kf_replies(sandbox, "wmFINE")) == 1
    kf_say(sandbox, "wmFINE", "在吗")
    assert drain(wired) == {"handled": 1}


def test_sixth_reply_in_a_window_is_not_sent_and_says_why(wired, sandbox, staff):
    kf_say(sandbox, "wmBUSY", *["多少钱"] * 6)
    drain(wired)
    assert len(kf_replies(sandbox, "wmBUSY")) == 5
    with wired.extensions["scrm.db"].sessions() as s:
        rows = s.scalars(select(OutboxMessage).order_by(OutboxMessage.id)).all()
    assert [r.status for r in rows] == ["sent"] * 5 + ["skipped"]
    assert "window full" in rows[-1].reason and "5" in rows[-1].reason
    assert not [m for m in read(sandbox, "sent")["kf"] if not m["delivered"]]  # WeCom never had to refuse


def test_a_default_reply_held_back_by_the_cooldown_is_kept_as_skipped_with_why(wired, sandbox, staff):
    """DESIGN §6: the reason for every skip is stored; the cooldown's skip used to leave no row."""
    kf_say(sandbox, "wmCHAT", "在吗")
    kf_say(sandbox, "wmCHAT", "有人吗")
    drain(wired)
    assert len(kf_replies(sandbox, "wmCHAT")) == 1
    with wired.extensions["scrm.db"].sessions() as s:
        rows = s.scalars(select(OutboxMessage).order_by(OutboxMessage.id)).all()
    assert [r.status for r in rows] == ["sent", "skipped"] and "cooldown" in rows[1].reason


def test_opt_out_word_stops_broadcasts_and_is_confirmed_once(wired, sandbox, staff):
    kf_say(sandbox, "wmQUIT", "退订")
    kf_say(sandbox, "wmQUIT", " td ")
    drain(wired)
    db = wired.extensions["scrm.db"]
    with db.sessions() as s:
        customer = s.scalar(select(Customer).where(Customer.external_userid == "wmQUIT"))
        assert customer.opted_out and customer.opted_out_at is not None
    replies = kf_replies(sandbox, "wmQUIT")
    assert len(replies) == 1 and "已为您退订" in replies[0]
    kf_say(sandbox, "wmQUIT", "恢复订阅")
    drain(wired)
    with db.sessions() as s:
        assert not s.scalar(select(Customer.opted_out).where(Customer.external_userid == "wmQUIT"))


def test_crash_between_sync_pages_resumes_from_the_saved_cursor(wired, sandbox, staff):
    control(sandbox, "kf/page_limit", {"limit": 2})
    control(sandbox, "faults", {"path": "kf/sync_msg", "errcode": 0})
    control(sandbox, "faults", {"path": "kf/sync_msg", "errcode": 50001})  # the second page fails
    kf_say(sandbox, "wmPAGE", "多少钱", "价格呢", "怎么卖", "优惠吗", "打折吗")
    assert drain(wired) == {"failed": 1}
    assert len(kf_replies(sandbox, "wmPAGE")) == 2  # the first page was handled and its replies sent
    with wired.extensions["scrm.db"].sessions() as s:
        failed = s.scalar(select(InboxEvent).where(InboxEvent.status == "failed"))
        assert "50001" in failed.last_error
    wired.extensions["scrm.processor"].retry(failed.id)
    assert drain(wired) == {"handled": 1}
    cursors = [c["body"].get("cursor", "") for c in read(sandbox, "calls", path="kf/sync_msg")]
    assert cursors == ["", "c2", "c2", "c4"]
    assert len(kf_replies(sandbox, "wmPAGE")) == 5
    with wired.extensions["scrm.db"].sessions() as s:
        assert s.scalar(select(func.count()).select_from(Interaction)) == 5


def test_other_message_types_devices_and_servicers_are_handled(wired, sandbox, staff):
    kf_say(sandbox, "wmPIC", msgtype="image")
    drain(wired)
    assert len(kf_replies(sandbox, "wmPIC")) == 1  # a default reply
    kf_say(sandbox, "wmPIC", "我刚发了张图", origin=5, servicer_userid="zhangsan")
    kf_say(sandbox, "wmPIC", "多少钱")
    drain(wired)
    assert len(kf_replies(sandbox, "wmPIC")) == 1  # a person is answering: the bot stays quiet
    with wired.extensions["scrm.db"].sessions() as s:
        last = s.scalar(select(OutboxMessage).order_by(OutboxMessage.id.desc()))
        assert last.status == "skipped" and "servicer" in last.reason
        kinds = s.execute(select(Interaction.kind, Interaction.detail)).all()
    assert ("kf_message", "image") in {(k, d.get("msgtype")) for k, d in kinds}


def test_asking_for_a_person_hands_the_session_to_the_waiting_pool_after_saying_so(wired, sandbox, staff):
    """转人工: the reply says a person is coming, then the session goes to WeCom's waiting pool
    (kf/service_state/trans to 2); the bot stays quiet while a servicer has it and answers again once
    the servicer ends the session."""
    kf_say(sandbox, "wmHUMAN", "转人工")
    assert drain(wired) == {"handled": 1}
    [reply] = kf_replies(sandbox, "wmHUMAN")
    assert "人工" in reply
    [trans] = read(sandbox, "calls", path="kf/service_state/trans")
    assert trans["errcode"] == 0 and trans["body"]["service_state"] == 2
    assert trans["body"]["external_userid"] == "wmHUMAN" and trans["body"]["open_kfid"] == "wkSHOP"
    paths = [c["path"] for c in read(sandbox, "calls")]
    assert paths.index("kf/send_msg") < paths.index("kf/service_state/trans")  # said before handed over

    kf_say(sandbox, "wmHUMAN", "多少钱")  # waiting in the pool: WeCom would refuse a send (95018)
    control(sandbox, "kf/servicer", {"open_kfid": "wkSHOP", "external_userid": "wmHUMAN",
                                     "servicer_userid": "zhangsan", "action": "take"})
    kf_say(sandbox, "wmHUMAN", "价格呢")
    drain(wired)
    assert len(kf_replies(sandbox, "wmHUMAN")) == 1
    assert all(c["errcode"] == 0 for c in read(sandbox, "calls", path="kf/send_msg"))
    with wired.extensions["scrm.db"].sessions() as s:
        skipped = s.scalars(select(OutboxMessage).where(OutboxMessage.status == "skipped")).all()
    assert len(skipped) == 2 and all("with a person" in r.reason for r in skipped)

    control(sandbox, "kf/servicer", {"open_kfid": "wkSHOP", "external_userid": "wmHUMAN", "action": "end"})
    kf_say(sandbox, "wmHUMAN", "还在吗 多少钱")
    drain(wired)
    assert len(kf_replies(sandbox, "wmHUMAN")) == 2  # the session ended: the bot answers the new one


def test_a_reply_over_wecoms_byte_limit_is_sent_shortened_not_refused(overrides, sandbox, sandbox_state, tmp_path):
    """kf text is at most 2048 bytes: a reply template that quotes the customer's own message (up to
    2048 bytes itself) went over it, and WeCom refused the whole reply."""
    from bot.web.app import create_app
    from bot.web.serving import BackgroundServer

    (tmp_path / "reply").mkdir()
    (tmp_path / "reply" / "price.j2").write_text("您问的是：{{ text }}。我们的价格……", encoding="utf-8")
    settings = {**overrides, "wecom": {**overrides["wecom"], "api_base_url": f"{sandbox.url}/cgi-bin/"},
                "app": {**overrides["app"], "templates_dir": str(tmp_path)}}
    app = create_app(settings, environ={}, start_worker=False)
    try:
        with BackgroundServer(app) as bot:
            sandbox_state.config.callback_url = f"{bot.url}/wecom/callback"
            control(sandbox, "seed", {"kf_accounts": [{"open_kfid": "wkSHOP", "name": "官方客服"}]})
            kf_say(sandbox, "wmLONG", "多少钱" + "很" * 680)  # 2,049 bytes of the customer's own
            assert drain(app) == {"handled": 1}
        [reply] = kf_replies(sandbox, "wmLONG")
        assert len(reply.encode("utf-8")) <= 2048 and reply.startswith("您问的是：多少钱很") and reply.endswith("…")
        [call] = read(sandbox, "calls", path="kf/send_msg")
        assert call["errcode"] == 0
    finally:
        app.extensions["scrm.db"].dispose()


def test_fit_text_cuts_at_a_character_boundary_within_each_channels_limit():
    from bot.outbox.queue import fit_text

    assert fit_text("kf", "短") == "短"
    assert fit_text("kf", "a" * 2048) == "a" * 2048
    cut = fit_text("kf", "会" * 700)  # 2,100 bytes
    assert len(cut.encode("utf-8")) <= 2048 and cut == "会" * 681 + "…"
    assert len(fit_text("welcome", "x" * 5000).encode("utf-8")) == 4000
    assert fit_text("mass_message", "y" * 4000) == "y" * 4000
    assert fit_text("unknown_channel", "z" * 9000) == "z" * 9000


def test_a_hand_over_wecom_refuses_leaves_the_session_with_the_bot(wired, sandbox, staff):
    """If WeCom refuses the transfer (wrong state, no servicer receiving), nobody has the customer: the
    bot must keep answering rather than stay silent for the session's 48 h."""
    control(sandbox, "faults", {"path": "kf/service_state/trans", "errcode": 95016})
    kf_say(sandbox, "wmALONE", "转人工")
    drain(wired)
    kf_say(sandbox, "wmALONE", "多少钱")
    drain(wired)
    assert len(kf_replies(sandbox, "wmALONE")) == 2
    with wired.extensions["scrm.db"].sessions() as s:
        assert s.scalar(select(OutboxMessage).where(OutboxMessage.status == "skipped")) is None


def test_entering_a_session_gets_a_welcome_within_20_seconds(wired, sandbox, staff):
    entered = control(sandbox, "kf/enter_session", {"open_kfid": "wkSHOP", "external_userid": "wmENTER",
                                                    "scene": "homepage"})
    drain(wired)
    sent = [m for m in read(sandbox, "sent")["kf"] if m["touser"] == "wmENTER"]
    assert len(sent) == 1 and "欢迎咨询测试店" in sent[0]["text"]["content"]
    calls = read(sandbox, "calls", path="kf/send_msg_on_event")
    assert calls[0]["body"]["code"] == entered["welcome_code"]


def test_a_burst_of_adds_is_welcomed_by_several_inbox_threads_at_once(wired, sandbox, staff):
    """Each add waits for externalcontact/get before its welcome; one thread took them one after another,
    and in a burst the welcome codes of the later ones expired (59 of 120 welcomed at 150 ms a call)."""
    import time

    from bot.inbox.worker import InboxWorker

    processor = wired.extensions["scrm.processor"]
    control(sandbox, "delays", {"path": "externalcontact/get", "seconds": 2.0, "count": 8})
    worker = InboxWorker(processor, 0.05, sender=processor.sender, threads=4)
    started = time.monotonic()
    worker.start()
    try:
        for i in range(8):
            control(sandbox, "contacts/add", {"userid": "zhangsan", "name": f"客户{i}"})
        while len(read(sandbox, "sent")["welcomes"]) < 8 and time.monotonic() - started < 30:
            time.sleep(0.1)
    finally:
        worker.stop()
    assert len(read(sandbox, "sent")["welcomes"]) == 8
    assert time.monotonic() - started < 12  # one thread needs 16 s for the look-ups alone, four about 4 s


def test_callbacks_of_one_kf_account_handled_by_several_threads_sync_one_at_a_time(wired, sandbox, staff):
    """Each kf callback starts a sync of its account; two threads syncing from one cursor read the same
    page and the second failed on a unique key (the demo showed it once threads came). A callback that
    finds its account's sync running asks it for one more round instead of waiting for a thread."""
    import time

    from bot.inbox.worker import InboxWorker

    processor, db = wired.extensions["scrm.processor"], wired.extensions["scrm.db"]
    control(sandbox, "delays", {"path": "kf/sync_msg", "seconds": 0.3, "count": 3})
    for i in range(6):
        kf_say(sandbox, f"wmKF{i}", "多少钱")
    worker = InboxWorker(processor, 0.05, sender=processor.sender, threads=4)
    started = time.monotonic()
    worker.start()
    try:
        while time.monotonic() - started < 20:
            with db.sessions() as s:
                if not s.scalar(select(func.count()).select_from(InboxEvent).where(
                        InboxEvent.status.notin_(("handled", "unhandled")))):
                    break
            time.sleep(0.1)
    finally:
        worker.stop()
    with db.sessions() as s:
        assert Counter(s.scalars(select(InboxEvent.status))) == Counter({"handled": 6})
        assert s.scalar(select(func.count()).select_from(InboxEvent).where(InboxEvent.attempts > 1)) == 0
    assert all(len(kf_replies(sandbox, f"wmKF{i}")) == 1 for i in range(6))
    from_start = [c for c in read(sandbox, "calls", path="kf/sync_msg") if not c["body"].get("cursor")]
    assert len(from_start) == 1  # no second sync read the first page again


def test_a_kf_scene_picks_its_welcome_template_as_wecom_spells_scenes():
    from handlers.kf import welcome_template_name

    assert welcome_template_name("spring-sale") == "spring-sale"  # [0-9a-zA-Z_-], ≤ 32 bytes (WECOM.md §3)
    assert welcome_template_name("homepage_2") == "homepage_2"
    for hostile in ("", "../reply/price", "a/b", "春季", "x" * 33, "a.b"):
        assert welcome_template_name(hostile) == "default"
