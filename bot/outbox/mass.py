"""Mass messages (企业群发): pending rows due now are grouped by sending member and text and
submitted with add_msg_template (≤10,000 customers per call). WeCom does not send them itself —
the member confirms in the client — so rows become ``submitted`` with the msgid; customers WeCom
refuses (``fail_list``) are ``failed``. A customer who opted out after planning is skipped."""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy import select, update
from wechatpy.exceptions import WeChatClientException

from bot.core.db import Database
from bot.core.lease import LeaseKeeper
from bot.core.privacy import masked
from bot.models import Customer, MassReminder, Order, OutboxMessage, utcnow
from bot.outbox.policy import ContactPolicy
from bot.outbox.queue import withdraw_carried_coupons
from bot.wecom.client import BUSY_ERRORS

logger = logging.getLogger(__name__)
MAX_RECIPIENTS = 10_000
# Submissions refused for WeCom's frequency limit (45009) this many times are given up.
RATE_LIMITED_ATTEMPTS = 10
# WeCom's clock and ours may differ: a call is looked up in its creation window widened by this much.
CLOCK_MARGIN = timedelta(minutes=1)
ORDERED_SINCE = "ordered since the step was planned (it was for customers without an order)"
# In a row's content: for customers who have not ordered since this time (a sequence step for the
# unconverted); if they order before it goes out (it waited for quiet hours to end), it is skipped.
UNLESS_ORDERED = "unless_ordered_since"


def submit_mass_messages(db: Database, contact_client: Any, policy: ContactPolicy,
                         now: datetime | None = None, lease_seconds: float = 300.0) -> Counter[str]:
    now = now or utcnow()
    outcome: Counter[str] = Counter()
    if policy.in_quiet_hours(now):
        return outcome  # deferred, not dropped: the rows wait for the end of quiet hours
    with db.begin() as session:
        rows = session.execute(
            select(OutboxMessage.id, OutboxMessage.sender_userid, OutboxMessage.recipient, OutboxMessage.content,
                   OutboxMessage.customer_id, Customer.opted_out)
            .join(Customer, Customer.id == OutboxMessage.customer_id)
            .where(OutboxMessage.channel == "mass_message", OutboxMessage.status == "pending",
                   OutboxMessage.scheduled_at <= now)).all()
        groups: dict[tuple[str, str], list[tuple[int, str]]] = defaultdict(list)
        opted_out = {row.id for row in rows if row.opted_out}
        ordered = {row.id for row in rows if row.id in _ordered_since_planned(session, rows)} - opted_out
        for skipped, reason in ((opted_out, "opted out (退订) after planning"), (ordered, ORDERED_SINCE)):
            if skipped:
                session.execute(update(OutboxMessage).where(OutboxMessage.id.in_(skipped)).values(
                    status="skipped", reason=reason, updated_at=now))
                withdraw_carried_coupons(session, OutboxMessage.id.in_(skipped))
                outcome["skipped"] += len(skipped)
        claimed = claim_pending(session, [row.id for row in rows if row.id not in opted_out | ordered], now)
        for row in rows:
            if row.id in claimed:
                groups[(row.sender_userid or "", row.content["text"])].append((row.id, row.recipient))
    # The claim is renewed while the groups are submitted: resolve_interrupted must only look up
    # a dead run's rows (its "not found" would send again what this run is about to submit).
    with LeaseKeeper(partial(_renew, db), now, utcnow, lease_seconds, "mass messages"):
        for (sender, text), members in groups.items():
            for start in range(0, len(members), MAX_RECIPIENTS):
                _submit(db, contact_client, sender, text, members[start:start + MAX_RECIPIENTS], outcome, now)
    return outcome


def _ordered_since_planned(session: Any, rows: list[Any]) -> set[int]:
    """Rows planned for customers without an order since a time (content ``unless_ordered_since``: a
    sequence step for the unconverted) whose customer has paid an order since: they converted while
    the row waited (for quiet hours to end, say), and the step's "no order yet" coupon is not theirs."""
    since = {row.id: (row.customer_id, datetime.fromisoformat(row.content[UNLESS_ORDERED]))
             for row in rows if isinstance(row.content, dict) and row.content.get(UNLESS_ORDERED)}
    if not since:
        return set()
    earliest = min(at for _, at in since.values())
    paid: dict[int, list[datetime]] = defaultdict(list)
    for customer_id, paid_at in session.execute(select(Order.customer_id, Order.paid_at).where(
            Order.customer_id.in_({c for c, _ in since.values()}), Order.status == "paid", Order.paid_at >= earliest)):
        paid[customer_id].append(paid_at if paid_at.tzinfo else paid_at.replace(tzinfo=UTC))
    return {row_id for row_id, (customer_id, at) in since.items() if any(p >= at for p in paid[customer_id])}


def claim_pending(session: Any, ids: list[int], now: datetime) -> set[int]:
    """Mark the rows still pending ``sending`` (claimed at ``now``) and return those this call claimed:
    another submit that read the same rows a moment earlier claimed the rest, and only one may submit
    each (two add_msg_template tasks: the member would be asked to send it twice)."""
    if not ids:
        return set()
    claim = (update(OutboxMessage).where(OutboxMessage.id.in_(ids), OutboxMessage.status == "pending")
             .values(status="sending", attempts=OutboxMessage.attempts + 1, updated_at=now))
    if session.get_bind().dialect.update_returning:
        return set(session.scalars(claim.returning(OutboxMessage.id)))
    session.execute(claim)  # SQLite before 3.35: this claim's rows carry its time
    return set(session.scalars(select(OutboxMessage.id).where(
        OutboxMessage.id.in_(ids), OutboxMessage.status == "sending", OutboxMessage.updated_at == now)))


def _renew(db: Database, held: datetime, new: datetime) -> bool:
    """Restamp this run's rows still "sending" (they carry its claim time). Rows already submitted
    need no lease, so finding none left is not a lost claim."""
    with db.begin() as session:
        session.execute(update(OutboxMessage).where(
            OutboxMessage.channel == "mass_message", OutboxMessage.status == "sending",
            OutboxMessage.updated_at == held).values(updated_at=new))
    return True


def _submit(db: Database, client: Any, sender: str, text: str, members: list[tuple[int, str]],
            outcome: Counter[str], now: datetime | None = None) -> None:
    template = {"chat_type": "single", "external_userid": [r for _, r in members], "text": {"content": text}}
    if sender:
        template["sender"] = sender
    ids = [i for i, _ in members]
    try:
        answer = client.external_contact.add_msg_template(template)
    except WeChatClientException as exc:
        if exc.errcode in BUSY_ERRORS:  # WeCom may have made the task: looked up, not sent again blindly
            logger.warning("add_msg_template answered %s; %d row(s) left sending for the look-up", exc.errcode,
                           len(ids))
            outcome["unknown"] += len(ids)
            return
        if defer_rate_limited(db, ids, exc, now or utcnow()):
            outcome["deferred"] += len(ids)
            return
        _finish(db, ids, "failed", f"add_msg_template: WeCom {exc.errcode} {exc.errmsg}")
        outcome["failed"] += len(ids)
        return
    refused = set(answer.get("fail_list") or [])
    ok = [i for i, r in members if r not in refused]
    bad = [i for i, r in members if r in refused]
    _finish(db, ok, "submitted", "waiting for the member to confirm in WeCom", answer.get("msgid"))
    _finish(db, bad, "failed", "WeCom refused the recipient (fail_list: not this member's customer)")
    outcome["submitted"] += len(ok)
    outcome["failed"] += len(bad)


def defer_rate_limited(db: Database, ids: list[int], exc: WeChatClientException, now: datetime) -> bool:
    """45009 (over the per-minute limit, ApiBlocked): refused before anything was created, so the rows
    ``sending`` go back to pending for when the block has passed, but those refused too often fail.
    Returns whether ``exc`` was that refusal."""
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is None:
        return False
    retry_at = now + timedelta(seconds=float(retry_after))
    with db.begin() as session:
        session.execute(update(OutboxMessage).where(
            OutboxMessage.id.in_(ids), OutboxMessage.attempts < RATE_LIMITED_ATTEMPTS).values(
            status="pending", scheduled_at=retry_at, updated_at=utcnow(),
            reason=f"add_msg_template: WeCom {exc.errcode} (over the per-minute limit); "
                   f"submitting again at {retry_at:%H:%M:%S} UTC"))
    _finish_still_sending(db, ids, f"add_msg_template: WeCom {exc.errcode} {exc.errmsg}; given up")
    return True


def _finish_still_sending(db: Database, ids: list[int], reason: str) -> None:
    """Rows refused too often to try again (those not put back to pending) fail."""
    with db.begin() as session:
        session.execute(update(OutboxMessage).where(OutboxMessage.id.in_(ids), OutboxMessage.status == "sending")
                        .values(status="failed", reason=reason, updated_at=utcnow()))
        withdraw_carried_coupons(session, OutboxMessage.id.in_(ids), OutboxMessage.status == "failed")


def _finish(db: Database, ids: list[int], status: str, reason: str, msgid: str | None = None) -> None:
    if not ids:
        return
    with db.begin() as session:
        values: dict[str, Any] = {"status": status, "reason": reason, "updated_at": utcnow()}
        if msgid:
            values["wecom_msgid"] = msgid
        session.execute(update(OutboxMessage).where(OutboxMessage.id.in_(ids)).values(**values))
        if status == "failed":
            withdraw_carried_coupons(session, OutboxMessage.id.in_(ids))


RESULT_STATUS = {
    2: "not sent: the customer is no longer the member's friend",
    3: "not sent: the customer already received a mass message this period (WeCom cap)",
}


def poll_mass_results(db: Database, contact_client: Any) -> Counter[str]:
    """get_groupmsg_send_result for every submitted mass message: status 1 → confirmed (with the
    send time), 2/3 → failed with WeCom's reason, 0 → still waiting for the member."""
    outcome: Counter[str] = Counter()
    with db.sessions() as session:
        pending = session.execute(select(OutboxMessage.wecom_msgid, OutboxMessage.sender_userid).where(
            OutboxMessage.channel == "mass_message", OutboxMessage.status == "submitted",
            OutboxMessage.wecom_msgid.is_not(None)).distinct()).all()
    for msgid, sender in pending:
        try:
            items = list(contact_client.external_contact.gen_groupmsg_send_result(msgid, sender or ""))
        except WeChatClientException as exc:
            logger.warning("mass message %s: results not readable (%s)", msgid, exc)
            outcome["unreadable"] += 1
            continue
        with db.begin() as session:
            undelivered: list[str] = []
            for item in items:
                status = int(item.get("status") or 0)
                if status == 0:
                    outcome["waiting"] += 1
                    continue
                values: dict[str, Any] = {"updated_at": utcnow()}
                if status == 1:
                    sent = item.get("send_time")
                    values.update(status="confirmed", reason=None,
                                  sent_at=datetime.fromtimestamp(int(sent), tz=UTC) if sent else utcnow())
                else:
                    values.update(status="failed", reason=RESULT_STATUS.get(status, f"WeCom result status {status}"))
                recipient = item.get("external_userid")
                session.execute(update(OutboxMessage).where(
                    OutboxMessage.wecom_msgid == msgid, OutboxMessage.recipient == recipient,
                    OutboxMessage.status == "submitted").values(**values))
                if values["status"] == "failed":
                    undelivered.append(recipient)
                outcome[values["status"]] += 1
            for start in range(0, len(undelivered), 1000):  # their coupons reached nobody
                withdraw_carried_coupons(session, OutboxMessage.wecom_msgid == msgid, OutboxMessage.status == "failed",
                                         OutboxMessage.recipient.in_(undelivered[start:start + 1000]))
    return outcome


REMINDERS_PER_DAY = 3  # WeCom: remind_groupmsg_send at most 3 times per mass message per 24 h


def remind_unconfirmed(db: Database, contact_client: Any, remind_after_hours: int,
                       now: datetime | None = None) -> Counter[str]:
    """remind_groupmsg_send for mass messages members have not confirmed ``remind_after_hours``
    after submission (and as long since the last reminder), never more than 3 in 24 hours."""
    now = now or utcnow()
    outcome: Counter[str] = Counter()
    if remind_after_hours <= 0:
        return outcome
    wait = timedelta(hours=remind_after_hours)
    with db.sessions() as session:
        msgids = list(session.scalars(select(OutboxMessage.wecom_msgid).where(
            OutboxMessage.channel == "mass_message", OutboxMessage.status == "submitted",
            OutboxMessage.wecom_msgid.is_not(None), OutboxMessage.updated_at <= now - wait).distinct()))
        recent = _recent_reminders(session, msgids, now)
    for msgid in msgids:
        times = recent.get(msgid, [])
        if len(times) >= REMINDERS_PER_DAY:
            outcome["limit"] += 1
            continue
        if times and max(times) > now - wait:
            outcome["waiting"] += 1
            continue
        try:
            contact_client.external_contact.remind_groupmsg_send(msgid)
        except WeChatClientException as exc:
            logger.warning("mass message %s: reminder refused (%s %s)", msgid, exc.errcode, exc.errmsg)
            outcome["refused"] += 1
            continue
        with db.begin() as session:
            session.add(MassReminder(msgid=msgid, reminded_at=now))
        outcome["reminded"] += 1
    return outcome


def _recent_reminders(session: Any, msgids: list[str], now: datetime) -> dict[str, list[datetime]]:
    found: dict[str, list[datetime]] = defaultdict(list)
    since = now - timedelta(days=1)
    for start in range(0, len(msgids), 1000):
        for msgid, at in session.execute(select(MassReminder.msgid, MassReminder.reminded_at).where(
                MassReminder.msgid.in_(msgids[start:start + 1000]), MassReminder.reminded_at > since)):
            found[msgid].append(at)
    return found


def resolve_interrupted(db: Database, contact_client: Any, lease_seconds: float,
                        now: datetime | None = None) -> Counter[str]:
    """Mass-message rows a crash left "sending": add_msg_template is not idempotent, so instead of
    calling it again, look the call up in WeCom's own list (get_groupmsg_list_v2, by text around the
    time of the attempt, the member confirmed by its task list). Found → submitted with its msgid; not
    there → the call never reached WeCom, so the rows go back to pending."""
    now = now or utcnow()
    outcome: Counter[str] = Counter()
    with db.sessions() as session:
        rows = session.execute(select(OutboxMessage.id, OutboxMessage.sender_userid, OutboxMessage.content,
                                      OutboxMessage.updated_at).where(
            OutboxMessage.channel == "mass_message", OutboxMessage.status == "sending",
            OutboxMessage.updated_at < now - timedelta(seconds=lease_seconds))).all()
    groups: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for row in rows:
        groups[(row.sender_userid or "", row.content["text"])].append(row)
    for (sender, text), members in groups.items():
        since = min(r.updated_at for r in members) - CLOCK_MARGIN
        try:
            found = find_interrupted_task(db, contact_client, "single", sender, text, since, now + CLOCK_MARGIN)
        except WeChatClientException as exc:
            logger.warning("interrupted mass message of %s not looked up (%s); left as sending", masked(sender), exc)
            outcome["unknown"] += len(members)
            continue
        ids = [r.id for r in members]
        if found:
            _finish(db, ids, "submitted", "interrupted; WeCom has it, waiting for the member to confirm", found)
            outcome["submitted"] += len(ids)
        else:
            with db.begin() as session:
                session.execute(update(OutboxMessage)
                                .where(OutboxMessage.id.in_(ids), OutboxMessage.status == "sending")
                                .values(status="pending", reason="interrupted before WeCom had it; sent again",
                                        updated_at=now))
            outcome["pending"] += len(ids)
    return outcome


def find_interrupted_task(db: Database, client: Any, chat_type: str, sender: str, text: str, since: datetime,
                          until: datetime) -> str | None:
    """The task WeCom made of an interrupted add_msg_template: one the enterprise made (filter_type 0) between
    ``since`` and ``until`` with this text, whose task list holds ``sender``, and that no outbox row here has
    already (the same text to the same member twice is a new task each time). WeCom's list does not return a
    creator for tasks made through the API, so the creator cannot filter them."""
    from bot.wecom.api import cursor_pages

    with db.sessions() as session:
        taken = set(session.scalars(select(OutboxMessage.wecom_msgid).where(
            OutboxMessage.channel.in_(("mass_message", "group_message")), OutboxMessage.wecom_msgid.is_not(None),
            OutboxMessage.updated_at >= since).distinct()))
    pages = cursor_pages(lambda cursor: client.external_contact.get_groupmsg_list_v2(
        chat_type, int(since.timestamp()), int(until.timestamp()), filter_type=0, limit=100, cursor=cursor))
    for page in pages:
        for message in page.get("group_msg_list") or []:
            msgid = str(message.get("msgid") or "")
            if not msgid or msgid in taken or (message.get("text") or {}).get("content") != text:
                continue
            if not sender or _task_holds(client, msgid, sender):
                return msgid
    return None


def _task_holds(client: Any, msgid: str, sender: str) -> bool:
    from bot.wecom.api import cursor_pages

    pages = cursor_pages(lambda cursor: client.external_contact.get_groupmsg_task(msgid, limit=1000, cursor=cursor))
    return any(task.get("userid") == sender for page in pages for task in page.get("task_list") or [])
