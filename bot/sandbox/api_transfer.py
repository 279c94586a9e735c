"""在职/离职继承 endpoints (transfer_customer, transfer_result, get_unassigned_list,
resigned/transfer_customer, resigned/transfer_result, groupchat/transfer) with WeCom's limits and
per-customer error codes (WECOM-GROUPS.md §3), plus what happens next on WeCom's side: the customer
refuses within 24 h (transfer_fail), or the takeover completes (the follow moves, with
del_external_contact Source=DELETE_BY_TRANSFER for an on-job hand-over)."""

from __future__ import annotations

from typing import Any

from bot.sandbox.api_groups import groups_of, new_group
from bot.sandbox.delivery import deliver
from bot.sandbox.registry import Call, endpoint
from bot.sandbox.state import SandboxState, WeComError

CUSTOMERS_PER_CALL = 100
CHATS_PER_CALL = 100
RESULT_PAGE = 1000
UNASSIGNED_PAGE = 1000
TAKEOVER_DELAY = 86400  # the customer has 24 hours to refuse
ONJOB_WINDOW, ONJOB_MAX = 90 * 86400, 2  # each customer at most twice in 90 days (40128)
SUCCESS_MSG_MAX = 200
# transfer_result's status per row; 5 无接替记录 is on-job only (WECOM-GROUPS.md §3.3 / §3.5): the resigned
# result lists 1–4, so a transfer WeCom has no record of is not listed there.
RESULT_CODES = {"succeeded": 1, "waiting": 2, "refused": 3, "takeover_full": 4, "no_record": 5}
FAIL_REASONS = {"customer_refused": "refused", "customer_limit_exceed": "takeover_full"}


def transfers(state: SandboxState) -> list[dict[str, Any]]:
    return state.__dict__.setdefault("transfers", [])


def handover_groups(state: SandboxState) -> dict[str, dict[str, Any]]:
    """chat_id → group: the sandbox's customer groups (bot/sandbox/api_groups.py), which a hand-over moves."""
    return groups_of(state).groups


def _resigned(state: SandboxState, userid: str) -> bool:
    return bool(state.staff.get(userid, {}).get("resigned_at"))


def _pair(call: Call) -> tuple[str, str]:
    handover, takeover = call.require("handover_userid", "takeover_userid")
    if not isinstance(handover, str) or not isinstance(takeover, str):
        raise WeComError(40058, "handover_userid and takeover_userid must be strings")
    return handover, takeover


def _customers(call: Call) -> list[str]:
    (ids,) = call.require("external_userid")
    if not isinstance(ids, list) or not all(isinstance(e, str) and e for e in ids):
        raise WeComError(40058, "external_userid must be a list of ids")
    if len(ids) > CUSTOMERS_PER_CALL:
        raise WeComError(40058, f"external_userid holds at most {CUSTOMERS_PER_CALL} customers")
    return ids


def _start(call: Call, kind: str) -> dict[str, Any]:
    state = call.state
    handover, takeover = _pair(call)
    ids = _customers(call)
    for userid in (handover, takeover):
        state.require_staff(userid)
    if handover == takeover:
        raise WeComError(40130, "handover_userid and takeover_userid are the same")
    if kind == "resigned" and not _resigned(state, handover):
        raise WeComError(40097, "the handover member has not resigned")
    if kind == "onjob" and _resigned(state, handover):
        raise WeComError(60111, "the handover member has resigned: use resigned/transfer_customer")
    if _resigned(state, takeover):
        raise WeComError(60111, "the takeover member has resigned")
    now = state.now()
    rows = transfers(state)
    answer = []
    for external_userid in ids:
        answer.append({"external_userid": external_userid,
                       "errcode": _start_one(state, rows, kind, handover, takeover, external_userid, now)})
    return {"customer": answer}


def _start_one(state: SandboxState, rows: list[dict[str, Any]], kind: str, handover: str, takeover: str,
               external_userid: str, now: float) -> int:
    if external_userid not in state.contacts:
        return 40096
    follows = state.follows.get(external_userid, {})
    if handover not in follows:
        return 40131
    mine = [r for r in rows if r["external_userid"] == external_userid]
    if any(r["status"] == "waiting" for r in mine):
        return 40129
    if kind == "onjob" and sum(1 for r in mine if r["kind"] == "onjob" and now - r["created"] < ONJOB_WINDOW
                               and r["status"] in ("waiting", "succeeded")) >= ONJOB_MAX:
        return 40128
    rows.append({"kind": kind, "handover": handover, "takeover": takeover, "external_userid": external_userid,
                 "status": "waiting", "created": now, "takeover_time": int(now + TAKEOVER_DELAY)})
    return 0


def _result(call: Call, kind: str) -> dict[str, Any]:
    handover, takeover = _pair(call)
    try:
        offset = int(call.body.get("cursor") or 0)
    except (TypeError, ValueError):
        raise WeComError(40058, "invalid cursor") from None
    latest: dict[str, dict[str, Any]] = {}  # a customer handed over again appears once per pair: the latest
    for r in transfers(call.state):
        if r["kind"] == kind and r["handover"] == handover and r["takeover"] == takeover:
            latest.pop(r["external_userid"], None)
            latest[r["external_userid"]] = r
    rows = [r for r in latest.values() if kind == "onjob" or r["status"] != "no_record"]
    page = rows[offset:offset + RESULT_PAGE]
    return {"customer": [{"external_userid": r["external_userid"], "status": RESULT_CODES[r["status"]],
                          "takeover_time": r["takeover_time"] if r["status"] in ("waiting", "succeeded") else 0}
                         for r in page],
            "next_cursor": str(offset + RESULT_PAGE) if offset + RESULT_PAGE < len(rows) else ""}


@endpoint("POST", "externalcontact/transfer_customer")
def transfer_customer(call: Call) -> dict[str, Any]:
    message = call.body.get("transfer_success_msg")
    if message is not None and (not isinstance(message, str) or len(message) > SUCCESS_MSG_MAX):
        raise WeComError(40058, f"transfer_success_msg is at most {SUCCESS_MSG_MAX} characters")
    return _start(call, "onjob")


@endpoint("POST", "externalcontact/transfer_result")
def transfer_result(call: Call) -> dict[str, Any]:
    return _result(call, "onjob")


@endpoint("POST", "externalcontact/resigned/transfer_customer")
def resigned_transfer_customer(call: Call) -> dict[str, Any]:
    return _start(call, "resigned")


@endpoint("POST", "externalcontact/resigned/transfer_result")
def resigned_transfer_result(call: Call) -> dict[str, Any]:
    return _result(call, "resigned")


@endpoint("POST", "externalcontact/get_unassigned_list")
def get_unassigned_list(call: Call) -> dict[str, Any]:
    state = call.state
    try:
        size = int(call.body.get("page_size") or UNASSIGNED_PAGE)
        offset = int(call.body.get("cursor") or 0)
    except (TypeError, ValueError):
        raise WeComError(40058, "page_size and cursor must be numbers") from None
    if not 1 <= size <= UNASSIGNED_PAGE:
        raise WeComError(40058, f"page_size must be between 1 and {UNASSIGNED_PAGE}")
    busy = {(r["handover"], r["external_userid"]) for r in transfers(state)
            if r["kind"] == "resigned" and r["status"] in ("waiting", "succeeded")}
    rows = [{"handover_userid": userid, "external_userid": external_userid,
             "dimission_time": int(member["resigned_at"])}
            for userid, member in sorted(state.staff.items()) if member.get("resigned_at")
            for external_userid in sorted(e for e, f in state.follows.items() if userid in f)
            if (userid, external_userid) not in busy]
    page = rows[offset:offset + size]
    last = offset + size >= len(rows)
    return {"info": page, "is_last": last, "next_cursor": "" if last else str(offset + size)}


@endpoint("POST", "externalcontact/groupchat/transfer")
def groupchat_transfer(call: Call) -> dict[str, Any]:
    chat_ids, new_owner = call.require("chat_id_list", "new_owner")
    if not isinstance(chat_ids, list) or not 1 <= len(chat_ids) <= CHATS_PER_CALL:
        raise WeComError(40058, f"chat_id_list holds 1 to {CHATS_PER_CALL} chat ids")
    call.state.require_staff(str(new_owner))
    groups, failed = handover_groups(call.state), []
    for chat_id in chat_ids:
        group = groups.get(chat_id)
        if group is None or group["dismissed"]:
            failed.append({"chat_id": chat_id, "errcode": 90501, "errmsg": "chat is not external group chat"})
        elif group["status"] == 3:
            failed.append({"chat_id": chat_id, "errcode": 90508, "errmsg": "chat has been transferred"})
        elif not _resigned(call.state, group["owner"]):
            failed.append({"chat_id": chat_id, "errcode": 90500, "errmsg": "the owner of this chat is not resigned"})
        elif group["owner"] == new_owner:
            failed.append({"chat_id": chat_id, "errcode": 90504, "errmsg": "the owner is not changed"})
        else:
            group.update(owner=new_owner, status=3, previous_owner=group["owner"])
    return {"failed_chat_list": failed}


# ---------------------------------------------------------------------------- what WeCom does next


def _envelope(state: SandboxState, **fields: Any) -> dict[str, Any]:
    return {"ToUserName": state.config.corp_id, "FromUserName": "sys", "CreateTime": int(state.now()),
            "MsgType": "event", "Event": "change_external_contact", **fields}


def resign(state: SandboxState, userid: str, at: float | None = None) -> dict[str, Any]:
    """The member leaves the company: their customers wait in get_unassigned_list."""
    with state.lock:
        member = state.require_staff(userid)
        member["resigned_at"] = int(at if at is not None else state.now())
        return dict(member)


def add_group(state: SandboxState, a: dict[str, Any]) -> dict[str, Any]:
    with state.lock:
        state.require_staff(a["owner"])
        chat_id = a.get("chat_id") or f"wr{len(handover_groups(state)) + 1:026d}"
        group = new_group(state, chat_id, a["owner"], a.get("name", ""))
        handover_groups(state)[chat_id] = group
        return {k: group[k] for k in ("chat_id", "name", "owner", "status")}


def refuse(state: SandboxState, external_userid: str, reason: str = "customer_refused",
           callbacks: bool = True) -> dict[str, Any]:
    """The customer taps 暂不添加 (or the takeover member is full): transfer_fail to the bot. Without
    ``callbacks`` the event is lost on the way: only transfer_result tells (status 3 or 4)."""
    if reason not in FAIL_REASONS:
        raise WeComError(40058, f"reason is one of {sorted(FAIL_REASONS)}")
    with state.lock:
        row = next((r for r in transfers(state) if r["external_userid"] == external_userid
                    and r["status"] == "waiting"), None)
        if row is None:
            raise WeComError(40058, "no waiting transfer for this customer")
        row["status"] = FAIL_REASONS[reason]
        fields = _envelope(state, ChangeType="transfer_fail", FailReason=reason, UserID=row["takeover"],
                           ExternalUserID=external_userid)
    return {"transfer": dict(row), "delivery": deliver(state, fields) if callbacks else None}


def lose(state: SandboxState, external_userid: str) -> dict[str, Any]:
    """WeCom no longer has a record of the customer's waiting transfer (a state the sandbox does not
    otherwise reach): the on-job result answers 5 无接替记录 for it, the resigned one leaves it out."""
    with state.lock:
        row = next((r for r in transfers(state) if r["external_userid"] == external_userid
                    and r["status"] == "waiting"), None)
        if row is None:
            raise WeComError(40058, "no waiting transfer for this customer")
        row.update(status="no_record", takeover_time=0)
        return dict(row)


def settle(state: SandboxState, force: bool = False, callbacks: bool = True) -> dict[str, Any]:
    """Every waiting transfer whose 24 hours are over (all of them with ``force``) completes: the
    takeover member gets the customer; on-job, the handover member's relation is deleted. Without
    ``callbacks`` no event is sent (WeCom sends no add event when the pair were already friends,
    and callbacks can be lost): only transfer_result tells."""
    events: list[dict[str, Any]] = []
    with state.lock:
        now = state.now()
        done = 0
        for row in transfers(state):
            if row["status"] != "waiting" or (row["takeover_time"] > now and not force):
                continue
            row["status"], row["takeover_time"] = "succeeded", int(min(now, row["takeover_time"]))
            done += 1
            follows = state.follows[row["external_userid"]]
            old = follows.get(row["handover"]) or {}
            already = row["takeover"] in follows
            if not already:
                follows[row["takeover"]] = {**old, "userid": row["takeover"], "createtime": int(now),
                                            "add_way": 202, "oper_userid": row["handover"], "state": "",
                                            "tags": list(old.get("tags", []))}
                events.append(_envelope(state, ChangeType="add_external_contact", UserID=row["takeover"],
                                        ExternalUserID=row["external_userid"]))
            follows.pop(row["handover"], None)
            if row["kind"] == "onjob":
                events.append(_envelope(state, ChangeType="del_external_contact", UserID=row["handover"],
                                        ExternalUserID=row["external_userid"], Source="DELETE_BY_TRANSFER"))
    deliveries = [deliver(state, fields) for fields in events] if callbacks else []
    return {"settled": done, "callbacks": len(deliveries),
            "delivered": sum(1 for d in deliveries if d.get("delivered"))}
