"""Things that happen on WeCom's side, each changing the state and then delivering the callback
Tencent would send. State changes happen under the lock; deliveries happen outside it, since the
bot calls back into the sandbox while it handles them."""

from __future__ import annotations

from typing import Any

from bot.sandbox.delivery import deliver
from bot.sandbox.state import SandboxState, WeComError, random_id

CONTACT_EVENT = "change_external_contact"


def _envelope(state: SandboxState, **fields: Any) -> dict[str, Any]:
    return {"ToUserName": state.config.corp_id, "FromUserName": "sys", "CreateTime": int(state.now()),
            "MsgType": "event", **fields}


def seed(state: SandboxState, spec: dict[str, Any]) -> dict[str, int]:
    with state.lock:
        for member in spec.get("staff", []):
            state.add_staff(member["userid"], member.get("name", ""))
        for row in spec.get("contacts", []):
            state.add_contact(row["userid"], row["external_userid"], row.get("name", ""), row.get("state", ""),
                              created_at=row.get("created_at"))
        for account in spec.get("kf_accounts", []):
            state.kf_accounts[account["open_kfid"]] = {"name": account.get("name", account["open_kfid"])}
        return {"staff": len(state.staff), "contacts": len(state.contacts), "kf_accounts": len(state.kf_accounts)}


def customer_adds(state: SandboxState, a: dict[str, Any]) -> dict[str, Any]:
    """A WeChat user adds member ``userid`` (through channel ``state`` if given)."""
    external_userid = a.get("external_userid") or random_id("wm", 26)
    with state.lock:
        state.add_contact(a["userid"], external_userid, a.get("name", "客户"), a.get("state", ""),
                          add_way=int(a.get("add_way", 1)))
        welcome_code = state.issue_welcome_code(a["userid"], external_userid) if a.get("welcome", True) else ""
        fields = _envelope(state, Event=CONTACT_EVENT,
                           ChangeType="add_half_external_contact" if a.get("half") else "add_external_contact",
                           UserID=a["userid"], ExternalUserID=external_userid)
        if a.get("state"):
            fields["State"] = a["state"]
        if welcome_code:
            fields["WelcomeCode"] = welcome_code
    return {"external_userid": external_userid, "welcome_code": welcome_code, "delivery": deliver(state, fields)}


def customer_approves_archive(state: SandboxState, a: dict[str, Any]) -> dict[str, Any]:
    """A customer of member ``userid`` agrees to 会话存档: msg_audit_approved, with a fresh WelcomeCode."""
    with state.lock:
        welcome_code = state.issue_welcome_code(a["userid"], a["external_userid"])
        fields = _envelope(state, Event=CONTACT_EVENT, ChangeType="msg_audit_approved", UserID=a["userid"],
                           ExternalUserID=a["external_userid"], WelcomeCode=welcome_code)
    return {"welcome_code": welcome_code, "delivery": deliver(state, fields)}


def staff_edits(state: SandboxState, a: dict[str, Any]) -> dict[str, Any]:
    """A member edits remark/description, or tags (``add_tags`` / ``remove_tags``: "组/标签")."""
    with state.lock:
        follow = state.require_follow(a["userid"], a["external_userid"])
        for key in ("remark", "description"):
            if key in a:
                follow[key] = a[key]
        for text in a.get("add_tags", []):
            group_name, _, tag_name = text.rpartition("/")
            found = state.ensure_corp_tag(group_name or "未分组", tag_name)
            if not any(t["tag_id"] == found["tag"]["id"] for t in follow["tags"]):
                follow["tags"].append({"group_name": found["group"]["group_name"], "tag_name": tag_name,
                                       "type": 1, "tag_id": found["tag"]["id"]})
        for text in a.get("remove_tags", []):
            group_name, _, tag_name = text.rpartition("/")
            follow["tags"] = [t for t in follow["tags"]
                              if not (t["tag_name"] == tag_name and t["group_name"] == (group_name or "未分组"))]
        fields = _envelope(state, Event=CONTACT_EVENT, ChangeType="edit_external_contact",
                           UserID=a["userid"], ExternalUserID=a["external_userid"])
    return {"delivery": deliver(state, fields)}


def contact_deleted(state: SandboxState, a: dict[str, Any]) -> dict[str, Any]:
    """``by="staff"`` → del_external_contact; ``by="customer"`` → del_follow_user."""
    by_staff = a.get("by", "staff") == "staff"
    with state.lock:
        state.require_follow(a["userid"], a["external_userid"])
        state.follows[a["external_userid"]].pop(a["userid"])
        fields = _envelope(state, Event=CONTACT_EVENT,
                           ChangeType="del_external_contact" if by_staff else "del_follow_user",
                           UserID=a["userid"], ExternalUserID=a["external_userid"])
        if by_staff and a.get("source"):
            fields["Source"] = a["source"]
    return {"delivery": deliver(state, fields)}


def kf_account(state: SandboxState, a: dict[str, Any]) -> dict[str, Any]:
    open_kfid = a.get("open_kfid") or random_id("wk", 26)
    with state.lock:
        state.kf_accounts[open_kfid] = {"name": a.get("name", "客服")}
    return {"open_kfid": open_kfid}


def kf_customer_text(state: SandboxState, a: dict[str, Any]) -> dict[str, Any]:
    """The WeChat user writes ``content`` (or each of ``contents``) to kf account ``open_kfid``;
    WeCom announces it with one callback (no content). ``msgtype``/``body`` send another type
    (image, voice…); ``origin: 5`` with ``servicer_userid`` is a servicer typing in the WeCom client."""
    contents = a.get("contents") or [a.get("content", "")]
    msgtype = a.get("msgtype", "text")
    with state.lock:
        msgids, token = [], ""
        for content in contents:
            body = a.get("body") or ({"content": content} if msgtype == "text" else {"media_id": random_id("m", 20)})
            message, token = state.kf_customer_message(a["open_kfid"], a["external_userid"], msgtype, body,
                                                       origin=int(a.get("origin", 3)),
                                                       servicer_userid=a.get("servicer_userid", ""))
            msgids.append(message["msgid"])
        fields = _kf_callback(state, a["open_kfid"], token)
    delivery = deliver(state, fields) if a.get("deliver", True) else None
    return {"msgid": msgids[-1], "msgids": msgids, "token": token, "delivery": delivery}


def corp_tag_changed(state: SandboxState, a: dict[str, Any]) -> dict[str, Any]:
    """An admin creates (``name`` "组/标签"), renames (``id`` + ``name``) or deletes (``id`` +
    ``delete``) a corp tag in the console; WeCom sends change_external_tag."""
    with state.lock:
        if a.get("delete"):
            for group in state.tag_groups.values():
                group["tag"] = [t for t in group["tag"] if t["id"] != a["id"]]
            tag_id, change = a["id"], "delete"
        elif a.get("id"):
            found = state.find_tag(a["id"])
            if found is None:
                raise WeComError(40068, "invalid tagid")
            found[1]["name"] = a["name"]
            tag_id, change = a["id"], "update"
        else:
            group_name, _, tag_name = a["name"].rpartition("/")
            tag_id, change = state.ensure_corp_tag(group_name or "未分组", tag_name)["tag"]["id"], "create"
        fields = _envelope(state, Event="change_external_tag", Id=tag_id, TagType="tag", ChangeType=change)
    return {"id": tag_id, "delivery": deliver(state, fields)}


def moment_posted(state: SandboxState, a: dict[str, Any]) -> dict[str, Any]:
    """A moment posted by ``creator`` (personal, create_type 1) or by the corp for ``senders``
    (create_type 0), with ``likes`` / ``comments``: [{external_userid, create_time?}, …]. Posting
    again with the same ``moment_id`` adds interactions. No callback exists for any of it."""
    with state.lock:
        moment_id = a.get("moment_id") or random_id("mom", 20)
        moment = state.moments.setdefault(moment_id, {
            "moment_id": moment_id, "creator": a.get("creator", ""), "create_time": int(a.get("create_time")
                                                                                       or state.now()),
            "create_type": int(a.get("create_type", 1)), "visible_type": 1, "text": {"content": a.get("text", "")},
            "senders": a.get("senders", []), "likes": [], "comments": []})
        for kind in ("likes", "comments"):
            for item in a.get(kind, []):
                entry = {"external_userid": item["external_userid"],
                         "create_time": int(item.get("create_time") or state.now())}
                if item.get("userid_of_poster"):
                    entry["userid_of_poster"] = item["userid_of_poster"]
                moment[kind].append(entry)
    return {"moment_id": moment_id}


def kf_enter_session(state: SandboxState, a: dict[str, Any]) -> dict[str, Any]:
    with state.lock:
        if a["open_kfid"] not in state.kf_accounts:
            raise WeComError(95000, "invalid open_kfid")
        code = state.issue_welcome_code("", a["external_userid"])
        state.welcome_codes[code]["open_kfid"] = a["open_kfid"]
        token = state.kf_event(a["open_kfid"], {
            "event_type": "enter_session", "open_kfid": a["open_kfid"], "external_userid": a["external_userid"],
            "scene": a.get("scene", ""), "scene_param": a.get("scene_param", ""), "welcome_code": code})
        fields = _kf_callback(state, a["open_kfid"], token)
    return {"welcome_code": code, "delivery": deliver(state, fields)}


def kf_servicer_session(state: SandboxState, a: dict[str, Any]) -> dict[str, Any]:
    """A servicer acts in the WeCom client: ``action`` "take" (from the waiting pool: state 3, change_type 1)
    or "end" (state 4, change_type 3); WeCom reports it as session_status_change through sync_msg."""
    with state.lock:
        key = (a["open_kfid"], a["external_userid"])
        session = state.kf_sessions[key]
        if a.get("action", "take") == "take":
            session.service_state, session.servicer_userid, change = 3, a["servicer_userid"], 1
        else:
            session.service_state, change = 4, 3
        token = state.kf_event(a["open_kfid"], {
            "event_type": "session_status_change", "open_kfid": a["open_kfid"],
            "external_userid": a["external_userid"], "change_type": change,
            "new_servicer_userid": a.get("servicer_userid", "") if change == 1 else "",
            "old_servicer_userid": a.get("servicer_userid", "") if change == 3 else ""})
        fields = _kf_callback(state, a["open_kfid"], token)
    return {"delivery": deliver(state, fields)}


def _kf_callback(state: SandboxState, open_kfid: str, token: str) -> dict[str, Any]:
    return {"ToUserName": state.config.corp_id, "CreateTime": int(state.now()), "MsgType": "event",
            "Event": "kf_msg_or_event", "Token": token, "OpenKfId": open_kfid}


def summary(state: SandboxState) -> dict[str, Any]:
    with state.lock:
        return {"corp_id": state.config.corp_id, "staff": len(state.staff), "contacts": len(state.contacts),
                "tag_groups": len(state.tag_groups), "kf_accounts": len(state.kf_accounts),
                "calls": len(state.calls), "deliveries": len(state.deliveries),
                "welcomes_sent": len(state.welcomes_sent), "kf_sent": len(state.kf_sent)}
