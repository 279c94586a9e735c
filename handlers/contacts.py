"""change_external_contact: keep customers, staff and follows in step with WeCom."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from wechatpy.exceptions import WeChatClientException

from bot.inbox.dispatcher import HandlerContext, on
from bot.models import Customer, Follow, Interaction, Staff, utcnow

EVENT = "change_external_contact"
NOT_EXTERNAL_CONTACT = 84061


@on("event", EVENT, "add_external_contact")
@on("event", EVENT, "add_half_external_contact")
def customer_added(event: Any, ctx: HandlerContext) -> None:
    """A customer added a member: fetch the contact, upsert customer + follow, record the add."""
    external_userid, userid = _ids(ctx)
    contact = _fetch_contact(ctx, external_userid)
    customer = upsert_customer(ctx.session, external_userid, contact.get("external_contact", {}))
    staff = upsert_staff(ctx.session, userid)
    info = _follow_info(contact, userid)
    follow = upsert_follow(ctx.session, customer, staff)
    follow.state = ctx.fields.get("State") or info.get("state") or follow.state
    follow.remark = info.get("remark", follow.remark) or ""
    follow.description = info.get("description", follow.description) or ""
    follow.add_way = info.get("add_way", follow.add_way)
    follow.added_at = _event_time(ctx) if not info.get("createtime") else _from_epoch(info["createtime"])
    follow.ended_at, follow.ended_reason = None, None
    customer.owner_userid = customer.owner_userid or userid
    _record(ctx, customer, "added", f"add:{userid}:{external_userid}:{ctx.fields.get('CreateTime')}", userid,
            {"state": follow.state, "change_type": ctx.fields.get("ChangeType")})


@on("event", EVENT, "edit_external_contact")
def customer_edited(event: Any, ctx: HandlerContext) -> None:
    """A member edited the customer's remark or description: re-fetch and reconcile."""
    external_userid, userid = _ids(ctx)
    contact = _fetch_contact(ctx, external_userid)
    customer = upsert_customer(ctx.session, external_userid, contact.get("external_contact", {}))
    follow = upsert_follow(ctx.session, customer, upsert_staff(ctx.session, userid))
    info = _follow_info(contact, userid)
    follow.remark = info.get("remark", follow.remark) or ""
    follow.description = info.get("description", follow.description) or ""


@on("event", EVENT, "del_external_contact")
@on("event", EVENT, "del_follow_user")
def follow_ended(event: Any, ctx: HandlerContext) -> None:
    """Either side removed the other: end the follow, keep the history."""
    external_userid, userid = _ids(ctx)
    customer = upsert_customer(ctx.session, external_userid, {})
    follow = upsert_follow(ctx.session, customer, upsert_staff(ctx.session, userid))
    change_type = ctx.fields.get("ChangeType")
    reason = "customer_deleted_staff" if change_type == "del_follow_user" else "staff_deleted_customer"
    if ctx.fields.get("Source") == "DELETE_BY_TRANSFER":
        reason = "transferred"
    follow.ended_at, follow.ended_reason = _event_time(ctx), reason


# ------------------------------------------------------------------ helpers shared by handlers


def upsert_customer(session: Session, external_userid: str, contact: dict[str, Any]) -> Customer:
    customer = session.scalar(select(Customer).where(Customer.external_userid == external_userid))
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


def upsert_staff(session: Session, userid: str) -> Staff:
    staff = session.scalar(select(Staff).where(Staff.userid == userid))
    if staff is None:
        staff = Staff(userid=userid, name=userid)
        session.add(staff)
        session.flush()
    return staff


def upsert_follow(session: Session, customer: Customer, staff: Staff) -> Follow:
    follow = session.scalar(select(Follow).where(Follow.customer_id == customer.id, Follow.staff_id == staff.id))
    if follow is None:
        follow = Follow(customer_id=customer.id, staff_id=staff.id)
        session.add(follow)
        session.flush()
    return follow


def _ids(ctx: HandlerContext) -> tuple[str, str]:
    external_userid = str(ctx.fields.get("ExternalUserID") or "")
    userid = str(ctx.fields.get("UserID") or "")
    if not external_userid or not userid:
        raise ValueError("change_external_contact event without ExternalUserID or UserID")
    return external_userid, userid


def _fetch_contact(ctx: HandlerContext, external_userid: str) -> dict[str, Any]:
    """The contact as WeCom has it now, or {} if the relation is already gone (84061): events are
    processed after the fact, and a later delete may have overtaken this one."""
    if ctx.clients is None:
        return {}
    try:
        return ctx.clients.contact.external_contact.get(external_userid)
    except WeChatClientException as exc:
        if exc.errcode == NOT_EXTERNAL_CONTACT:
            ctx.log.info("contact %s no longer exists in WeCom; using the event alone", external_userid)
            return {}
        raise


def _follow_info(contact: dict[str, Any], userid: str) -> dict[str, Any]:
    for item in contact.get("follow_user", []) or []:
        if item.get("userid") == userid:
            return item
    return {}


def _event_time(ctx: HandlerContext) -> datetime:
    created = ctx.fields.get("CreateTime")
    return _from_epoch(created) if created else utcnow()


def _from_epoch(value: Any) -> datetime:
    return datetime.fromtimestamp(int(value), tz=UTC)


def _record(ctx: HandlerContext, customer: Customer, kind: str, source_ref: str,
            staff_userid: str | None, detail: dict[str, Any]) -> None:
    exists = ctx.session.scalar(select(Interaction.id).where(Interaction.source_ref == source_ref))
    if exists is None:
        occurred = _event_time(ctx)
        ctx.session.add(Interaction(customer_id=customer.id, kind=kind, occurred_at=occurred,
                                    source_ref=source_ref, staff_userid=staff_userid, detail=detail))
        if customer.last_interaction_at is None or customer.last_interaction_at < occurred:
            customer.last_interaction_at = occurred
