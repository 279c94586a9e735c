"""Mass messages to customer groups: pending ``group_message`` rows due now are grouped by owner and
text and submitted with add_msg_template ``chat_type=group`` (≤ 2000 chats per call). Nothing is sent
until the owner confirms in the client, so rows become ``submitted`` with the msgid; chats WeCom
refuses (``fail_list``) are ``failed``. get_groupmsg_send_result then gives one row per chat: 1 →
confirmed with the send time, 2 / 3 → failed with WeCom's reason. add_msg_template is not idempotent:
rows a crash left ``sending`` are looked up in get_groupmsg_list_v2 (chat_type group) before any
second call, as for customer mass messages."""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from wechatpy.exceptions import WeChatClientException

from bot.core.db import Database
from bot.models import OutboxMessage, utcnow
from bot.outbox.mass import claim_pending, defer_rate_limited, find_interrupted_task
from bot.outbox.policy import ContactPolicy
from bot.wecom.client import BUSY_ERRORS

logger = logging.getLogger(__name__)
CHANNEL = "group_message"
MAX_CHATS = 2000
CLOCK_MARGIN = timedelta(minutes=1)
RESULT_STATUS = {
    2: "not sent: the group is gone or the owner is no longer in it",
    3: "not sent: the group already had its mass messages for this period (WeCom cap)",
}


def submit_group_messages(db: Database, contact_client: Any, policy: ContactPolicy,
                          now: datetime | None = None) -> Counter[str]:
    now = now or utcnow()
    outcome: Counter[str] = Counter()
    if policy.in_quiet_hours(now):
        return outcome  # deferred, not dropped
    with db.begin() as session:
        rows = session.execute(select(OutboxMessage.id, OutboxMessage.sender_userid, OutboxMessage.recipient,
                                      OutboxMessage.content).where(
            OutboxMessage.channel == CHANNEL, OutboxMessage.status == "pending",
            OutboxMessage.scheduled_at <= now).order_by(OutboxMessage.id)).all()
        batches: dict[tuple[str, str], list[tuple[int, str]]] = defaultdict(list)
        claimed = claim_pending(session, [r.id for r in rows], now)
        for row in rows:
            if row.id in claimed:
                batches[(row.sender_userid or "", row.content["text"])].append((row.id, row.recipient))
    for (sender, text), members in batches.items():
        for start in range(0, len(members), MAX_CHATS):
            _submit(db, contact_client, sender, text, members[start:start + MAX_CHATS], outcome, now)
    return outcome


def _submit(db: Database, client: Any, sender: str, text: str, members: list[tuple[int, str]],
            outcome: Counter[str], now: datetime) -> None:
    ids = [i for i, _ in members]
    if not sender:
        _finish(db, ids, "failed", "no owner to send it")
        outcome["failed"] += len(ids)
        return
    template = {"chat_type": "group", "sender": sender, "chat_id_list": [c for _, c in members],
                "text": {"content": text}}
    try:
        answer = client.external_contact.add_msg_template(template)
    except WeChatClientException as exc:
        if exc.errcode in BUSY_ERRORS:  # WeCom may have made the task: looked up, not sent again blindly
            logger.warning("add_msg_template (groups) answered %s; %d row(s) left sending for the look-up",
                           exc.errcode, len(ids))
            outcome["unknown"] += len(ids)
            return
        if defer_rate_limited(db, ids, exc, now):
            outcome["deferred"] += len(ids)
            return
        _finish(db, ids, "failed", f"add_msg_template: WeCom {exc.errcode} {exc.errmsg}")
        outcome["failed"] += len(ids)
        return
    refused = set(answer.get("fail_list") or [])
    _finish(db, [i for i, c in members if c not in refused], "submitted",
            "waiting for the owner to confirm in WeCom", answer.get("msgid"))
    _finish(db, [i for i, c in members if c in refused], "failed", "WeCom refused the group (fail_list)")
    outcome["submitted"] += sum(1 for _, c in members if c not in refused)
    outcome["failed"] += sum(1 for _, c in members if c in refused)


def _finish(db: Database, ids: list[int], status: str, reason: str | None, msgid: str | None = None) -> None:
    if not ids:
        return
    values: dict[str, Any] = {"status": status, "reason": reason, "updated_at": utcnow()}
    if msgid:
        values["wecom_msgid"] = msgid
    with db.begin() as session:
        session.execute(update(OutboxMessage).where(OutboxMessage.id.in_(ids)).values(**values))


def poll_group_results(db: Database, contact_client: Any) -> Counter[str]:
    outcome: Counter[str] = Counter()
    with db.sessions() as session:
        pending = session.execute(select(OutboxMessage.wecom_msgid, OutboxMessage.sender_userid).where(
            OutboxMessage.channel == CHANNEL, OutboxMessage.status == "submitted",
            OutboxMessage.wecom_msgid.is_not(None)).distinct()).all()
    for msgid, sender in pending:
        try:
            items = list(contact_client.external_contact.gen_groupmsg_send_result(msgid, sender or ""))
        except WeChatClientException as exc:
            logger.warning("group mass message %s: results not readable (%s)", msgid, exc)
            outcome["unreadable"] += 1
            continue
        with db.begin() as session:
            for item in items:
                status = int(item.get("status") or 0)
                if status == 0 or not item.get("chat_id"):
                    outcome["waiting"] += 1
                    continue
                values: dict[str, Any] = {"updated_at": utcnow()}
                if status == 1:
                    sent = item.get("send_time")
                    values.update(status="confirmed", reason=None,
                                  sent_at=datetime.fromtimestamp(int(sent), tz=UTC) if sent else utcnow())
                else:
                    values.update(status="failed", reason=RESULT_STATUS.get(status, f"WeCom result status {status}"))
                session.execute(update(OutboxMessage).where(
                    OutboxMessage.channel == CHANNEL, OutboxMessage.wecom_msgid == msgid,
                    OutboxMessage.recipient == str(item["chat_id"]), OutboxMessage.status == "submitted")
                    .values(**values))
                outcome[values["status"]] += 1
    return outcome


def resolve_interrupted(db: Database, contact_client: Any, lease_seconds: float,
                        now: datetime | None = None) -> Counter[str]:
    """Rows a crash left ``sending``: found in WeCom's list (same owner and text) → submitted with
    that msgid; not found → pending again."""
    now = now or utcnow()
    outcome: Counter[str] = Counter()
    with db.sessions() as session:
        rows = session.execute(select(OutboxMessage.id, OutboxMessage.sender_userid, OutboxMessage.content,
                                      OutboxMessage.updated_at).where(
            OutboxMessage.channel == CHANNEL, OutboxMessage.status == "sending",
            OutboxMessage.updated_at < now - timedelta(seconds=lease_seconds))).all()
    batches: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for row in rows:
        batches[(row.sender_userid or "", row.content["text"])].append(row)
    for (sender, text), members in batches.items():
        since = min(r.updated_at for r in members) - CLOCK_MARGIN
        try:
            found = find_interrupted_task(db, contact_client, "group", sender, text, since, now + CLOCK_MARGIN)
        except WeChatClientException as exc:
            logger.warning("interrupted group mass message not looked up (%s); left as sending", exc)
            outcome["unknown"] += len(members)
            continue
        ids = [r.id for r in members]
        if found:
            _finish(db, ids, "submitted", "interrupted; WeCom has it, waiting for the owner to confirm", found)
            outcome["submitted"] += len(ids)
        else:
            with db.begin() as session:
                session.execute(update(OutboxMessage).where(OutboxMessage.id.in_(ids),
                                                            OutboxMessage.status == "sending")
                                .values(status="pending", reason="interrupted before WeCom had it; sent again",
                                        updated_at=now))
            outcome["pending"] += len(ids)
    return outcome
