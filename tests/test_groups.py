"""客户群 through the real webhook: the sandbox makes groups and emits change_external_chat; the bot
keeps groups and members, links customers, records joins and leaves, and heals missed callbacks."""

from __future__ import annotations

from sqlalchemy import select

from bot.contacts.groups import tier_mix
from bot.models import CustomerGroup, CustomerTier, GroupMember, Interaction
from tests.support import control, read


def drain(app) -> dict:
    return dict(app.extensions["scrm.processor"].drain())


def _customers(sandbox, wired, names: dict[str, str]) -> dict[str, str]:
    """Customers added to zhangsan through the webhook; returns name → external_userid."""
    ids = {}
    for name in names:
        ids[name] = control(sandbox, "contacts/add", {"userid": "zhangsan", "name": name, "welcome": False})[
            "external_userid"]
    drain(wired)
    return ids


def _set_tiers(db, tiers: dict[str, tuple[str, str | None]]) -> None:
    from bot.models import Customer

    with db.begin() as s:
        for external_userid, (value_tier, segment) in tiers.items():
            customer = s.scalar(select(Customer).where(Customer.external_userid == external_userid))
            customer.tier = CustomerTier(value_tier=value_tier, rfm_segment=segment)


def test_tier_mix_after_a_join_and_a_leave(wired, sandbox):
    control(sandbox, "seed", {"staff": [{"userid": "zhangsan", "name": "张三"}]})
    ids = _customers(sandbox, wired, {"甲": "", "乙": "", "丙": ""})
    db = wired.extensions["scrm.db"]
    _set_tiers(db, {ids["甲"]: ("high", "important_value"), ids["乙"]: ("high", "important_value"),
                    ids["丙"]: ("low", "general_retain")})
    made = control(sandbox, "groups", {"owner": "zhangsan", "name": "VIP群", "members": [ids["甲"], "wmStranger00001"]})
    assert made["delivery"]["delivered"]
    assert drain(wired) == {"handled": 1}
    with db.sessions() as s:
        group = s.scalar(select(CustomerGroup))
        assert (group.name, group.owner_userid, group.member_version) == ("VIP群", "zhangsan", made["member_version"])
        mix = tier_mix(s, [group.id])[group.id]
        assert (mix.members, mix.customers, mix.value_tiers) == (2, 1, {"high": 1})
    control(sandbox, f"groups/{made['chat_id']}/join", {"members": [ids["乙"], ids["丙"]], "scene": 3})
    control(sandbox, f"groups/{made['chat_id']}/leave", {"members": [ids["甲"]]})
    assert drain(wired) == {"handled": 2}
    with db.sessions() as s:
        group = s.scalar(select(CustomerGroup))
        mix = tier_mix(s, [group.id])[group.id]
        assert (mix.members, mix.customers) == (3, 2)
        assert mix.value_tiers == {"high": 1, "low": 1}
        assert mix.rfm_segments == {"important_value": 1, "general_retain": 1}
        kinds = sorted(s.scalars(select(Interaction.kind).where(Interaction.kind.like("group_%"))))
        assert kinds == ["group_join", "group_join", "group_join", "group_leave"]
        joined = s.scalar(select(GroupMember).where(GroupMember.member_id == ids["乙"]))
        assert joined.join_scene == 3 and joined.customer_id is not None
    # applied in place: one groupchat/get (the create), none for the two member changes
    assert len(read(sandbox, "calls", path="externalcontact/groupchat/get")) == 1


def test_a_missed_callback_is_healed_by_the_next_callback_and_by_sync(wired, sandbox):
    control(sandbox, "seed", {"staff": [{"userid": "zhangsan"}]})
    ids = _customers(sandbox, wired, {"甲": "", "乙": "", "丙": ""})
    made = control(sandbox, "groups", {"owner": "zhangsan", "name": "打卡群", "members": [ids["甲"]]})
    chat = made["chat_id"]
    drain(wired)
    control(sandbox, f"groups/{chat}/join", {"members": [ids["乙"]], "emit": False})  # lost on the way
    control(sandbox, f"groups/{chat}/join", {"members": [ids["丙"]]})
    assert drain(wired) == {"handled": 1}
    db = wired.extensions["scrm.db"]
    with db.sessions() as s:
        group = s.scalar(select(CustomerGroup))
        present = {m.member_id for m in group.members if m.left_at is None}
        assert {ids["甲"], ids["乙"], ids["丙"]} <= present  # the version did not follow: read again
    assert len(read(sandbox, "calls", path="externalcontact/groupchat/get")) == 2
    control(sandbox, f"groups/{chat}/leave", {"members": [ids["甲"]], "emit": False})
    control(sandbox, f"groups/{chat}/update", {"name": "打卡群2", "emit": False})
    other = control(sandbox, "groups", {"owner": "zhangsan", "name": "种草群", "emit": False})["chat_id"]
    result = sync(wired)
    assert (result.groups, result.left) == (2, 1)
    with db.sessions() as s:
        group = s.scalar(select(CustomerGroup).where(CustomerGroup.chat_id == chat))
        assert group.name == "打卡群2"
        assert next(m for m in group.members if m.member_id == ids["甲"]).left_at is not None
        assert s.scalar(select(CustomerGroup).where(CustomerGroup.chat_id == other)) is not None
    control(sandbox, f"groups/{other}/dismiss", {"emit": False})
    assert sync(wired).dismissed == 1


def sync(app):
    from bot.contacts.groups import sync_groups
    from bot.models import utcnow
    from bot.tagging.rules import TagRules
    from bot.wecom.client import build_clients
    from bot.wecom.groups import group_chat

    settings = app.extensions["scrm.settings"]
    api = group_chat(build_clients(settings).contact)
    return sync_groups(app.extensions["scrm.db"].begin, api, TagRules.from_settings(settings), False, utcnow, limit=1)


def test_sync_names_owners_when_the_range_is_over_1000_people(wired, sandbox):
    """groupchat/list without owner_filter fails with 81017 over 1000 people: sync then lists by
    owner, 100 a call, and marks nothing dismissed from a partial view."""
    from bot.models import Staff

    control(sandbox, "seed", {"staff": [{"userid": f"u{i:04d}"} for i in range(1001)]})
    chats = [control(sandbox, "groups", {"owner": f"u{i:04d}", "name": f"群{i}", "emit": False})["chat_id"]
             for i in (1, 150, 1000)]
    db = wired.extensions["scrm.db"]
    with db.begin() as s:
        s.add_all([Staff(userid=f"u{i:04d}") for i in range(1001)])
        s.add(CustomerGroup(chat_id="wrGoneLongAgo", tags=[]))
    result = sync(wired)
    assert (result.groups, result.dismissed) == (3, 0)
    calls = read(sandbox, "calls", path="externalcontact/groupchat/list")
    assert calls[0]["errcode"] == 81017
    assert all(len(c["body"]["owner_filter"]["userid_list"]) <= 100 for c in calls[1:])
    with db.sessions() as s:
        assert set(s.scalars(select(CustomerGroup.chat_id))) == {*chats, "wrGoneLongAgo"}


def test_late_callbacks_for_a_dismissed_group_do_not_fail(wired, sandbox):
    control(sandbox, "seed", {"staff": [{"userid": "zhangsan"}]})
    chat = control(sandbox, "groups", {"owner": "zhangsan", "name": "快闪群", "emit": False})["chat_id"]
    control(sandbox, f"groups/{chat}/join", {"members": ["wmLate0000000001"], "emit": False})
    control(sandbox, f"groups/{chat}/dismiss", {"emit": False})
    control(sandbox, "callback", {"fields": {"FromUserName": "sys", "MsgType": "event",
                                             "Event": "change_external_chat", "ChatId": chat, "ChangeType": "create"}})
    control(sandbox, "callback", {"fields": {"FromUserName": "sys", "MsgType": "event",
                                             "Event": "change_external_chat", "ChatId": chat, "ChangeType": "dismiss"}})
    control(sandbox, "callback", {"fields": {"FromUserName": "sys", "MsgType": "event", "Event": "change_external_chat",
                                             "ChatId": chat, "ChangeType": "update", "UpdateDetail": "change_name"}})
    assert drain(wired) == {"handled": 3}
    known = control(sandbox, "groups", {"owner": "zhangsan", "name": "老群"})["chat_id"]
    assert drain(wired) == {"handled": 1}
    control(sandbox, f"groups/{known}/dismiss", {})
    control(sandbox, "callback", {"fields": {"FromUserName": "sys", "MsgType": "event", "Event": "change_external_chat",
                                             "ChatId": known, "ChangeType": "update", "UpdateDetail": "add_member",
                                             "LastMemVer": "x", "CurMemVer": "y"}})
    assert drain(wired) == {"handled": 2}
    with wired.extensions["scrm.db"].sessions() as s:
        assert s.scalar(select(CustomerGroup).where(CustomerGroup.chat_id == known)).dismissed_at is not None


def test_the_nightly_resync_heals_groups_too(wired, sandbox):
    from bot.schedule import jobs

    control(sandbox, "seed", {"staff": [{"userid": "zhangsan"}]})
    chat = control(sandbox, "groups", {"owner": "zhangsan", "name": "没收到回调的群", "emit": False})["chat_id"]
    processor = wired.extensions["scrm.processor"]
    jobs.install(jobs.Runtime(wired.extensions["scrm.settings"], wired.extensions["scrm.db"], processor.clients))
    try:
        result = jobs.contacts_resync()
    finally:
        jobs.install(None)  # type: ignore[arg-type]
    assert result["groups"]["groups"] == 1
    with wired.extensions["scrm.db"].sessions() as s:
        assert s.scalar(select(CustomerGroup.name).where(CustomerGroup.chat_id == chat)) == "没收到回调的群"
