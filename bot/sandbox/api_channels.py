"""「联系我」 endpoints (add/get/update/del/list_contact_way) with WeCom's limits and error codes
(WECOM-GROUPS.md §1). Kept in ``state.contact_ways`` (attached on first use, so the shared
SandboxState needs no field for it)."""

from __future__ import annotations

from typing import Any

from bot.sandbox.registry import Call, endpoint
from bot.sandbox.state import SandboxState, WeComError, random_id

STATE_MAX = 30
REMARK_MAX = 30
MEMBERS_MAX = 100
API_QUOTA = 500_000  # shared with 「加入群聊」 join ways
LIST_DEFAULT_WINDOW = 90 * 86400
STYLES = {1: (1, 2, 3), 2: (1, 2)}


def contact_ways(state: SandboxState) -> dict[str, dict[str, Any]]:
    return state.__dict__.setdefault("contact_ways", {})


def _way(call: Call) -> dict[str, Any]:
    config_id = call.body.get("config_id")
    if not config_id:
        raise WeComError(41043, "missing config_id")
    way = contact_ways(call.state).get(str(config_id))
    if way is None:
        raise WeComError(41044, "invalid config_id")
    return way


def _check_common(call: Call, type_: int, body: dict[str, Any]) -> None:
    state = body.get("state")
    if state is not None and (not isinstance(state, str) or len(state) > STATE_MAX):
        raise WeComError(40058, f"state must be a string of at most {STATE_MAX} characters")
    remark = body.get("remark")
    if remark is not None and (not isinstance(remark, str) or len(remark) > REMARK_MAX):
        raise WeComError(40058, f"remark must be a string of at most {REMARK_MAX} characters")
    users, parties = body.get("user"), body.get("party")
    if users is not None and (not isinstance(users, list) or not all(isinstance(u, str) for u in users)):
        raise WeComError(40058, "user must be a list of userids")
    if parties is not None and not isinstance(parties, list):
        raise WeComError(40058, "party must be a list of department ids")
    if len(users or []) + 0 > MEMBERS_MAX:
        raise WeComError(41041, f"too many members: at most {MEMBERS_MAX} (departments expanded)")
    for userid in users or []:
        if userid not in call.state.staff:
            raise WeComError(60111, f"invalid userid: {userid}")
        if call.state.staff[userid].get("resigned_at"):
            raise WeComError(60111, f"userid not found: {userid}")
    style = body.get("style")
    if style is not None and style not in STYLES.get(type_, ()):
        raise WeComError(41042, "invalid style")


@endpoint("POST", "externalcontact/add_contact_way")
def add_contact_way(call: Call) -> dict[str, Any]:
    body = call.body
    if body.get("type") in (None, ""):
        raise WeComError(41037, "missing type")
    if body.get("scene") in (None, ""):
        raise WeComError(41038, "missing scene")
    if body.get("type") not in (1, 2):
        raise WeComError(41039, "invalid type")
    if body.get("scene") not in (1, 2):
        raise WeComError(41040, "invalid scene")
    type_ = int(body["type"])
    _check_common(call, type_, body)
    users, parties = body.get("user") or [], body.get("party") or []
    if type_ == 1 and (len(users) != 1 or parties):
        raise WeComError(40058, "a single-member contact way takes exactly one user")
    if type_ == 2 and not (users or parties):
        raise WeComError(40058, "user and party cannot both be empty")
    ways = contact_ways(call.state)
    if len(ways) >= API_QUOTA:
        raise WeComError(41045, "contact ways created by API reached the limit")
    config_id = random_id("", 32).lower()
    way = {"config_id": config_id, "type": type_, "scene": int(body["scene"]), "remark": body.get("remark", ""),
           "skip_verify": bool(body.get("skip_verify", True)), "state": body.get("state", ""),
           "user": list(users), "party": list(parties), "is_temp": bool(body.get("is_temp", False)),
           "create_time": int(call.state.now())}
    if way["scene"] == 1:
        way["style"] = int(body.get("style") or 1)
    else:
        way["qr_code"] = f"https://wework.qpic.cn/wwpic/{random_id('', 24)}/0"
    ways[config_id] = way
    answer = {"config_id": config_id}
    if "qr_code" in way:
        answer["qr_code"] = way["qr_code"]
    return answer


@endpoint("POST", "externalcontact/get_contact_way")
def get_contact_way(call: Call) -> dict[str, Any]:
    way = _way(call)
    return {"contact_way": {k: v for k, v in way.items() if k != "create_time"}}


@endpoint("POST", "externalcontact/update_contact_way")
def update_contact_way(call: Call) -> dict[str, Any]:
    way = _way(call)
    _check_common(call, way["type"], call.body)
    users = call.body.get("user")
    if users is not None and way["type"] == 1 and len(users) != 1:
        raise WeComError(40058, "a single-member contact way takes exactly one user")
    for key in ("remark", "skip_verify", "style", "state", "user", "party"):
        if key in call.body:
            way[key] = call.body[key]
    return {}


@endpoint("POST", "externalcontact/del_contact_way")
def del_contact_way(call: Call) -> dict[str, Any]:
    way = _way(call)
    contact_ways(call.state).pop(way["config_id"])
    return {}


@endpoint("POST", "externalcontact/list_contact_way")
def list_contact_way(call: Call) -> dict[str, Any]:
    now = int(call.state.now())
    try:
        start = int(call.body.get("start_time") or now - LIST_DEFAULT_WINDOW)
        end = int(call.body.get("end_time") or now)
        limit = int(call.body.get("limit") or 100)
        offset = int(call.body.get("cursor") or 0)
    except (TypeError, ValueError):
        raise WeComError(40058, "start_time, end_time, limit and cursor must be numbers") from None
    if not 1 <= limit <= 1000:
        raise WeComError(40058, "limit must be between 1 and 1000")
    rows = sorted((w for w in contact_ways(call.state).values()
                   if start <= w["create_time"] <= end and not w["is_temp"]),
                  key=lambda w: (w["create_time"], w["config_id"]))
    page = rows[offset:offset + limit]
    return {"contact_way": [{"config_id": w["config_id"]} for w in page],
            "next_cursor": str(offset + limit) if offset + limit < len(rows) else ""}
