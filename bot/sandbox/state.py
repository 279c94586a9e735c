"""What the local WeCom remembers: corp, tokens, staff, customers, corp tags, kf sessions, and a
record of every API call. All access goes through one lock; the clock can be moved by tests."""

from __future__ import annotations

import secrets
import string
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

TOKEN_TTL = 7200
KF_TOKEN_TTL = 600
KF_HISTORY_SECONDS = 3 * 86400
WELCOME_CODE_TTL = 20
KF_WINDOW_SECONDS = 48 * 3600
KF_WINDOW_MESSAGES = 5
OAUTH_CODE_TTL = 300  # an OAuth2 code: single use, 5 minutes
TICKET_TTL = 7200
TICKET_FETCHES_PER_HOUR = {"corp": 400, "agent": 100}  # jsapi_ticket per corp, agent_config per app


class WeComError(Exception):
    """An error WeCom answers with ``{"errcode": …, "errmsg": …}`` (HTTP 200)."""

    def __init__(self, errcode: int, errmsg: str) -> None:
        super().__init__(f"{errcode} {errmsg}")
        self.errcode = errcode
        self.errmsg = errmsg


def random_id(prefix: str, length: int = 24) -> str:
    alphabet = string.ascii_letters + string.digits
    return prefix + "".join(secrets.choice(alphabet) for _ in range(length))


@dataclass
class SandboxConfig:
    corp_id: str
    token: str
    encoding_aes_key: str
    secrets: dict[str, str]  # secret → role name ("app", "contact", "kf")
    agent_id: int = 1000002
    callback_url: str = ""
    callback_timeout: float = 5.0
    callback_retries: int = 3
    callback_retry_delay: float = 1.0


@dataclass
class KfSession:
    last_customer_message_at: float = 0.0
    sent_since_customer_message: int = 0
    # kf/service_state (path/94698): 0 未处理, 1 由智能助手接待, 2 待接入池排队中, 3 由人工接待, 4 已结束/未开始
    service_state: int = 4
    servicer_userid: str = ""


@dataclass
class SandboxState:
    config: SandboxConfig
    clock: Callable[[], float] = time.time
    lock: threading.RLock = field(default_factory=threading.RLock)
    offset: float = 0.0
    tokens: dict[str, tuple[str, float]] = field(default_factory=dict)  # token → (role, expires_at)
    staff: dict[str, dict[str, Any]] = field(default_factory=dict)
    contacts: dict[str, dict[str, Any]] = field(default_factory=dict)  # external_userid → external_contact
    follows: dict[str, dict[str, dict[str, Any]]] = field(default_factory=lambda: defaultdict(dict))
    tag_groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    welcome_codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    welcomes_sent: list[dict[str, Any]] = field(default_factory=list)
    kf_accounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    kf_messages: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    kf_tokens: dict[str, tuple[str, float]] = field(default_factory=dict)
    kf_sessions: dict[tuple[str, str], KfSession] = field(default_factory=lambda: defaultdict(KfSession))
    kf_sent: list[dict[str, Any]] = field(default_factory=list)
    kf_page_limit: int = 1000  # WeCom "may return fewer" than asked: tests make pages small
    follow_page_limit: int = 500  # externalcontact/get: follow_user entries per page
    app_messages: list[dict[str, Any]] = field(default_factory=list)
    mass_messages: dict[str, dict[str, Any]] = field(default_factory=dict)
    moments: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[dict[str, Any]] = field(default_factory=list)
    faults: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    faults_after: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    # path → queued (seconds, mode): "late" does the call then answers late, "drop" never does it.
    delays: dict[str, list[tuple[float, str]]] = field(default_factory=lambda: defaultdict(list))
    deliveries: list[dict[str, Any]] = field(default_factory=list)
    delivery_bodies: dict[int, tuple[dict[str, str], str]] = field(default_factory=dict)
    oauth_codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    tickets: dict[str, list[tuple[str, float]]] = field(default_factory=lambda: defaultdict(list))
    ticket_fetches: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    jssdk_calls: list[dict[str, Any]] = field(default_factory=list)

    def now(self) -> float:
        return self.clock() + self.offset

    # ---------------------------------------------------------------- tokens

    def issue_token(self, corp_id: str, secret: str) -> tuple[str, int]:
        if corp_id != self.config.corp_id:
            raise WeComError(40013, "invalid corpid")
        role = self.config.secrets.get(secret)
        if role is None:
            raise WeComError(40001, "invalid credential, access_token is invalid or not latest")
        token = random_id("sbx_", 64)
        self.tokens[token] = (role, self.now() + TOKEN_TTL)
        return token, TOKEN_TTL

    def role_for(self, token: str | None) -> str:
        if not token:
            raise WeComError(41001, "access_token missing")
        entry = self.tokens.get(token)
        if entry is None:
            raise WeComError(40014, "invalid access_token")
        role, expires_at = entry
        if self.now() >= expires_at:
            raise WeComError(42001, "access_token expired")
        return role

    def expire_tokens(self) -> int:
        for token, (role, _) in list(self.tokens.items()):
            self.tokens[token] = (role, self.now() - 1)
        return len(self.tokens)

    def take_delay(self, path: str) -> tuple[float, str] | None:
        queue = self.delays.get(path)
        return queue.pop(0) if queue else None

    def take_fault(self, path: str, after: bool = False) -> int | None:
        queue = (self.faults_after if after else self.faults).get(path)
        return queue.pop(0) if queue else None

    # ---------------------------------------------------------------- OAuth2 and JS-SDK

    def issue_oauth_code(self, userid: str) -> str:
        """What WeCom's authorize page hands back after a member opens the app (or a customer does)."""
        code = random_id("sbxcode", 32)
        self.oauth_codes[code] = {"userid": userid, "issued_at": self.now()}
        return code

    def take_oauth_code(self, code: str) -> str | None:
        """The user behind a code, once; an unknown, used or expired code gives None (WeCom: 40029)."""
        entry = self.oauth_codes.pop(code, None)
        if entry is None or self.now() - entry["issued_at"] > OAUTH_CODE_TTL:
            return None
        return str(entry["userid"])

    def issue_ticket(self, kind: str) -> tuple[str, int]:
        """A JS-SDK ticket (``corp`` or ``agent``), within WeCom's hourly fetch limit."""
        now = self.now()
        fetches = [t for t in self.ticket_fetches[kind] if now - t < 3600]
        if len(fetches) >= TICKET_FETCHES_PER_HOUR[kind]:
            raise WeComError(45009, "api freq out of limit")
        self.ticket_fetches[kind] = [*fetches, now]
        ticket = random_id(f"{kind}_ticket_", 40)
        self.tickets[kind].append((ticket, now + TICKET_TTL))
        return ticket, TICKET_TTL

    def valid_tickets(self, kind: str) -> list[str]:
        return [t for t, expires_at in self.tickets[kind] if expires_at > self.now()]

    # ---------------------------------------------------------------- people

    def add_staff(self, userid: str, name: str = "") -> dict[str, Any]:
        member = self.staff.setdefault(userid, {"userid": userid, "name": name or userid})
        if name:
            member["name"] = name
        return member

    def require_staff(self, userid: str) -> dict[str, Any]:
        if userid not in self.staff:
            raise WeComError(60111, f"invalid userid: {userid}")
        return self.staff[userid]

    def add_contact(self, userid: str, external_userid: str, name: str, state: str = "",
                    add_way: int = 1, remark: str = "", created_at: float | None = None) -> dict[str, Any]:
        self.require_staff(userid)
        contact = self.contacts.setdefault(external_userid, {
            "external_userid": external_userid, "name": name, "type": 1, "gender": 0,
            "avatar": "", "unionid": "",
        })
        self.follows[external_userid][userid] = {
            "userid": userid, "remark": remark, "description": "",
            "createtime": int(created_at if created_at is not None else self.now()),
            "tags": [], "remark_corp_name": "", "remark_mobiles": [], "add_way": add_way,
            "oper_userid": external_userid, "state": state,
        }
        return contact

    def require_follow(self, userid: str, external_userid: str) -> dict[str, Any]:
        follow = self.follows.get(external_userid, {}).get(userid)
        if follow is None:
            raise WeComError(84061, "not external contact")
        return follow

    def issue_welcome_code(self, userid: str, external_userid: str) -> str:
        code = random_id("WELCOME", 32)
        self.welcome_codes[code] = {"userid": userid, "external_userid": external_userid,
                                    "issued_at": self.now(), "used": False}
        return code

    # ---------------------------------------------------------------- tags

    def find_tag(self, tag_id: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        for group in self.tag_groups.values():
            for tag in group["tag"]:
                if tag["id"] == tag_id:
                    return group, tag
        return None

    def ensure_corp_tag(self, group_name: str, tag_name: str) -> dict[str, Any]:
        """A corp tag by names, created (as an admin would in the console) if missing."""
        group = next((g for g in self.tag_groups.values() if g["group_name"] == group_name), None)
        if group is None:
            group = {"group_id": random_id("et", 20), "group_name": group_name, "create_time": int(self.now()),
                     "order": 0, "tag": []}
            self.tag_groups[group["group_id"]] = group
        tag = next((t for t in group["tag"] if t["name"] == tag_name), None)
        if tag is None:
            tag = {"id": random_id("et", 20), "name": tag_name, "create_time": int(self.now()), "order": 0}
            group["tag"].append(tag)
        return {"group": group, "tag": tag}

    def corp_tag_count(self) -> int:
        return sum(len(g["tag"]) for g in self.tag_groups.values())

    # ---------------------------------------------------------------- kf

    def kf_customer_message(self, open_kfid: str, external_userid: str, msgtype: str,
                            body: dict[str, Any], origin: int = 3,
                            servicer_userid: str = "") -> tuple[dict[str, Any], str]:
        """Append a message to the account's stream; returns it and the callback Token."""
        if open_kfid not in self.kf_accounts:
            raise WeComError(95000, f"invalid open_kfid: {open_kfid}")
        now = self.now()
        message = {"msgid": random_id("from_msgid_", 20), "open_kfid": open_kfid, "external_userid": external_userid,
                   "send_time": int(now), "origin": origin, "msgtype": msgtype, msgtype: body}
        if servicer_userid:
            message["servicer_userid"] = servicer_userid
        self.kf_messages[open_kfid].append(message)
        if origin == 3:
            session = self.kf_sessions[(open_kfid, external_userid)]
            session.last_customer_message_at, session.sent_since_customer_message = now, 0
            if session.service_state == 4:  # a customer writing to an ended session opens a new one
                session.service_state, session.servicer_userid = 0, ""
        token = random_id("ENC", 44)
        self.kf_tokens[token] = (open_kfid, now + KF_TOKEN_TTL)
        return message, token

    def kf_event(self, open_kfid: str, event: dict[str, Any]) -> str:
        message, token = self.kf_customer_message(open_kfid, event.get("external_userid", ""), "event",
                                                  event, origin=4)
        return token

    def record_call(self, entry: dict[str, Any]) -> None:
        self.calls.append(entry)
