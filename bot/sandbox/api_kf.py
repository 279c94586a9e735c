"""微信客服 endpoints: sync_msg with cursors and tokens, send_msg within the 48 h / 5-message window."""

from __future__ import annotations

import re
from typing import Any

from bot.sandbox.registry import Call, endpoint
from bot.sandbox.state import KF_HISTORY_SECONDS, KF_WINDOW_MESSAGES, KF_WINDOW_SECONDS, WeComError, random_id

_MSGID = re.compile(r"[0-9A-Za-z_-]{1,32}")
API_MAY_SEND = (0, 1)  # send_msg only while the session is new or with the smart assistant (path/96427)
SERVICE_STATE_CHANGES = {0: (1, 2, 3, 4), 1: (2, 3, 4), 2: (3, 4), 3: (3, 4), 4: ()}


@endpoint("POST", "kf/account/list")
def account_list(call: Call) -> dict[str, Any]:
    accounts = call.state.kf_accounts.items()
    return {"account_list": [{"open_kfid": k, "name": v["name"], "avatar": ""} for k, v in accounts]}


@endpoint("POST", "kf/sync_msg")
def sync_msg(call: Call) -> dict[str, Any]:
    state, body = call.state, call.body
    limit = int(body.get("limit") or 1000)
    if not 1 <= limit <= 1000:
        raise WeComError(40058, "limit must be 1–1000")
    limit = min(limit, state.kf_page_limit)
    open_kfid = body.get("open_kfid") or ""
    token = body.get("token") or ""
    if token:
        entry = state.kf_tokens.get(token)
        if entry is None or state.now() > entry[1]:
            raise WeComError(95007, "invalid msg token")
        open_kfid = open_kfid or entry[0]
    if open_kfid not in state.kf_accounts:
        raise WeComError(95000, "invalid open_kfid")
    cursor = body.get("cursor") or ""
    messages = state.kf_messages[open_kfid]
    if cursor:
        if not re.fullmatch(r"c\d+", cursor):
            raise WeComError(95003, "invalid cursor")
        start = int(cursor[1:])
    else:
        oldest = state.now() - KF_HISTORY_SECONDS
        start = next((i for i, m in enumerate(messages) if m["send_time"] >= oldest), len(messages))
    page = messages[start:start + limit]
    end = start + len(page)
    return {"next_cursor": f"c{end}", "has_more": int(end < len(messages)), "msg_list": page}


@endpoint("POST", "kf/send_msg")
def send_msg(call: Call) -> dict[str, Any]:
    state, body = call.state, call.body
    touser, open_kfid, msgtype = call.require("touser", "open_kfid", "msgtype")
    if open_kfid not in state.kf_accounts:
        raise WeComError(95000, "invalid open_kfid")
    msgid = body.get("msgid") or random_id("", 32)
    if not _MSGID.fullmatch(msgid):
        raise WeComError(40058, "msgid must be ≤32 bytes of [0-9a-zA-Z_-]")
    if any(s["msgid"] == msgid and s["open_kfid"] == open_kfid for s in state.kf_sent):
        raise WeComError(40058, "msgid must be unique within the kf account")
    if msgtype == "text" and len((body.get("text") or {}).get("content", "").encode("utf-8")) > 2048:
        raise WeComError(40058, "text content is at most 2048 bytes")
    session = state.kf_sessions[(open_kfid, touser)]
    if not session.last_customer_message_at or state.now() - session.last_customer_message_at > KF_WINDOW_SECONDS \
            or session.service_state not in API_MAY_SEND:
        raise WeComError(95018, "send msg session status invalid")
    record = {"msgid": msgid, "open_kfid": open_kfid, "touser": touser, "msgtype": msgtype,
              msgtype: body.get(msgtype), "sent_at": state.now(), "delivered": True}
    state.kf_sent.append(record)
    session.sent_since_customer_message += 1
    if session.sent_since_customer_message > KF_WINDOW_MESSAGES:
        # WeCom accepts the call (errcode 0) and reports the failure later as an event.
        record["delivered"] = False
        state.kf_event(open_kfid, {"event_type": "msg_send_fail", "open_kfid": open_kfid,
                                   "external_userid": touser, "fail_msgid": msgid, "fail_type": 6})
    return {"msgid": msgid}


@endpoint("POST", "kf/service_state/get")
def service_state_get(call: Call) -> dict[str, Any]:
    open_kfid, external_userid = call.require("open_kfid", "external_userid")
    if open_kfid not in call.state.kf_accounts:
        raise WeComError(95000, "invalid open_kfid")
    session = call.state.kf_sessions[(open_kfid, external_userid)]
    return {"service_state": session.service_state, "servicer_userid": session.servicer_userid}


@endpoint("POST", "kf/service_state/trans")
def service_state_trans(call: Call) -> dict[str, Any]:
    """The allowed changes of path/94698's table; a servicer for state 3 must be one of the account's."""
    open_kfid, external_userid = call.require("open_kfid", "external_userid")
    if open_kfid not in call.state.kf_accounts:
        raise WeComError(95000, "invalid open_kfid")
    target = int(call.body.get("service_state", -1))
    session = call.state.kf_sessions[(open_kfid, external_userid)]
    if target not in SERVICE_STATE_CHANGES.get(session.service_state, ()):
        raise WeComError(95016, f"service_state {session.service_state} cannot change to {target}")
    servicer = str(call.body.get("servicer_userid") or "")
    if target == 3 and servicer not in call.state.staff:
        raise WeComError(95014, "servicer_userid is required for state 3 and must be a servicer")
    session.service_state, session.servicer_userid = target, servicer if target == 3 else ""
    return {"msg_code": random_id("MSGCODE", 16)} if target in (2, 3, 4) else {}


@endpoint("POST", "kf/send_msg_on_event")
def send_msg_on_event(call: Call) -> dict[str, Any]:
    code, msgtype = call.require("code", "msgtype")
    if msgtype not in ("text", "msgmenu"):
        raise WeComError(40058, "send_msg_on_event takes text or msgmenu")
    entry = call.state.welcome_codes.get(code)
    if entry is None or entry["used"] or call.state.now() - entry["issued_at"] > 20:
        raise WeComError(40058, "invalid code: already used or expired (20 s window)")
    entry["used"] = True
    msgid = call.body.get("msgid") or random_id("", 32)
    call.state.kf_sent.append({"msgid": msgid, "open_kfid": entry.get("open_kfid", ""),
                               "touser": entry["external_userid"], "msgtype": msgtype,
                               msgtype: call.body.get(msgtype), "sent_at": call.state.now(), "delivered": True})
    return {"msgid": msgid}


@endpoint("POST", "kf/customer/batchget")
def customer_batchget(call: Call) -> dict[str, Any]:
    ids = call.body.get("external_userid_list") or []
    if not 1 <= len(ids) <= 100:
        raise WeComError(40058, "external_userid_list must hold 1 to 100 ids")
    known = [e for e in ids if e in call.state.contacts]
    return {"customer_list": [{"external_userid": e, "nickname": call.state.contacts[e]["name"], "avatar": "",
                               "gender": 0, "unionid": ""} for e in known],
            "invalid_external_userid": [e for e in ids if e not in call.state.contacts]}
