"""The sandbox's 客户群 endpoints answer with WeCom's shapes, limits and error codes, and the bot's
parsing takes every shape of MemChangeList; a hostile change_external_chat fails alone."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from bot.contacts.groups import member_change_list
from bot.models import InboxEvent
from bot.sandbox import create_sandbox_app
from bot.wecom.groups import ScrmGroupChat
from tests.support import secret_for


@pytest.fixture
def api(sandbox_state, corp):
    client = create_sandbox_app(sandbox_state).test_client()
    query = {"corpid": corp.corp_id, "corpsecret": secret_for(corp, "contact")}
    token = client.get("/cgi-bin/gettoken", query_string=query).json["access_token"]
    sandbox_state.add_staff("zhangsan")
    sandbox_state.add_staff("lisi")

    def call(path: str, body: dict[str, Any] | None = None, control: bool = False) -> dict[str, Any]:
        if control:
            return client.post(f"/_sandbox/{path}", json={"emit": False, **(body or {})}).json
        return client.post(f"/cgi-bin/{path}", query_string={"access_token": token}, json=body or {}).json

    return call


def test_list_pages_with_cursor_and_checks_its_limits(api):
    chats = {api("groups", {"owner": "zhangsan", "name": f"群{i}"}, control=True)["chat_id"] for i in range(3)}
    api("groups", {"owner": "lisi", "name": "别人的群"}, control=True)
    first = api("externalcontact/groupchat/list", {"limit": 2, "owner_filter": {"userid_list": ["zhangsan"]}})
    assert first["errcode"] == 0 and len(first["group_chat_list"]) == 2 and first["next_cursor"]
    second = api("externalcontact/groupchat/list", {"limit": 2, "cursor": first["next_cursor"],
                                                    "owner_filter": {"userid_list": ["zhangsan"]}})
    assert second["next_cursor"] == "" and {c["chat_id"] for c in first["group_chat_list"] + second[
        "group_chat_list"]} == chats
    assert all(c["status"] == 0 for c in second["group_chat_list"])
    assert api("externalcontact/groupchat/list", {})["errcode"] == 40058  # limit is required
    assert api("externalcontact/groupchat/list", {"limit": 1001})["errcode"] == 40058
    assert api("externalcontact/groupchat/list", {"limit": 10, "owner_filter": {
        "userid_list": [f"u{i}" for i in range(101)]}})["errcode"] == 40058
    assert api("externalcontact/groupchat/list", {"limit": 10, "cursor": "forged"})["errcode"] == 40058


def test_get_answers_the_official_shape(api, sandbox_state):
    sandbox_state.add_contact("zhangsan", "wmCustomer000001", "客户甲")
    made = api("groups", {"owner": "zhangsan", "name": "销售客服群", "notice": "公告", "admins": ["zhangsan"],
                          "members": ["wmCustomer000001"]}, control=True)
    answer = api("externalcontact/groupchat/get", {"chat_id": made["chat_id"], "need_name": 1})
    chat = answer["group_chat"]
    assert set(chat) == {"chat_id", "name", "owner", "create_time", "notice", "member_list", "admin_list",
                         "member_version"}
    owner, customer = chat["member_list"]
    assert (owner["type"], customer["type"], customer["invitor"], customer["name"]) == (
        1, 2, {"userid": "zhangsan"}, "客户甲")
    assert chat["admin_list"] == [{"userid": "zhangsan"}] and chat["member_version"] == made["member_version"]
    nameless = api("externalcontact/groupchat/get", {"chat_id": made["chat_id"]})["group_chat"]
    assert "name" not in nameless["member_list"][1]
    assert api("externalcontact/groupchat/get", {"chat_id": "wrNope"})["errcode"] == 40050
    assert api("externalcontact/groupchat/get", {})["errcode"] == 40058


def test_join_ways_and_welcome_templates_keep_wecoms_limits(api):
    chats = [api("groups", {"owner": "zhangsan"}, control=True)["chat_id"] for _ in range(6)]
    assert api("externalcontact/groupchat/add_join_way", {"scene": 2, "chat_id_list": chats})["errcode"] == 40058
    assert api("externalcontact/groupchat/add_join_way", {"scene": 2, "chat_id_list": chats[:1],
                                                          "state": "s" * 31})["errcode"] == 40058
    assert api("externalcontact/groupchat/add_join_way", {"scene": 3, "chat_id_list": chats[:1]})["errcode"] == 40058
    made = api("externalcontact/groupchat/add_join_way", {"scene": 2, "chat_id_list": chats[:5], "state": "vip"})
    way = api("externalcontact/groupchat/get_join_way", {"config_id": made["config_id"]})["join_way"]
    assert way["state"] == "vip" and way["qr_code"].startswith("https://") and way["auto_create_room"] == 1
    assert api("externalcontact/groupchat/get_join_way", {"config_id": "nope"})["errcode"] == 41044
    assert api("externalcontact/groupchat/del_join_way", {"config_id": made["config_id"]})["errcode"] == 0
    assert api("externalcontact/group_welcome_template/add", {"text": {"content": "x" * 3001}})["errcode"] == 40058
    assert api("externalcontact/group_welcome_template/add", {})["errcode"] == 40058
    ids = [api("externalcontact/group_welcome_template/add", {"text": {"content": f"欢迎{i}"}})["template_id"]
           for i in range(100)]
    assert api("externalcontact/group_welcome_template/add", {"text": {"content": "多一个"}})["errcode"] == 41055
    assert api("externalcontact/group_welcome_template/edit", {"template_id": ids[0],
                                                               "text": {"content": "y" * 4000}})["errcode"] == 0
    assert api("externalcontact/group_welcome_template/get", {"template_id": ids[0]})["text"]["content"] == "y" * 4000
    assert api("externalcontact/group_welcome_template/del", {"template_id": "nope"})["errcode"] == 40058


def test_group_mass_message_needs_its_owner(api):
    mine = api("groups", {"owner": "zhangsan"}, control=True)["chat_id"]
    theirs = api("groups", {"owner": "lisi"}, control=True)["chat_id"]
    body = {"chat_type": "group", "chat_id_list": [mine, theirs], "text": {"content": "hi"}}
    assert api("externalcontact/add_msg_template", body)["errcode"] == 40058  # sender required
    answer = api("externalcontact/add_msg_template", {**body, "sender": "zhangsan"})
    assert answer["fail_list"] == [theirs]
    api(f"groups/mass_messages/{answer['msgid']}/confirm", {}, control=True)
    rows = api("externalcontact/get_groupmsg_send_result", {"msgid": answer["msgid"], "userid": "zhangsan"})
    assert [(r["chat_id"], r["status"]) for r in rows["send_list"]] == [(mine, 1)]
    assert api("externalcontact/add_msg_template", {**body, "sender": "zhangsan",
                                                     "chat_id_list": ["c"] * 2001})["errcode"] == 40058


def test_client_checks_limits_before_calling():
    api = ScrmGroupChat(None)
    with pytest.raises(ValueError, match="1 and 1000"):
        api.list(limit=0)
    with pytest.raises(ValueError, match="1 to 5"):
        api.add_join_way(["c"] * 6)
    with pytest.raises(ValueError, match="3000 bytes"):
        api.add_welcome_template("字" * 1001)


@pytest.mark.parametrize("value,expected", [
    ({"Item": ["Jack", "Rose"]}, ["Jack", "Rose"]),
    ({"Item": "Jack"}, ["Jack"]),
    ("Jack, Rose", ["Jack", "Rose"]),
    (None, []),
    ({"Item": [{"nested": "x"}]}, []),
])
def test_mem_change_list_shapes(value, expected):
    assert member_change_list(value) == expected


def test_a_group_event_without_chat_id_fails_alone(callbacks, processor, db):
    fields = {"ToUserName": "corp", "FromUserName": "sys", "CreateTime": 1403610513, "MsgType": "event",
              "Event": "change_external_chat", "ChangeType": "update", "UpdateDetail": "add_member"}
    assert callbacks.post(fields).status_code == 200
    processor.drain()
    with db.sessions() as s:
        event = s.scalar(select(InboxEvent))
        assert event.status in ("failed", "dead") and "ChatId" in (event.last_error or "")
