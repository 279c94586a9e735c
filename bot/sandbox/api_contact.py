"""客户联系 endpoints: contacts, corp tags, welcome messages, mass messages, moments."""

from __future__ import annotations

from typing import Any

from bot.sandbox.registry import Call, endpoint
from bot.sandbox.state import WELCOME_CODE_TTL, WeComError, random_id

MAX_CORP_TAGS = 3000
TEXT_MAX_BYTES = 4000
MAX_ATTACHMENTS = 9


def _contact_view(call: Call, external_userid: str) -> dict[str, Any]:
    contact = call.state.contacts.get(external_userid)
    if contact is None or not call.state.follows.get(external_userid):
        raise WeComError(84061, "not external contact")
    return contact


@endpoint("GET", "externalcontact/get_follow_user_list")
def get_follow_user_list(call: Call) -> dict[str, Any]:
    return {"follow_user": sorted(call.state.staff)}


@endpoint("GET", "externalcontact/list")
def list_contacts(call: Call) -> dict[str, Any]:
    (userid,) = call.require("userid")
    call.state.require_staff(userid)
    return {"external_userid": [e for e, f in call.state.follows.items() if userid in f]}


@endpoint("GET", "externalcontact/get")
def get_contact(call: Call) -> dict[str, Any]:
    (external_userid,) = call.require("external_userid")
    contact = _contact_view(call, external_userid)
    # More than 500 follow_user entries come in pages: cursor in, next_cursor out (path/92114).
    follows, limit = list(call.state.follows[external_userid].values()), call.state.follow_page_limit
    start = int(call.params.get("cursor") or 0)
    next_cursor = str(start + limit) if start + limit < len(follows) else ""
    return {"external_contact": dict(contact), "follow_user": follows[start:start + limit], "next_cursor": next_cursor}


@endpoint("POST", "externalcontact/batch/get_by_user")
def batch_get_by_user(call: Call) -> dict[str, Any]:
    userids = call.body.get("userid_list") or ([call.body["userid"]] if call.body.get("userid") else [])
    if not userids or len(userids) > 100:
        raise WeComError(40058, "userid_list must hold 1 to 100 userids")
    limit = min(int(call.body.get("limit") or 50), 100)
    start = int(call.body.get("cursor") or 0)
    rows = []
    for external_userid in sorted(call.state.follows):
        for userid, info in call.state.follows[external_userid].items():
            if userid in userids:
                follow = {k: v for k, v in info.items() if k != "tags"}
                follow["tag_id"] = [t["tag_id"] for t in info["tags"]]
                rows.append({"external_contact": dict(call.state.contacts[external_userid]), "follow_info": follow})
    page = rows[start:start + limit]
    next_cursor = str(start + limit) if start + limit < len(rows) else ""
    return {"external_contact_list": page, "next_cursor": next_cursor}


@endpoint("POST", "externalcontact/remark")
def remark(call: Call) -> dict[str, Any]:
    userid, external_userid = call.require("userid", "external_userid")
    follow = call.state.require_follow(userid, external_userid)
    if len(call.body.get("remark") or "") > 20 or len(call.body.get("description") or "") > 150:
        raise WeComError(40058, "remark ≤20 chars, description ≤150 chars")
    for key in ("remark", "description", "remark_mobiles"):
        if key in call.body:
            follow[key] = call.body[key]
    if "remark_company" in call.body:
        follow["remark_corp_name"] = call.body["remark_company"]
    return {}


@endpoint("POST", "externalcontact/get_corp_tag_list")
def get_corp_tag_list(call: Call) -> dict[str, Any]:
    group_ids, tag_ids = call.body.get("group_id") or [], call.body.get("tag_id") or []
    groups = []
    for group in call.state.tag_groups.values():
        if group_ids and group["group_id"] not in group_ids:
            continue
        tags = group["tag"] if group_ids or not tag_ids else [t for t in group["tag"] if t["id"] in tag_ids]
        if tags or not tag_ids or group_ids:
            groups.append({**group, "tag": list(tags)})
    return {"tag_group": groups}


@endpoint("POST", "externalcontact/add_corp_tag")
def add_corp_tag(call: Call) -> dict[str, Any]:
    state, body = call.state, call.body
    tags = body.get("tag") or []
    if not tags:
        raise WeComError(40058, "tag list is empty")
    if any(len(t.get("name", "")) > 30 or not t.get("name") for t in tags):
        raise WeComError(40058, "tag names must be 1–30 characters")
    if state.corp_tag_count() + len(tags) > MAX_CORP_TAGS:
        raise WeComError(40126, "corp tag count exceeds the limit of 3000")
    group = state.tag_groups.get(body.get("group_id", ""))
    if group is None:
        name = body.get("group_name") or ""
        if not name or len(name) > 30:
            raise WeComError(40058, "group_name must be 1–30 characters")
        group = next((g for g in state.tag_groups.values() if g["group_name"] == name), None)
    if group is None:
        group = {"group_id": random_id("et", 20), "group_name": body["group_name"],
                 "create_time": int(state.now()), "order": int(body.get("order") or 0), "tag": []}
        state.tag_groups[group["group_id"]] = group
    existing = {t["name"] for t in group["tag"]}
    created = []
    for spec in tags:
        if spec["name"] in existing:
            raise WeComError(40071, f"tag name already exists in the group: {spec['name']}")
        tag = {"id": random_id("et", 20), "name": spec["name"], "create_time": int(state.now()),
               "order": int(spec.get("order") or 0)}
        group["tag"].append(tag)
        created.append(tag)
    return {"tag_group": {**{k: v for k, v in group.items() if k != "tag"}, "tag": created}}


@endpoint("POST", "externalcontact/edit_corp_tag")
def edit_corp_tag(call: Call) -> dict[str, Any]:
    (tag_id,) = call.require("id")
    found = call.state.find_tag(tag_id) or (None, call.state.tag_groups.get(tag_id))
    target = found[1]
    if target is None:
        raise WeComError(40068, "invalid tagid")
    name_key = "name" if "name" in target else "group_name"
    if call.body.get("name"):
        target[name_key] = call.body["name"]
    if "order" in call.body:
        target["order"] = int(call.body["order"])
    return {}


@endpoint("POST", "externalcontact/del_corp_tag")
def del_corp_tag(call: Call) -> dict[str, Any]:
    tag_ids, group_ids = call.body.get("tag_id") or [], call.body.get("group_id") or []
    if not tag_ids and not group_ids:
        raise WeComError(40058, "tag_id and group_id cannot both be empty")
    for group_id in group_ids:
        call.state.tag_groups.pop(group_id, None)
    for group in call.state.tag_groups.values():
        group["tag"] = [t for t in group["tag"] if t["id"] not in tag_ids]
    return {}


@endpoint("POST", "externalcontact/mark_tag")
def mark_tag(call: Call) -> dict[str, Any]:
    userid, external_userid = call.require("userid", "external_userid")
    add, remove = call.body.get("add_tag") or [], call.body.get("remove_tag") or []
    if not add and not remove:
        raise WeComError(40058, "add_tag and remove_tag cannot both be empty")
    follow = call.state.require_follow(userid, external_userid)
    for tag_id in add + remove:
        if call.state.find_tag(tag_id) is None:
            raise WeComError(40068, f"invalid tagid: {tag_id}")
    current = {t["tag_id"]: t for t in follow["tags"]}
    for tag_id in add:
        group, tag = call.state.find_tag(tag_id)  # type: ignore[misc]
        current[tag_id] = {"group_name": group["group_name"], "tag_name": tag["name"], "type": 1, "tag_id": tag_id}
    for tag_id in remove:
        current.pop(tag_id, None)
    follow["tags"] = list(current.values())
    return {}


def check_message(body: dict[str, Any]) -> str:
    """The text of a welcome or mass message (send_welcome_msg, add_msg_template), within WeCom's limits:
    ``text.content`` at most 4000 bytes (UTF-8: 1333 Chinese characters, not 4000) and at most 9 attachments
    (WECOM.md §4, §5)."""
    text = (body.get("text") or {}).get("content", "")
    if not isinstance(text, str) or len(text.encode("utf-8")) > TEXT_MAX_BYTES:
        raise WeComError(40058, f"text.content is at most {TEXT_MAX_BYTES} bytes")
    if len(body.get("attachments") or []) > MAX_ATTACHMENTS:
        raise WeComError(40058, f"at most {MAX_ATTACHMENTS} attachments")
    return text


@endpoint("POST", "externalcontact/send_welcome_msg")
def send_welcome_msg(call: Call) -> dict[str, Any]:
    (code,) = call.require("welcome_code")
    entry = call.state.welcome_codes.get(code)
    if entry is None:
        raise WeComError(40058, "invalid welcome_code")
    # As send_welcome_msg's page answers (WECOM.md §4): a used code is 41051, "externaluser has started
    # chatting" (only the first caller sends); a code older than 20 s is 41050 (the global code table).
    if entry["used"]:
        raise WeComError(41051, "externaluser has started chatting")
    if call.state.now() - entry["issued_at"] > WELCOME_CODE_TTL:
        raise WeComError(41050, "invalid welcome_code: used later than 20 s after the add")
    text = check_message(call.body)
    entry["used"] = True
    call.state.welcomes_sent.append({**entry, "text": text, "attachments": call.body.get("attachments") or [],
                                     "sent_at": call.state.now()})
    return {}


@endpoint("POST", "externalcontact/add_msg_template")
def add_msg_template(call: Call) -> dict[str, Any]:
    body = call.body
    recipients = body.get("external_userid") or []
    if len(recipients) > 10000:
        raise WeComError(40058, "external_userid holds at most 10000 customers")
    if not recipients and not body.get("sender"):
        raise WeComError(40058, "external_userid and sender cannot both be empty")
    check_message(body)
    msgid = random_id("msg", 24)
    fail_list = [e for e in recipients if e not in call.state.contacts]
    call.state.mass_messages[msgid] = {"msgid": msgid, "sender": body.get("sender", ""), "chat_type":
                                       body.get("chat_type", "single"), "external_userid": recipients,
                                       "text": body.get("text"), "attachments": body.get("attachments") or [],
                                       "create_time": int(call.state.now()), "reminders": []}
    return {"msgid": msgid, "fail_list": fail_list}


@endpoint("POST", "externalcontact/get_groupmsg_list_v2")
def get_groupmsg_list_v2(call: Call) -> dict[str, Any]:
    chat_type, start, end = call.require("chat_type", "start_time", "end_time")
    start, end = int(start), int(end)
    if end < start or end - start > 31 * 86400:
        raise WeComError(40058, "the time range must be at most one month")
    # Every task here was made through the API: enterprise tasks (create_type 0) with no creator, which
    # WeCom neither returns nor filters on (a creator filter finds none of them).
    creator, filter_type = call.body.get("creator"), int(call.body.get("filter_type", 2))
    found = [m for m in call.state.mass_messages.values()
             if m["chat_type"] == chat_type and start <= m["create_time"] <= end and not creator
             and filter_type in (0, 2)]
    limit = min(int(call.body.get("limit") or 50), 100)
    offset = int(call.body.get("cursor") or 0)
    page = found[offset:offset + limit]
    return {"group_msg_list": [{"msgid": m["msgid"], "create_type": 0, "create_time": str(m["create_time"]),
                                "text": m["text"]} for m in page],
            "next_cursor": str(offset + limit) if offset + limit < len(found) else ""}


def _mass_message(call: Call) -> dict[str, Any]:
    (msgid,) = call.require("msgid")
    message = call.state.mass_messages.get(msgid)
    if message is None:
        raise WeComError(40058, "invalid msgid")
    return message


def result_page(call: Call, rows: list[dict[str, Any]], key: str, default: int = 500,
                maximum: int = 1000) -> dict[str, Any]:
    """One page of a result list as WeCom pages get_groupmsg_task / get_groupmsg_send_result: ``limit``
    (default 500, at most 1000) rows from ``cursor``, and ``next_cursor`` empty on the last page."""
    try:
        limit = min(int(call.body.get("limit") or default), maximum)
        offset = int(call.body.get("cursor") or 0)
    except (TypeError, ValueError):
        raise WeComError(40058, "limit and cursor must be numbers") from None
    if limit < 1 or offset < 0:
        raise WeComError(40058, "invalid limit or cursor")
    return {key: rows[offset:offset + limit], "next_cursor": str(offset + limit) if offset + limit < len(rows) else ""}


def _tasks(call: Call, message: dict[str, Any]) -> dict[str, list[str]]:
    """Member → the customers in their task. Without a sender WeCom gives each customer to one member (the
    one who last chatted with them; here the first who follows them)."""
    if message["sender"]:
        return {message["sender"]: list(message["external_userid"])}
    tasks: dict[str, list[str]] = {}
    for e in message["external_userid"]:
        follows = call.state.follows.get(e, {})
        if follows:
            tasks.setdefault(next(iter(follows)), []).append(e)
    return dict(sorted(tasks.items()))


@endpoint("POST", "externalcontact/get_groupmsg_task")
def get_groupmsg_task(call: Call) -> dict[str, Any]:
    """task_list[{userid, status 0 未发送 / 2 已发送, send_time once sent}] (path/93338), in pages."""
    message = _mass_message(call)
    rows: list[dict[str, Any]] = [{"userid": u, "status": 2 if "confirmed" in message else 0}
                                  for u in _tasks(call, message)]
    for row in rows:
        if row["status"] == 2:
            row["send_time"] = message["confirmed_at"]
    return result_page(call, rows, "task_list")


@endpoint("POST", "externalcontact/get_groupmsg_send_result")
def get_groupmsg_send_result(call: Call) -> dict[str, Any]:
    """The customers of ``userid``'s task, in pages: status 0 unsent, 1 sent, 2 not a friend (any more),
    3 already received a mass message this period."""
    (userid,) = call.require("userid")
    message = _mass_message(call)
    confirmed = message.get("confirmed", {})
    rows = []
    for e in _tasks(call, message).get(userid, []):
        row = {"external_userid": e, "userid": userid,
               "status": confirmed.get(e, 0) if userid in call.state.follows.get(e, {}) else 2}
        if row["status"] == 1:
            row["send_time"] = message.get("confirmed_at", int(call.state.now()))
        rows.append(row)
    return result_page(call, rows, "send_list")


@endpoint("POST", "externalcontact/remind_groupmsg_send")
def remind_groupmsg_send(call: Call) -> dict[str, Any]:
    message = _mass_message(call)
    recent = [t for t in message["reminders"] if call.state.now() - t < 86400]
    if len(recent) >= 3:
        raise WeComError(41094, "at most 3 reminders per mass message in 24 hours")
    message["reminders"] = [*recent, call.state.now()]
    return {}


@endpoint("POST", "externalcontact/cancel_groupmsg_send")
def cancel_groupmsg_send(call: Call) -> dict[str, Any]:
    (msgid,) = call.require("msgid")
    if call.state.mass_messages.pop(msgid, None) is None:
        raise WeComError(40058, "invalid msgid")
    return {}


@endpoint("POST", "externalcontact/get_moment_list")
def get_moment_list(call: Call) -> dict[str, Any]:
    start, end = (int(v) for v in call.require("start_time", "end_time"))
    if end - start > 30 * 86400:
        raise WeComError(40058, "the time span is at most 30 days")
    limit = min(int(call.body.get("limit") or 20), 20)
    rows = [m for m in sorted(call.state.moments.values(), key=lambda m: m["create_time"])
            if start <= m["create_time"] <= end]
    offset = int(call.body.get("cursor") or 0)
    page = [{k: v for k, v in m.items() if k not in ("likes", "comments")} for m in rows[offset:offset + limit]]
    return {"moment_list": page, "next_cursor": str(offset + limit) if offset + limit < len(rows) else ""}


@endpoint("POST", "externalcontact/get_moment_task")
def get_moment_task(call: Call) -> dict[str, Any]:
    (moment_id,) = call.require("moment_id")
    moment = call.state.moments.get(moment_id)
    if moment is None:
        raise WeComError(40058, "invalid moment_id")
    if moment.get("create_type", 0) != 0:
        raise WeComError(40058, "only corp moments have publish tasks")
    return {"task_list": [{"userid": u, "publish_status": 1} for u in moment.get("senders", [])],
            "next_cursor": ""}


@endpoint("POST", "externalcontact/get_moment_comments")
def get_moment_comments(call: Call) -> dict[str, Any]:
    moment_id, userid = call.require("moment_id", "userid")
    moment = call.state.moments.get(moment_id)
    if moment is None:
        raise WeComError(40058, "invalid moment_id")
    pick = [x for x in moment["comments"] if x.get("userid_of_poster", userid) == userid]
    likes = [x for x in moment["likes"] if x.get("userid_of_poster", userid) == userid]
    strip = ("userid_of_poster",)
    return {"comment_list": [{k: v for k, v in x.items() if k not in strip} for x in pick],
            "like_list": [{k: v for k, v in x.items() if k not in strip} for x in likes]}
