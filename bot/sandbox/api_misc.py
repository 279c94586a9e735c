"""App messages, OAuth identity, JS-SDK tickets and callback IPs."""

from __future__ import annotations

from typing import Any

from bot.sandbox.registry import Call, endpoint
from bot.sandbox.state import WeComError, random_id


@endpoint("POST", "message/send")
def message_send(call: Call) -> dict[str, Any]:
    (touser,) = call.require("touser")
    if int(call.body.get("agentid") or 0) != call.state.config.agent_id:
        raise WeComError(40056, "invalid agentid")
    users = [u for u in str(touser).split("|") if u]
    invalid = [u for u in users if u not in call.state.staff and u != "@all"]
    now = call.state.now()
    # WeCom drops, without an error, what one member gets beyond 30 a minute or 1,000 an hour (path/90454).
    delivered = all(sum(1 for m in call.state.app_messages if m["delivered"] and u in m["users"]
                        and now - m["sent_at"] < span) < limit
                    for u in users for span, limit in ((60, 30), (3600, 1000)))
    if call.body.get("enable_duplicate_check"):  # the same content to the same members within the interval
        interval = min(int(call.body.get("duplicate_check_interval") or 1800), 4 * 3600)
        same = [m for m in call.state.app_messages if m.get("text") == call.body.get("text")
                and m["users"] == users and now - m["sent_at"] < interval and m["delivered"]]
        delivered = delivered and not same
    call.state.app_messages.append({**call.body, "sent_at": now, "users": users, "delivered": delivered})
    return {"invaliduser": "|".join(invalid), "msgid": random_id("", 24)}


@endpoint("GET", "user/get")
def user_get(call: Call) -> dict[str, Any]:
    (userid,) = call.require("userid")
    member = call.state.require_staff(userid)
    return {"userid": userid, "name": member["name"], "status": 1}


@endpoint("GET", "auth/getuserinfo")
def auth_getuserinfo(call: Call) -> dict[str, Any]:
    """A code from the authorize page works once within 5 minutes; ``code-for-<userid>`` is a test
    shortcut that skips the page."""
    (code,) = call.require("code")
    userid = call.state.take_oauth_code(code) if code.startswith("sbxcode") else code.removeprefix("code-for-")
    if userid is None:
        raise WeComError(40029, "invalid code")
    if userid in call.state.staff:
        return {"userid": userid}
    if userid in call.state.contacts:
        return {"openid": f"openid-{userid}", "external_userid": userid}
    raise WeComError(40029, "invalid code")


@endpoint("GET", "get_jsapi_ticket")
def get_jsapi_ticket(call: Call) -> dict[str, Any]:
    ticket, expires_in = call.state.issue_ticket("corp")
    return {"ticket": ticket, "expires_in": expires_in}


@endpoint("GET", "ticket/get")
def agent_ticket(call: Call) -> dict[str, Any]:
    if call.params.get("type") != "agent_config":
        raise WeComError(40058, "type must be agent_config")
    ticket, expires_in = call.state.issue_ticket("agent")
    return {"ticket": ticket, "expires_in": expires_in}


@endpoint("GET", "getcallbackip")
def getcallbackip(call: Call) -> dict[str, Any]:
    return {"ip_list": ["127.0.0.1"]}
