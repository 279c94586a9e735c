"""``scrm customer forget``: erase one customer's personal data (PIPL 个人信息删除权) and keep what is
anonymous — orders' amounts and days, aggregates, tiers, tier history, tags, predictions — so every
statistic over tiers stays what it was.

What goes: name, avatar, unionid, company, birthday and gender; each follow's remark and description
(where staff note phone numbers); the text and details of every interaction (kf message texts); the
contact's id inside stored callbacks, outbox rows, kf conversations and interaction references; the
text of every message queued or sent to or about the customer; coupon redemption notes; the contact's
id, name and group nickname in the group member lists, and its id in hand-over (transfer) rows. The
external_userid becomes a one-way key (bot.core.privacy.forgotten_key), which is the mark the brand's
own pulls respect. The customer is opted out, so no push goes to the empty record.

One audit row records who, when and which customer id, and how many rows of each table changed:
nothing personal."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from bot.core.db import row_id
from bot.core.privacy import forgotten_key, is_forgotten_key
from bot.models import (
    AuditEntry,
    Coupon,
    Customer,
    Follow,
    GroupMember,
    InboxEvent,
    Interaction,
    KfConversation,
    OutboxMessage,
    Transfer,
)
from bot.outbox.queue import withdraw_carried_coupons

AUDIT_ACTION = "customer.forget"
FORGOTTEN_NOTE = "customer forgotten (scrm customer forget)"
_UNFINISHED_EVENTS = ("pending", "failed", "processing")


@dataclass
class Forgotten:
    customer_id: int
    already: bool = False
    rows: dict[str, int] = field(default_factory=dict)  # table → rows changed


def find_customer(session: Session, ref: str) -> Customer | None:
    """A customer by external_userid (a forgotten one too, by its original id) or by numeric id."""
    customer = session.scalar(select(Customer).where(Customer.external_userid == ref))
    if customer is None:
        customer = session.scalar(select(Customer).where(Customer.external_userid == forgotten_key(ref)))
    if customer is None and (number := row_id(ref)) is not None:
        customer = session.get(Customer, number)
    return customer


def forget_customer(session: Session, customer: Customer, actor: str, now: datetime) -> Forgotten:
    """Erase ``customer``'s personal data in ``session``'s transaction; a second call changes nothing."""
    result = Forgotten(customer.id)
    if is_forgotten_key(customer.external_userid):
        result.already = True
        return result
    external_userid, key = customer.external_userid, _free_key(session, customer)
    result.rows["customers"] = _erase_customer(customer, key, now)
    result.rows["follows"] = _count(session.execute(
        update(Follow).where(Follow.customer_id == customer.id).values(remark="", description="")))
    result.rows["interactions"] = _erase_interactions(session, customer.id, external_userid, key)
    result.rows["inbox_events"] = _erase_inbox(session, external_userid, key)
    result.rows["outbox_messages"] = _erase_outbox(session, customer.id, external_userid, key)
    result.rows["kf_conversations"] = _count(session.execute(
        update(KfConversation).where(or_(KfConversation.external_userid == external_userid,
                                         KfConversation.customer_id == customer.id))
        .values(external_userid=key)))
    result.rows["group_members"] = _count(session.execute(
        update(GroupMember).where(or_(GroupMember.member_id == external_userid, GroupMember.customer_id == customer.id))
        .values(member_id=key, name="", group_nickname="")))
    result.rows["transfers"] = _count(session.execute(
        update(Transfer).where(or_(Transfer.external_userid == external_userid, Transfer.customer_id == customer.id))
        .values(external_userid=key)))
    result.rows["coupons"] = _count(session.execute(
        update(Coupon).where(Coupon.customer_id == customer.id, Coupon.redeem_note.is_not(None))
        .values(redeem_note=None)))
    session.add(AuditEntry(actor=actor[:64], action=AUDIT_ACTION, target=f"customer:{customer.id}", before=None,
                           after={"rows": result.rows}, ip=None, at=now))
    session.flush()
    return result


def _free_key(session: Session, customer: Customer) -> str:
    """The contact's key, or, when an earlier record of the same contact was forgotten before (they came back
    and asked again), the key with this record's id: still found by the key's prefix, and unique."""
    key = forgotten_key(customer.external_userid)
    if session.scalar(select(Customer.id).where(Customer.external_userid == key)) is None:
        return key
    return f"{key}:{customer.id}"


def scrub_callback(session: Session, inbox_event_id: int, external_userid: str) -> None:
    """A callback about a forgotten contact that arrives later (a member edits them in WeCom) is stored before
    anyone knows; once its handler has seen it, the contact's id in it is replaced like the others'."""
    row = session.get(InboxEvent, inbox_event_id)
    if row is not None:
        row.payload = row.payload.replace(external_userid, forgotten_key(external_userid))


def _erase_customer(customer: Customer, key: str, now: datetime) -> int:
    customer.external_userid = key
    customer.name, customer.gender, customer.birthday = "", 0, None
    customer.unionid = customer.avatar = customer.corp_name = None
    if not customer.opted_out:
        customer.opted_out, customer.opted_out_at = True, now
    return 1


def _erase_interactions(session: Session, customer_id: int, external_userid: str, key: str) -> int:
    rows = session.scalars(select(Interaction).where(Interaction.customer_id == customer_id)).all()
    for row in rows:
        row.detail = None
        if row.source_ref and external_userid in row.source_ref:
            row.source_ref = _without(row.source_ref, external_userid, key, limit=200)
    return len(rows)


def _erase_inbox(session: Session, external_userid: str, key: str) -> int:
    """Callbacks naming the contact keep their shape (what happened, when) with the id replaced; those not
    yet handled are not handled any more: they would act on a record that no longer names anyone."""
    rows = session.scalars(select(InboxEvent).where(
        InboxEvent.payload.contains(external_userid, autoescape=True))).all()
    for row in rows:
        row.payload = row.payload.replace(external_userid, key)
        row.last_error = row.last_error.replace(external_userid, key) if row.last_error else None
        if row.status in _UNFINISHED_EVENTS:
            row.status, row.last_error, row.next_attempt_at = "dead", FORGOTTEN_NOTE, None
    return len(rows)


def _erase_outbox(session: Session, customer_id: int, external_userid: str, key: str) -> int:
    mine = or_(OutboxMessage.customer_id == customer_id, OutboxMessage.recipient == external_userid)
    withdraw_carried_coupons(session, mine, OutboxMessage.status == "pending")  # those messages will not go out
    rows = session.scalars(select(OutboxMessage).where(mine)).all()
    for row in rows:
        row.content = {}
        if row.recipient == external_userid:
            row.recipient = key
        row.dedupe_key = _without(row.dedupe_key, external_userid, key, limit=200)
        row.trigger_ref = _without(row.trigger_ref, external_userid, key, limit=128)
        row.reason = row.reason.replace(external_userid, key) if row.reason else None
        if row.status == "pending":
            row.status, row.reason = "skipped", FORGOTTEN_NOTE
    return len(rows)


def _without(text: str, external_userid: str, key: str, limit: int) -> str:
    """``text`` with the contact's id replaced by its key; a digest when that would not fit the column."""
    if external_userid not in text:
        return text
    replaced = text.replace(external_userid, key)
    return replaced if len(replaced) <= limit else "forgotten:" + hashlib.sha256(replaced.encode()).hexdigest()


def _count(result: object) -> int:
    return int(getattr(result, "rowcount", 0) or 0)
