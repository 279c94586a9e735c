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


def staff_edits(state: SandboxState, a: dict[str, Any]) -> dict[str, Any]:
    with state.lock:
        follow = state.require_follow(a["userid"], a["external_userid"])
        for key in ("remark", "description"):
            if key in a:
                follow[key] = a[key]
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
    """The WeChat user writes ``content`` to kf account ``open_kfid``; WeCom announces it (no content)."""
    with state.lock:
        message, token = state.kf_customer_message(a["open_kfid"], a["external_userid"], "text",
                                                   {"content": a["content"]})
        fields = _kf_callback(state, a["open_kfid"], token)
    return {"msgid": message["msgid"], "token": token, "delivery": deliver(state, fields)}


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


def _kf_callback(state: SandboxState, open_kfid: str, token: str) -> dict[str, Any]:
    return {"ToUserName": state.config.corp_id, "CreateTime": int(state.now()), "MsgType": "event",
            "Event": "kf_msg_or_event", "Token": token, "OpenKfId": open_kfid}


def summary(state: SandboxState) -> dict[str, Any]:
    with state.lock:
        return {"corp_id": state.config.corp_id, "staff": len(state.staff), "contacts": len(state.contacts),
                "tag_groups": len(state.tag_groups), "kf_accounts": len(state.kf_accounts),
                "calls": len(state.calls), "deliveries": len(state.deliveries),
                "welcomes_sent": len(state.welcomes_sent), "kf_sent": len(state.kf_sent)}
