"""客户群 in the local WeCom: groupchat/list and get, 加入群聊 join ways, 入群欢迎语 templates, mass
messages to groups (add_msg_template chat_type=group and its results), and the control API that
makes groups, adds and removes members and emits ``change_external_chat`` as Tencent does.

Shapes, limits and error codes follow shared/WECOM-GROUPS.md §2. Where the docs are silent the
sandbox picks one behaviour and says so: a group the sender does not own is put in ``fail_list``;
an unknown chat_id answers 40050; an unknown template or join way 40058 / 41044."""

from __future__ import annotations

import secrets
from typing import Any

from flask import Response, jsonify

from bot.sandbox import api_contact
from bot.sandbox.control import _args, _state, bp
from bot.sandbox.delivery import _kind, _post, encrypt_callback, event_xml
from bot.sandbox.registry import ENDPOINTS, Call, endpoint
from bot.sandbox.state import SandboxState, WeComError, random_id

CHAT_EVENT = "change_external_chat"
MAX_LIST_LIMIT = 1000
MAX_OWNER_FILTER = 100
UNFILTERED_RANGE_LIMIT = 1000  # 81017 when the visible range is larger and no owner_filter is given
MAX_JOIN_WAY_CHATS = 5
MAX_STATE = 30
MAX_WELCOME_TEMPLATES = 100
MAX_WELCOME_TEXT_BYTES = {"add": 3000, "edit": 4000}
MAX_GROUP_MASS_CHATS = 2000
INVALID_CHAT = 40050


class GroupsState:
    """What the sandbox knows about groups, kept beside the rest of its state."""

    def __init__(self) -> None:
        self.groups: dict[str, dict[str, Any]] = {}
        self.cursors: dict[str, int] = {}
        self.join_ways: dict[str, dict[str, Any]] = {}
        self.welcome_templates: dict[str, dict[str, Any]] = {}


def groups_of(state: SandboxState) -> GroupsState:
    found = getattr(state, "_groups", None)
    if found is None:
        found = GroupsState()
        state._groups = found  # type: ignore[attr-defined]
    return found


def _version() -> str:
    return secrets.token_hex(16)


def _require_group(state: SandboxState, chat_id: Any) -> dict[str, Any]:
    group = groups_of(state).groups.get(str(chat_id or ""))
    if group is None or group["dismissed"]:
        raise WeComError(INVALID_CHAT, f"invalid chat_id: {chat_id}")
    return group


def new_group(state: SandboxState, chat_id: str, owner: str, name: str = "", notice: str = "",
              admins: list[str] | None = None) -> dict[str, Any]:
    """A group as the sandbox keeps it (the hand-over's control API makes them too)."""
    return {"chat_id": chat_id, "name": name, "owner": owner, "create_time": int(state.now()), "notice": notice,
            "status": 0, "admins": list(admins or []), "dismissed": False, "member_version": _version(),
            "member_list": [_new_member(state, owner, 1, "", "")]}


def list_status(state: SandboxState, group: dict[str, Any]) -> int:
    """groupchat/list's status: 0 normal, 1 the owner has left the company (离职待继承), 2 being
    handed over, 3 handed over."""
    if group["status"] == 0 and state.staff.get(group["owner"], {}).get("resigned_at"):
        return 1
    return int(group["status"])


def _member_type(state: SandboxState, member_id: str) -> int:
    return 1 if member_id in state.staff else 2


# ---------------------------------------------------------------- groupchat/list and get


@endpoint("POST", "externalcontact/groupchat/list")
def groupchat_list(call: Call) -> dict[str, Any]:
    body, groups = call.body, groups_of(call.state)
    try:
        limit = int(body.get("limit"))
    except (TypeError, ValueError):
        raise WeComError(40058, "limit is required (1-1000)") from None
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise WeComError(40058, "limit must be 1-1000")
    owners = (body.get("owner_filter") or {}).get("userid_list")
    if owners is not None and (not isinstance(owners, list) or len(owners) > MAX_OWNER_FILTER):
        raise WeComError(40058, "owner_filter.userid_list holds at most 100 userids")
    if not owners and len(call.state.staff) > UNFILTERED_RANGE_LIMIT:
        raise WeComError(81017, "request count exceed limit: give owner_filter")
    status = int(body.get("status_filter") or 0)
    found = [g for g in groups.groups.values() if not g["dismissed"]
             and (not owners or g["owner"] in owners) and (not status or list_status(call.state, g) == status)]
    cursor = str(body.get("cursor") or "")
    if cursor and cursor not in groups.cursors:
        raise WeComError(40058, "invalid cursor")
    start = groups.cursors.pop(cursor, 0) if cursor else 0
    page = found[start:start + limit]
    next_cursor = ""
    if start + limit < len(found):
        next_cursor = random_id("", 43)
        groups.cursors[next_cursor] = start + limit
    return {"group_chat_list": [{"chat_id": g["chat_id"], "status": list_status(call.state, g)} for g in page],
            "next_cursor": next_cursor}


@endpoint("POST", "externalcontact/groupchat/get")
def groupchat_get(call: Call) -> dict[str, Any]:
    (chat_id,) = call.require("chat_id")
    group = _require_group(call.state, chat_id)
    need_name = int(call.body.get("need_name") or 0) == 1
    members = []
    for m in group["member_list"]:
        item = {k: v for k, v in m.items() if k != "name" or need_name}
        if not item.get("state"):
            item.pop("state", None)
        members.append(item)
    return {"group_chat": {"chat_id": group["chat_id"], "name": group["name"], "owner": group["owner"],
                           "create_time": group["create_time"], "notice": group["notice"],
                           "member_list": members, "admin_list": [{"userid": u} for u in group["admins"]],
                           "member_version": group["member_version"]}}


# ---------------------------------------------------------------- 加入群聊


def _join_way_body(call: Call) -> dict[str, Any]:
    body = call.body
    scene = body.get("scene")
    if scene not in (1, 2):
        raise WeComError(40058, "scene must be 1 or 2")
    chats = body.get("chat_id_list")
    if not isinstance(chats, list) or not 1 <= len(chats) <= MAX_JOIN_WAY_CHATS:
        raise WeComError(40058, "chat_id_list holds 1-5 chat ids")
    for chat_id in chats:
        _require_group(call.state, chat_id)
    state = str(body.get("state") or "")
    if len(state) > MAX_STATE:
        raise WeComError(40058, "state is at most 30 characters")
    return {"scene": scene, "remark": str(body.get("remark") or "")[:30],
            "auto_create_room": int(body.get("auto_create_room", 1)),
            "room_base_name": body.get("room_base_name", ""), "room_base_id": body.get("room_base_id", 0),
            "chat_id_list": list(chats), "state": state}


@endpoint("POST", "externalcontact/groupchat/add_join_way")
def add_join_way(call: Call) -> dict[str, Any]:
    way = _join_way_body(call)
    config_id = random_id("", 32).lower()
    if way["scene"] == 2:
        way["qr_code"] = f"https://wwcdn.weixin.qq.com/join/{config_id}.png"
    groups_of(call.state).join_ways[config_id] = {"config_id": config_id, **way}
    return {"config_id": config_id}


def _join_way(call: Call) -> dict[str, Any]:
    (config_id,) = call.require("config_id")
    way = groups_of(call.state).join_ways.get(str(config_id))
    if way is None:
        raise WeComError(41044, "invalid config_id")
    return way


@endpoint("POST", "externalcontact/groupchat/get_join_way")
def get_join_way(call: Call) -> dict[str, Any]:
    return {"join_way": dict(_join_way(call))}


@endpoint("POST", "externalcontact/groupchat/update_join_way")
def update_join_way(call: Call) -> dict[str, Any]:
    way = _join_way(call)
    updated = _join_way_body(call)  # a full overwrite, as WeCom does
    qr = way.get("qr_code") if updated["scene"] == 2 else None
    way.clear()
    way.update({"config_id": call.body["config_id"], **updated, **({"qr_code": qr} if qr else {})})
    return {}


@endpoint("POST", "externalcontact/groupchat/del_join_way")
def del_join_way(call: Call) -> dict[str, Any]:
    way = _join_way(call)
    groups_of(call.state).join_ways.pop(way["config_id"])
    return {}


# ---------------------------------------------------------------- 入群欢迎语素材


def _welcome_body(call: Call, action: str) -> dict[str, Any]:
    text = (call.body.get("text") or {}).get("content", "") if isinstance(call.body.get("text"), dict) else ""
    attachments = {k: call.body[k] for k in ("image", "link", "miniprogram", "file", "video") if call.body.get(k)}
    if not text and not attachments:
        raise WeComError(40058, "text and attachments cannot all be empty")
    if len(str(text).encode("utf-8")) > MAX_WELCOME_TEXT_BYTES[action]:
        raise WeComError(40058, f"text.content is at most {MAX_WELCOME_TEXT_BYTES[action]} bytes")
    return {"text": {"content": text}, **attachments}


@endpoint("POST", "externalcontact/group_welcome_template/add")
def welcome_add(call: Call) -> dict[str, Any]:
    templates = groups_of(call.state).welcome_templates
    if len(templates) >= MAX_WELCOME_TEMPLATES:
        raise WeComError(41055, "group welcome template count reach limit")
    template = _welcome_body(call, "add")
    template_id = random_id("msg", 24)
    templates[template_id] = {**template, "notify": int(call.body.get("notify", 1)), "created_at": call.state.now()}
    return {"template_id": template_id}


def _welcome(call: Call) -> dict[str, Any]:
    (template_id,) = call.require("template_id")
    template = groups_of(call.state).welcome_templates.get(str(template_id))
    if template is None:
        raise WeComError(40058, "invalid template_id")
    return template


@endpoint("POST", "externalcontact/group_welcome_template/edit")
def welcome_edit(call: Call) -> dict[str, Any]:
    template = _welcome(call)
    updated = _welcome_body(call, "edit")
    for key in ("image", "link", "miniprogram", "file", "video"):
        template.pop(key, None)
    template.update(updated)
    return {}


@endpoint("POST", "externalcontact/group_welcome_template/get")
def welcome_get(call: Call) -> dict[str, Any]:
    template = _welcome(call)
    return {k: v for k, v in template.items() if k not in ("notify", "created_at")}


@endpoint("POST", "externalcontact/group_welcome_template/del")
def welcome_del(call: Call) -> dict[str, Any]:
    _welcome(call)
    groups_of(call.state).welcome_templates.pop(str(call.body["template_id"]))
    return {}


# ---------------------------------------------------------------- mass messages to groups


_single_add, _single_result = (ENDPOINTS["externalcontact/add_msg_template"][1],
                               ENDPOINTS["externalcontact/get_groupmsg_send_result"][1])


@endpoint("POST", "externalcontact/add_msg_template")
def add_msg_template(call: Call) -> dict[str, Any]:
    """chat_type=group: ``sender`` required (the owner who confirms), ≤ 2000 chat ids; a chat the
    sender does not own is refused in ``fail_list``. Anything else: the customer version."""
    if call.body.get("chat_type") != "group":
        return _single_add(call)
    sender = str(call.body.get("sender") or "")
    if not sender:
        raise WeComError(40058, "sender is required for chat_type group")
    call.state.require_staff(sender)
    chats = call.body.get("chat_id_list") or []
    if not isinstance(chats, list) or len(chats) > MAX_GROUP_MASS_CHATS:
        raise WeComError(40058, "chat_id_list holds at most 2000 chat ids")
    api_contact.check_message(call.body)
    groups = groups_of(call.state).groups
    owned = [c for c in chats if c in groups and not groups[c]["dismissed"] and groups[c]["owner"] == sender]
    msgid = random_id("msg", 24)
    call.state.mass_messages[msgid] = {"msgid": msgid, "sender": sender, "chat_type": "group",
                                       "external_userid": [], "chat_id_list": owned, "text": call.body.get("text"),
                                       "attachments": call.body.get("attachments") or [],
                                       "create_time": int(call.state.now()), "reminders": []}
    return {"msgid": msgid, "fail_list": [c for c in chats if c not in owned]}


@endpoint("POST", "externalcontact/get_groupmsg_send_result")
def get_groupmsg_send_result(call: Call) -> dict[str, Any]:
    """Group tasks answer one row per chat: status 0 未发送, 1 已发送, 2 因客户不是好友导致发送失败 (for a
    group: dismissed), 3 因客户已经收到其他群发消息导致发送失败 (the group's monthly quota)."""
    message = call.state.mass_messages.get(str(call.body.get("msgid") or ""))
    if message is None or message.get("chat_type") != "group":
        return _single_result(call)
    (userid,) = call.require("userid")
    confirmed = message.get("confirmed", {})
    groups = groups_of(call.state).groups
    rows = []
    for chat_id in message["chat_id_list"] if userid == message["sender"] else []:
        status = confirmed.get(chat_id, 0)
        if status == 0 and groups.get(chat_id, {}).get("dismissed"):
            status = 2
        row = {"chat_id": chat_id, "userid": userid, "status": status}
        if status == 1:
            row["send_time"] = message.get("confirmed_at", int(call.state.now()))
        rows.append(row)
    return api_contact.result_page(call, rows, "send_list")


assert api_contact  # imported first: the customer endpoints above are wrapped, not replaced


# ---------------------------------------------------------------- what happens in WeCom (control API)


def _deliver_chat_event(state: SandboxState, chat_id: str, change_type: str, extra: dict[str, Any] | None = None,
                        changed: list[str] | None = None) -> dict[str, Any]:
    """Encrypt and post change_external_chat; MemChangeList nested as in the official example."""
    fields = {"ToUserName": state.config.corp_id, "FromUserName": "sys", "CreateTime": int(state.now()),
              "MsgType": "event", "Event": CHAT_EVENT, "ChatId": chat_id, "ChangeType": change_type, **(extra or {})}
    plaintext = event_xml(fields)
    if changed is not None:
        items = "".join(f"<Item><![CDATA[{m}]]></Item>" for m in changed)
        plaintext = plaintext.replace("</xml>", f"<MemChangeList>{items}</MemChangeList></xml>")
    timestamp, nonce = str(int(state.now())), str(secrets.randbelow(10**10))
    body, signature = encrypt_callback(state, plaintext, timestamp, nonce)
    query = {"msg_signature": signature, "timestamp": timestamp, "nonce": nonce}
    with state.lock:
        record: dict[str, Any] = {"id": len(state.deliveries) + 1, "url": state.config.callback_url,
                                  "event": _kind(fields), "attempts": [], "delivered": False}
        state.deliveries.append(record)
        state.delivery_bodies[record["id"]] = (query, body)
    return _post(state, record, query, body)


def _new_member(state: SandboxState, member_id: str, scene: int, invitor: str, member_state: str) -> dict[str, Any]:
    kind = _member_type(state, member_id)
    contact = state.contacts.get(member_id) or {}
    name = state.staff[member_id]["name"] if kind == 1 else contact.get("name", "微信用户")
    member = {"userid": member_id, "type": kind, "join_time": int(state.now()), "join_scene": scene,
              "group_nickname": "", "name": name}
    if invitor:
        member["invitor"] = {"userid": invitor}
    if kind == 2 and state.contacts.get(member_id, {}).get("unionid"):
        member["unionid"] = state.contacts[member_id]["unionid"]
    if member_state:
        member["state"] = member_state
    return member


def _emit(a: dict[str, Any]) -> bool:
    return bool(a.get("emit", True))


@bp.post("/groups")
def make_group() -> Response:
    """A member creates a customer group: ``{owner, name?, chat_id?, members: [ids], notice?, emit?}``."""
    state, a = _state(), _args()
    with state.lock:
        owner = str(a["owner"])
        state.require_staff(owner)
        chat_id = str(a.get("chat_id") or random_id("wr", 28))
        groups = groups_of(state).groups
        if chat_id in groups:
            raise WeComError(40058, "chat_id exists")
        group = new_group(state, chat_id, owner, str(a.get("name", "")), str(a.get("notice", "")),
                          list(a.get("admins", [])))
        for member_id in a.get("members", []):
            group["member_list"].append(_new_member(state, str(member_id), 1, owner, ""))
        groups[chat_id] = group
    delivery = _deliver_chat_event(state, chat_id, "create") if _emit(a) else None
    return jsonify(chat_id=chat_id, member_version=group["member_version"], delivery=delivery)


@bp.post("/groups/<chat_id>/join")
def members_join(chat_id: str) -> Response:
    """``{members: [ids], scene: 0 (invited) | 3 (QR code), invitor?, state?, emit?}``: add_member."""
    state, a = _state(), _args()
    scene = int(a.get("scene", 0))
    if scene not in (0, 3):
        raise WeComError(40058, "JoinScene is 0 (invited) or 3 (scanned the group QR code)")
    with state.lock:
        group = _require_group(state, chat_id)
        present = {m["userid"] for m in group["member_list"]}
        joined = [str(m) for m in a.get("members", []) if str(m) not in present]
        for member_id in joined:
            group["member_list"].append(_new_member(state, member_id, 3 if scene == 3 else 1,
                                                    "" if scene == 3 else str(a.get("invitor", group["owner"])),
                                                    str(a.get("state", ""))))
        last, group["member_version"] = group["member_version"], _version()
    extra = {"UpdateDetail": "add_member", "JoinScene": scene, "MemChangeCnt": len(joined),
             "LastMemVer": last, "CurMemVer": group["member_version"]}
    delivery = _deliver_chat_event(state, chat_id, "update", extra, joined) if _emit(a) else None
    return jsonify(joined=joined, member_version=group["member_version"], delivery=delivery)


@bp.post("/groups/<chat_id>/leave")
def members_leave(chat_id: str) -> Response:
    """``{members: [ids], quit_scene: 0 (left) | 1 (removed), emit?}``: del_member."""
    state, a = _state(), _args()
    with state.lock:
        group = _require_group(state, chat_id)
        wanted = {str(m) for m in a.get("members", [])}
        left = [m["userid"] for m in group["member_list"] if m["userid"] in wanted and m["userid"] != group["owner"]]
        group["member_list"] = [m for m in group["member_list"] if m["userid"] not in left]
        last, group["member_version"] = group["member_version"], _version()
    extra = {"UpdateDetail": "del_member", "QuitScene": int(a.get("quit_scene", 0)), "MemChangeCnt": len(left),
             "LastMemVer": last, "CurMemVer": group["member_version"]}
    delivery = _deliver_chat_event(state, chat_id, "update", extra, left) if _emit(a) else None
    return jsonify(left=left, member_version=group["member_version"], delivery=delivery)


@bp.post("/groups/<chat_id>/update")
def group_update(chat_id: str) -> Response:
    """``{owner?}`` → change_owner, ``{name?}`` → change_name, ``{notice?}`` → change_notice (one each)."""
    state, a = _state(), _args()
    deliveries = []
    for key, detail in (("owner", "change_owner"), ("name", "change_name"), ("notice", "change_notice")):
        if key not in a:
            continue
        with state.lock:
            group = _require_group(state, chat_id)
            if key == "owner":
                state.require_staff(str(a["owner"]))
                if str(a["owner"]) not in {m["userid"] for m in group["member_list"]}:
                    group["member_list"].append(_new_member(state, str(a["owner"]), 1, group["owner"], ""))
            group[key] = str(a[key])
        if _emit(a):
            deliveries.append(_deliver_chat_event(state, chat_id, "update", {"UpdateDetail": detail}))
    return jsonify(deliveries=deliveries)


@bp.post("/groups/<chat_id>/dismiss")
def group_dismiss(chat_id: str) -> Response:
    state, a = _state(), _args()
    with state.lock:
        _require_group(state, chat_id)["dismissed"] = True
    return jsonify(delivery=_deliver_chat_event(state, chat_id, "dismiss") if _emit(a) else None)


@bp.get("/groups")
def groups_view() -> Response:
    state = _state()
    with state.lock:
        found = groups_of(state)
        return jsonify(groups=list(found.groups.values()), join_ways=list(found.join_ways.values()),
                       welcome_templates=found.welcome_templates)


@bp.post("/groups/mass_messages/<msgid>/confirm")
def confirm_group_mass_message(msgid: str) -> Response:
    """The owner taps send: ``capped`` chats had their monthly quota already (result status 3)."""
    state, a = _state(), _args()
    with state.lock:
        message = state.mass_messages.get(msgid)
        if message is None or message.get("chat_type") != "group":
            raise WeComError(40058, "invalid msgid")
        capped = set(a.get("capped", []))
        message["confirmed"] = {c: (3 if c in capped else 1) for c in message["chat_id_list"]}
        message["confirmed_at"] = int(state.now())
        return jsonify(message["confirmed"])
