"""微信客服 (kf_msg_or_event): the callback carries no content; pull it with kf/sync_msg, saving
the cursor after every page, then record each customer message, tag by keyword, honour
opt-out words, and reply by rule and by tier inside WeCom's 48-hour / 5-message window."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from wechatpy.exceptions import WeChatClientException

from bot.contacts.customers import set_opted_out
from bot.core.privacy import masked
from bot.inbox.dispatcher import HandlerContext, on
from bot.models import Customer, Interaction, KfConversation, OutboxMessage, SyncCursor, utcnow
from bot.outbox import enqueue, kf_msgid
from bot.outbox.messages import customer_vars, tier_keys
from bot.tagging.system import apply_rules
from handlers.contacts import from_epoch, push_customer_tags, record_interaction

EVENT = "kf_msg_or_event"
CUSTOMER, SYSTEM, SERVICER = 3, 4, 5  # msg_list[].origin
INVALID_MSG_TOKEN = 95007
EVENT_CODE_WINDOW = timedelta(seconds=20)
SERVICE_STATE_POOL = 2  # kf/service_state: 2 = 待接入池排队中 (official path/94698)
SESSION_LIFETIME = timedelta(hours=48)  # a kf session ends at the latest 48 h after it began
MAX_PAGES = 10_000  # a guard against a server that never says has_more=0
FAIL_TYPES = {0: "unknown", 1: "kf account deleted", 2: "app closed", 4: "session expired (over 48 hours)",
              5: "session closed", 6: "over the 5-message limit", 7: "视频号 verification pending",
              8: "主体 not verified", 9: "视频号 not verified", 10: "customer refused messages"}
_SCENE = re.compile(r"[0-9A-Za-z_-]{1,32}")  # kf/add_contact_way's scene (WECOM.md §3)


@on("event", EVENT)
def kf_messages(event: Any, ctx: HandlerContext) -> None:
    open_kfid = str(ctx.fields.get("OpenKfId") or "")
    if not open_kfid:
        raise ValueError("kf_msg_or_event without OpenKfId")
    if ctx.clients is None:
        raise RuntimeError("WeCom is not configured: cannot pull kf messages")
    if not _start_sync(open_kfid):
        return  # a sync of this account is running in this process: it goes round once more for this callback
    try:
        while True:
            _sync(ctx, open_kfid, str(ctx.fields.get("Token") or ""))
            if not _another_round(open_kfid):
                return
    except BaseException:
        _end_sync(open_kfid)
        raise


@dataclass
class _SyncState:
    running: bool = False
    again: bool = False


# One sync per kf account at a time in a process: every callback of a busy account would start one, two
# from one cursor read the same page, and threads waiting their turn would keep welcomes waiting too. A
# callback that finds its account's sync running asks it for one more round and is done. (Across
# processes, the cursor row's lock serialises them on PostgreSQL.)
_SYNCS: dict[str, _SyncState] = {}
_SYNCS_GUARD = threading.Lock()


def _start_sync(open_kfid: str) -> bool:
    with _SYNCS_GUARD:
        state = _SYNCS.setdefault(open_kfid, _SyncState())
        if state.running:
            state.again = True
            return False
        state.running, state.again = True, False
        return True


def _another_round(open_kfid: str) -> bool:
    """After a sync: True (and the request taken) when a callback asked for one more; else the sync ends."""
    with _SYNCS_GUARD:
        state = _SYNCS[open_kfid]
        if state.again:
            state.again = False
            return True
        state.running = False
        return False


def _end_sync(open_kfid: str) -> None:
    with _SYNCS_GUARD:
        _SYNCS[open_kfid].running = False


def _sync(ctx: HandlerContext, open_kfid: str, token: str) -> None:
    name = f"kf:{open_kfid}"
    for _ in range(MAX_PAGES):
        cursor = _load_cursor(ctx, name)
        page, token = _pull(ctx, open_kfid, token, cursor)
        messages = [m for m in page.get("msg_list") or [] if isinstance(m, dict)]
        touched = handle_page(ctx, open_kfid, messages)
        _save_cursor(ctx, name, page.get("next_cursor") or cursor)
        for customer in touched:
            push_customer_tags(ctx, customer)
        ctx.checkpoint()  # this page and its cursor are durable; its replies go out now
        if not page.get("has_more"):  # an empty page may still say has_more: keep going
            return
    raise RuntimeError(f"kf sync for {open_kfid} still had more after {MAX_PAGES} pages")


def _pull(ctx: HandlerContext, open_kfid: str, token: str, cursor: str) -> tuple[dict[str, Any], str]:
    try:
        return ctx.clients.kf.kf.sync_msg(token=token, cursor=cursor, open_kfid=open_kfid), token
    except WeChatClientException as exc:
        if exc.errcode != INVALID_MSG_TOKEN or not token:
            raise
        # The callback token lives 10 minutes; a late retry reads without it (stricter rate limit).
        ctx.log.info("kf callback token expired; syncing %s without it", open_kfid)
        return ctx.clients.kf.kf.sync_msg(cursor=cursor, open_kfid=open_kfid), ""


def _load_cursor(ctx: HandlerContext, name: str) -> str:
    postgresql = ctx.session.bind.dialect.name == "postgresql"
    if postgresql:  # a row to lock even before the first page: two first syncs must not both read from ""
        ctx.session.execute(pg_insert(SyncCursor).values(name=name, cursor="").on_conflict_do_nothing())
    # populate_existing: the session may hold this row from the previous page; the locked values are read.
    row = ctx.session.get(SyncCursor, name, with_for_update=postgresql, populate_existing=True)
    return row.cursor if row else ""


def _save_cursor(ctx: HandlerContext, name: str, cursor: str) -> None:
    row = ctx.session.get(SyncCursor, name)
    if row is None:
        ctx.session.add(SyncCursor(name=name, cursor=cursor))
    else:
        row.cursor = cursor
    ctx.session.flush()


# ------------------------------------------------------------------ one page


def handle_page(ctx: HandlerContext, open_kfid: str, messages: list[dict[str, Any]]) -> list[Customer]:
    """Handle one sync page in order; returns the customers whose tags may have changed."""
    fresh = [m for m in messages if not _seen(ctx, m)]
    _note_latest_customer_messages(ctx, open_kfid, fresh)
    touched: dict[int, Customer] = {}
    for message in fresh:
        origin = _origin(message)
        if origin == CUSTOMER and not message.get("external_userid"):
            # Skipped, not raised: a raise would keep the cursor before this page, and every later sync
            # of this kf account would fail on the same message.
            ctx.log.warning("kf message %s from a customer without external_userid skipped", message.get("msgid"))
            continue
        if origin == CUSTOMER:
            customer = _customer_message(ctx, open_kfid, message)
            touched[customer.id] = customer
        elif origin == SERVICER:
            _servicer_message(ctx, open_kfid, message)
        elif message.get("msgtype") == "event":
            _system_event(ctx, open_kfid, message)
    return list(touched.values())


def _seen(ctx: HandlerContext, message: dict[str, Any]) -> bool:
    msgid = message.get("msgid")
    if not msgid:
        return False
    return ctx.session.scalar(select(Interaction.id).where(Interaction.source_ref == f"kf:{msgid}")) is not None


def _note_latest_customer_messages(ctx: HandlerContext, open_kfid: str, messages: Iterable[dict[str, Any]]) -> None:
    """WeCom counts the 5-message quota from the customer's latest message at send time, so a page
    holding several messages opens one window, at the last of them (replies to earlier ones count)."""
    latest: dict[str, datetime] = {}
    for m in messages:
        if _origin(m) == CUSTOMER and m.get("external_userid"):
            at = _sent_at(m)
            latest[m["external_userid"]] = max(at, latest.get(m["external_userid"], at))
    for external_userid, at in latest.items():
        conversation = _conversation(ctx, open_kfid, external_userid)
        if conversation.last_customer_message_at is None or at > conversation.last_customer_message_at:
            conversation.last_customer_message_at, conversation.sent_since_customer_message = at, 0


def _customer_message(ctx: HandlerContext, open_kfid: str, message: dict[str, Any]) -> Customer:
    external_userid = str(message.get("external_userid") or "")
    if not external_userid:
        raise ValueError(f"kf message {message.get('msgid')} has no external_userid")
    customer = _customer(ctx, external_userid)
    conversation = _conversation(ctx, open_kfid, external_userid)
    conversation.customer_id = customer.id
    msgtype = str(message.get("msgtype") or "unknown")
    text = _text_of(message)
    record_interaction(ctx, customer, "kf_message", f"kf:{message['msgid']}", None,
                       {"open_kfid": open_kfid, "msgtype": msgtype, "text": text[:500]}, occurred=_sent_at(message))
    word = text.strip().casefold()
    opting_out = word in {w.strip().casefold() for w in ctx.settings.kf.opt_out_words}
    if not opting_out:  # 退订 in answer to a push is no engagement with it (it scored 2 activity points)
        _campaign_reply(ctx, customer, _sent_at(message))
    if text:
        apply_rules(ctx.session, ctx.tag_rules, customer.id, "kf_keyword", text=text,
                    push=ctx.settings.tags.push_to_wecom)
    if opting_out:
        _opt(ctx, customer, conversation, message, out=True)
    elif word in {w.strip().casefold() for w in ctx.settings.kf.opt_in_words}:
        _opt(ctx, customer, conversation, message, out=False)
    elif ctx.settings.kf.auto_reply:
        _reply(ctx, customer, conversation, message, _rule_for(ctx, text), text)
    return customer


def _campaign_reply(ctx: HandlerContext, customer: Customer, at: datetime) -> None:
    """A campaign reply (an activity input, DESIGN §4.4): the customer writes to 微信客服 within
    ``tiers.campaign_reply_days`` of a push that reached them. Replies in the member's own chat are
    not visible to the service (WeCom shows an app no member's chat); this is the reply it can see.
    Once per push."""
    days = ctx.settings.tiers.campaign_reply_days
    if not days:
        return
    push = ctx.session.scalar(
        select(OutboxMessage.id).where(OutboxMessage.customer_id == customer.id,
                                       OutboxMessage.channel == "mass_message",
                                       OutboxMessage.status == "confirmed",  # the member sent it
                                       OutboxMessage.created_at >= at - timedelta(days=days + 30),
                                       OutboxMessage.sent_at.between(at - timedelta(days=days), at))
        .order_by(OutboxMessage.id.desc()).limit(1))
    if push is not None:
        record_interaction(ctx, customer, "campaign_reply", f"campaign_reply:{push}", None, {"outbox_id": push},
                           occurred=at)


def _opt(ctx: HandlerContext, customer: Customer, conversation: KfConversation, message: dict[str, Any],
         out: bool) -> None:
    """退订 / 恢复订阅: switch broadcasts off or on; confirm only when the switch actually moved."""
    if not set_opted_out(ctx.session, customer, out, _sent_at(message), via="kf"):
        return
    ctx.log.info("customer %s opted %s of broadcasts", customer.id, "out" if out else "back in")
    _reply(ctx, customer, conversation, message, "opt_out" if out else "opt_in", "")


def _rule_for(ctx: HandlerContext, text: str) -> str:
    folded = text.casefold()
    for rule in ctx.settings.kf.reply_rules:
        if any(k.casefold() in folded for k in rule["keywords"]):
            return str(rule["name"])
    return "default"


def _reply(ctx: HandlerContext, customer: Customer, conversation: KfConversation, message: dict[str, Any],
           name: str, text: str) -> None:
    now = utcnow()
    key = f"kf-reply:{message['msgid']}"
    reason = _why_not_reply(ctx, conversation, name, now) or _too_old(ctx, message, now)
    rendered = ctx.templates.render("reply", name, tier_keys(customer), customer=customer_vars(customer),
                                    brand=ctx.settings.app.brand_name, text=text)
    content = {"text": rendered.text, "open_kfid": conversation.open_kfid, "msgid": kf_msgid(key),
               "template": rendered.template, "reply_to": message["msgid"]}
    base = {"channel": "kf", "dedupe_key": key, "recipient": customer.external_userid, "trigger_kind": "reply",
            "trigger_ref": name, "customer_id": customer.id, "content": content}
    if reason:
        enqueue(ctx.session, **base, status="skipped", reason=reason)
        return
    # The 48-hour window bounds sending (and a resend after an unanswered attempt).
    window_ends = conversation.last_customer_message_at + timedelta(hours=ctx.settings.kf.window_hours)
    row = enqueue(ctx.session, **base, expires_at=window_ends)
    if row is not None:
        conversation.sent_since_customer_message += 1
        conversation.last_reply_at = now
        ctx.send_after_commit(row.id)
        if name in ctx.settings.kf.transfer_rules:
            _hand_to_pool(ctx, conversation, row.id)


def _hand_to_pool(ctx: HandlerContext, conversation: KfConversation, reply_id: int) -> None:
    """The customer asked for a person: once the reply saying so is out (the API may send only while the
    session is new or with the assistant), the session goes to the waiting pool for a servicer to take,
    and the bot stays quiet until the servicer ends it (session_status_change) or it lapses. If the reply
    did not go out or WeCom refuses the transfer, the session stays with the bot, which keeps answering."""
    if ctx.clients is None or ctx.db is None:
        return
    conversation_id, external_userid = conversation.id, conversation.external_userid
    open_kfid, log, client, db = conversation.open_kfid, ctx.log, ctx.clients.kf, ctx.db

    def transfer() -> None:
        with db.sessions() as session:
            reply = session.get(OutboxMessage, reply_id)
            if reply is None or reply.status != "sent":
                log.warning("kf session of customer %s not handed over: the reply saying so was not sent (%s)",
                            masked(external_userid), reply.status if reply else "missing")
                return
        try:
            client.kf.trans_service_state(open_kfid, external_userid, SERVICE_STATE_POOL)
        except (WeChatClientException, OSError) as exc:
            log.warning("kf session of customer %s not handed to the waiting pool: %s", masked(external_userid),
                        f"WeCom {exc.errcode} {exc.errmsg}" if isinstance(exc, WeChatClientException)
                        else type(exc).__name__)
            return
        with db.begin() as session:
            session.get(KfConversation, conversation_id).with_people_since = utcnow()
        log.info("kf session of customer %s handed to the waiting pool", masked(external_userid))

    ctx.after_commit(transfer)


def _too_old(ctx: HandlerContext, message: dict[str, Any], now: datetime) -> str | None:
    """A message read long after it was written (a first sync reads three days back, so does one after an
    outage) gets no automatic answer: a bot replying hours late to a question a person may have answered."""
    limit = ctx.settings.kf.reply_max_age_minutes
    age = now - _sent_at(message)
    if age > timedelta(minutes=limit):
        return (f"too old to answer automatically: written {int(age.total_seconds() // 60)} minutes ago "
                f"(kf.reply_max_age_minutes = {limit})")
    return None


def _why_not_reply(ctx: HandlerContext, conversation: KfConversation, name: str, now: datetime) -> str | None:
    kf = ctx.settings.kf
    last = conversation.last_customer_message_at
    if last is None or now - last > timedelta(hours=kf.window_hours):
        return f"kf window closed: more than {kf.window_hours} hours since the customer's last message"
    if conversation.sent_since_customer_message >= kf.window_messages:
        return (f"kf window full: {conversation.sent_since_customer_message} messages already sent since the "
                f"customer's last message (WeCom allows {kf.window_messages} within {kf.window_hours} hours)")
    people = conversation.with_people_since
    if people is not None and now - people < SESSION_LIFETIME:
        return "the conversation is with a person (WeCom's waiting pool or a servicer): the API may not send"
    servicer = conversation.last_servicer_message_at
    if servicer is not None and now - servicer < timedelta(minutes=kf.human_takeover_minutes):
        return f"a servicer is handling this conversation (wrote within {kf.human_takeover_minutes} minutes)"
    cooldown = timedelta(minutes=kf.default_reply_cooldown_minutes)
    if name == "default" and conversation.last_reply_at is not None and now - conversation.last_reply_at < cooldown:
        # Saying it again would be noise, not news; kept as skipped with the reason, as every skip is.
        return (f"cooldown: a reply went out within kf.default_reply_cooldown_minutes "
                f"({kf.default_reply_cooldown_minutes})")
    return None


def _servicer_message(ctx: HandlerContext, open_kfid: str, message: dict[str, Any]) -> None:
    """A servicer typed in the WeCom client: it uses the same quota, and the bot steps back."""
    external_userid = str(message.get("external_userid") or "")
    if not external_userid:
        return
    conversation = _conversation(ctx, open_kfid, external_userid)
    at = _sent_at(message)
    conversation.last_servicer_message_at = max(at, conversation.last_servicer_message_at or at)
    if conversation.last_customer_message_at is None or at >= conversation.last_customer_message_at:
        conversation.sent_since_customer_message += 1
    customer = _customer(ctx, external_userid)
    record_interaction(ctx, customer, "kf_servicer_message", f"kf:{message['msgid']}",
                       message.get("servicer_userid"), {"open_kfid": open_kfid, "msgtype": message.get("msgtype")},
                       occurred=at, touch=False)


# ------------------------------------------------------------------ system events


def _system_event(ctx: HandlerContext, open_kfid: str, message: dict[str, Any]) -> None:
    event = message.get("event") if isinstance(message.get("event"), dict) else {}
    kind = event.get("event_type")
    if kind == "enter_session":
        _enter_session(ctx, open_kfid, event, message)
    elif kind == "msg_send_fail":
        _send_failed(ctx, event)
    elif kind == "session_status_change":
        _session_status_changed(ctx, open_kfid, event, message)
    else:
        ctx.log.debug("kf event %s on %s noted", kind, open_kfid)


def welcome_template_name(scene: str) -> str:
    """kf_welcome/<scene>.j2 for a scene WeCom can issue, else default (a scene is never a path)."""
    return scene if _SCENE.fullmatch(scene) else "default"


def _enter_session(ctx: HandlerContext, open_kfid: str, event: dict[str, Any], message: dict[str, Any]) -> None:
    external_userid = str(event.get("external_userid") or message.get("external_userid") or "")
    code = str(event.get("welcome_code") or "")
    if not external_userid or not code or not ctx.settings.kf.welcome_on_enter:
        return
    customer = _customer(ctx, external_userid)
    scene = str(event.get("scene") or "")
    name = welcome_template_name(scene)
    rendered = ctx.templates.render("kf_welcome", name, tier_keys(customer), customer=customer_vars(customer),
                                    brand=ctx.settings.app.brand_name, scene=scene)
    key = f"kf-welcome:{code}"
    # The code lasts 20 s from the event itself: a first sync (or one after an outage) reads up to three
    # days back, and those events' codes are long dead.
    started = min(ctx.received_at or utcnow(), utcnow())
    if message.get("send_time"):
        started = min(started, from_epoch(message["send_time"]))
    row = enqueue(ctx.session, channel="kf_event", dedupe_key=key, recipient=external_userid,
                  trigger_kind="kf_welcome", trigger_ref=scene or "default", customer_id=customer.id,
                  content={"text": rendered.text, "code": code, "msgid": kf_msgid(key), "open_kfid": open_kfid,
                           "template": rendered.template},
                  expires_at=started + EVENT_CODE_WINDOW)
    ctx.send_after_commit(row.id if row else None)


def _session_status_changed(ctx: HandlerContext, open_kfid: str, event: dict[str, Any],
                            message: dict[str, Any]) -> None:
    """A servicer took the session from the pool (1), passed it on (2) or took up an ended one (4): a
    person has it, and the API may not send (95018) until it ends. Ended (3): the customer's next
    message opens a new session, which the bot answers again."""
    external_userid = str(event.get("external_userid") or message.get("external_userid") or "")
    change = int(event.get("change_type") or 0)
    if not external_userid or change not in (1, 2, 3, 4):
        return
    conversation = _conversation(ctx, open_kfid, external_userid)
    conversation.with_people_since = None if change == 3 else _sent_at(message)
    ctx.log.info("kf session of customer %s: %s", masked(external_userid),
                 "ended by the servicer" if change == 3 else "with a servicer")


def _send_failed(ctx: HandlerContext, event: dict[str, Any]) -> None:
    """WeCom accepted a message and later failed it: record that on the outbox row."""
    msgid = str(event.get("fail_msgid") or "")
    fail_type = int(event.get("fail_type") or 0)
    row = ctx.session.scalar(select(OutboxMessage).where(OutboxMessage.wecom_msgid == msgid,
                                                         OutboxMessage.channel.in_(("kf", "kf_event"))))
    if row is None:
        ctx.log.warning("msg_send_fail for unknown kf msgid %s (fail_type %s)", msgid, fail_type)
        return
    row.status = "failed"
    row.reason = f"msg_send_fail: {FAIL_TYPES.get(fail_type, 'fail_type ' + str(fail_type))} (fail_type {fail_type})"


# ------------------------------------------------------------------ lookups


def _customer(ctx: HandlerContext, external_userid: str) -> Customer:
    customer = ctx.session.scalar(select(Customer).where(Customer.external_userid == external_userid))
    if customer is None:
        customer = Customer(external_userid=external_userid, name=_nickname(ctx, external_userid))
        ctx.session.add(customer)
        ctx.session.flush()
    return customer


def _nickname(ctx: HandlerContext, external_userid: str) -> str:
    try:
        found = ctx.clients.kf.kf.batchget_customer([external_userid]).get("customer_list") or []
    except (WeChatClientException, OSError) as exc:
        ctx.log.info("kf customer %s: nickname not readable (%s)", masked(external_userid), exc)
        return ""
    return str(found[0].get("nickname") or "")[:255] if found else ""


def _conversation(ctx: HandlerContext, open_kfid: str, external_userid: str) -> KfConversation:
    row = ctx.session.scalar(select(KfConversation).where(KfConversation.open_kfid == open_kfid,
                                                          KfConversation.external_userid == external_userid))
    if row is None:
        row = KfConversation(open_kfid=open_kfid, external_userid=external_userid, sent_since_customer_message=0)
        ctx.session.add(row)
        ctx.session.flush()
    return row


def _text_of(message: dict[str, Any]) -> str:
    if message.get("msgtype") == "text" and isinstance(message.get("text"), dict):
        return str(message["text"].get("content") or "")
    return ""


def _origin(message: dict[str, Any]) -> int:
    """Who wrote it (3 customer, 4 system, 5 servicer); 0 for anything unreadable (the message is skipped)."""
    try:
        return int(message.get("origin") or 0)
    except (TypeError, ValueError):
        return 0


def _sent_at(message: dict[str, Any]) -> datetime:
    try:
        return from_epoch(message.get("send_time"))
    except (TypeError, ValueError, OverflowError):
        return utcnow()
