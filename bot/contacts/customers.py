"""Customers and their follows as WeCom reports them: one upsert each, and making a customer's synced
corp tags equal a given set. Used by the event handlers and the full contact re-sync alike."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.contacts.interactions import add_interaction
from bot.core.forgotten import is_forgotten
from bot.models import Customer, CustomerTag, Follow, Interaction, Staff, Tag
from bot.tagging.system import tag_customer, untag_customer


class CustomerForgotten(LookupError):
    """The contact was erased by `scrm customer forget` after this work began: no record names them again."""


def upsert_customer(session: Session, external_userid: str, contact: dict[str, Any], *,
                    new_relationship: bool = False) -> Customer:
    """The customer with ``external_userid``, created if new, with WeCom's ``contact`` fields. A forgotten
    contact is neither created nor updated (CustomerForgotten), checked in the caller's transaction: a
    handler that began before the forget (it fetched the contact meanwhile) cannot bring the name back.
    Only ``new_relationship`` (the customer added a member again) starts a new record for them."""
    customer = session.scalar(select(Customer).where(Customer.external_userid == external_userid))
    if customer is None and not new_relationship and is_forgotten(session, external_userid):
        raise CustomerForgotten("the customer was forgotten (scrm customer forget)")
    if customer is None:
        customer = Customer(external_userid=external_userid, name="")
        session.add(customer)
    if contact:
        customer.name = str(contact.get("name") or customer.name)[:255]
        customer.contact_type = int(contact.get("type") or customer.contact_type or 1)
        customer.gender = int(contact.get("gender") or 0)
        customer.unionid = contact.get("unionid") or customer.unionid
        customer.avatar = contact.get("avatar") or customer.avatar
        customer.corp_name = contact.get("corp_name") or customer.corp_name
    session.flush()
    return customer


def joined_no_later_than(customer: Customer, added_at: datetime | None) -> None:
    """A customer joined when they first added a member: a contact first seen by a re-sync of an
    existing corp (or an event processed late) was created here later than that. Engagement counts
    from the join time, so a re-synced base would otherwise read as active for a month and then churn
    on one day."""
    if added_at is None:
        return
    if customer.created_at is None or added_at < _aware(customer.created_at):
        customer.created_at = added_at


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


CUSTOMER_OWN_WORD = "kf"  # the ``via`` of an opt-out the customer wrote themselves (微信客服)


def set_opted_out(session: Session, customer: Customer, out: bool, at: datetime, via: str,
                  by: str | None = None) -> bool:
    """退订 / 恢复订阅: the switch every broadcast and push honours. ``via``: how it came (``kf`` — the
    customer wrote the word —, ``sidebar``, ``cli``), ``by``: the member or operator who set it. Kept as
    an interaction (no activity, no last-interaction time), so the customer's history says who and
    when. Returns whether the switch moved. A customer who writes 退订 while a member's record already
    has them opted out is recorded too: from then on the opt-out is their own (``opted_out_by_customer``)."""
    if customer.opted_out == out:
        if out and via == CUSTOMER_OWN_WORD and not opted_out_by_customer(session, customer):
            add_interaction(session, customer, "opted_out", f"opt:{customer.id}:out:{at.isoformat()}:{via}", at, by,
                            {"via": via}, touch=False)
        return False
    customer.opted_out, customer.opted_out_at = out, (at if out else None)
    add_interaction(session, customer, "opted_out" if out else "opted_in",
                    f"opt:{customer.id}:{'out' if out else 'in'}:{at.isoformat()}", at, by, {"via": via},
                    touch=False)
    return True


def opted_out_by_customer(session: Session, customer: Customer) -> bool:
    """Whether the customer's own 退订 (written to 微信客服) stands behind their current opt-out: one was
    recorded since the last opt-in. Only the customer undoes that (``kf.opt_in_words``), not staff."""
    if not customer.opted_out:
        return False
    trail = session.execute(select(Interaction.kind, Interaction.detail)
                            .where(Interaction.customer_id == customer.id,
                                   Interaction.kind.in_(("opted_out", "opted_in")))
                            .order_by(Interaction.id.desc()))  # as recorded: a late event is not older
    for kind, detail in trail:
        if kind == "opted_in":
            return False
        if (detail or {}).get("via") == CUSTOMER_OWN_WORD:
            return True
    return False


def upsert_follow(session: Session, customer: Customer, staff: Staff) -> Follow:
    follow = session.scalar(select(Follow).where(Follow.customer_id == customer.id, Follow.staff_id == staff.id))
    if follow is None:
        follow = Follow(customer_id=customer.id, staff_id=staff.id)
        session.add(follow)
        session.flush()
    return follow


def apply_wecom_tag_set(session: Session, customer: Customer, wanted: dict[int, str | None],
                        actor: str | None) -> tuple[int, int]:
    added = removed = 0
    for tag_id, userid in wanted.items():
        tag = session.get(Tag, tag_id)
        assert tag is not None
        if tag_customer(session, customer.id, tag, source="wecom", added_by=userid, push=False):
            added += 1
    in_sync = session.scalars(select(CustomerTag).join(Tag).where(
        CustomerTag.customer_id == customer.id, CustomerTag.removed_at.is_(None), CustomerTag.push_state.is_(None),
        Tag.wecom_tag_id.is_not(None))).all()
    for row in in_sync:
        if row.tag_id not in wanted:
            untag_customer(session, customer.id, session.get(Tag, row.tag_id), removed_by=actor, push=False)
            removed += 1
    return added, removed


def from_epoch(value: Any) -> datetime:
    return datetime.fromtimestamp(int(value), tz=UTC)
