"""``scrm sync contacts``: a full reconcile with WeCom to heal missed callbacks. Reads every
follow user's customers with batch/get_by_user (100 members per call, paged), upserts customers,
follows and WeCom tags, and ends follows WeCom no longer has. A contact erased by `scrm customer forget`
stays erased: its items are counted and left alone."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.contacts.customers import apply_wecom_tag_set, joined_no_later_than, upsert_customer, upsert_follow
from bot.core.forgotten import is_forgotten
from bot.core.privacy import forgotten_key
from bot.models import Customer, Follow, Staff, Tag, utcnow
from bot.tagging.rules import TagRules
from bot.tagging.sync import mirror_corp_tags

MEMBERS_PER_CALL = 100


@dataclass
class ContactSync:
    members: int = 0
    customers_seen: int = 0
    customers_added: int = 0
    follows_added: int = 0
    follows_updated: int = 0
    follows_ended: int = 0
    tags_added: int = 0
    tags_removed: int = 0
    forgotten_skipped: int = 0  # follows of contacts erased by `scrm customer forget`, left forgotten


def sync_contacts(session: Session, contact_client: Any, rules: TagRules,
                  progress: Callable[[int], None] | None = None) -> ContactSync:
    mirror_corp_tags(session, contact_client)
    api = contact_client.external_contact
    userids = list(api.get_follow_user_list().get("follow_user") or [])
    result = ContactSync(members=len(userids))
    tag_ids = dict(session.execute(select(Tag.wecom_tag_id, Tag.id).where(Tag.wecom_tag_id.is_not(None))).all())
    wanted: dict[int, dict[int, str | None]] = defaultdict(dict)
    seen_follows: set[int] = set()
    seen_customers: set[int] = set()
    for start in range(0, len(userids), MEMBERS_PER_CALL):
        chunk = userids[start:start + MEMBERS_PER_CALL]
        for page in api.gen_batch_get_by_users(chunk):
            for item in page.get("external_contact_list") or []:
                forgotten = _forgotten_follow(session, item)
                if forgotten is not None:
                    result.forgotten_skipped += 1
                    seen_follows.add(forgotten)
                    continue
                follow = _apply(session, item, result)
                seen_follows.add(follow.id)
                seen_customers.add(follow.customer_id)
                for wecom_id in (item.get("follow_info") or {}).get("tag_id") or []:
                    if wecom_id in tag_ids:
                        wanted[follow.customer_id].setdefault(tag_ids[wecom_id], follow.staff.userid)
        if progress:
            progress(len(chunk))
    result.customers_seen = len(seen_customers)
    for customer_id in seen_customers:
        customer = session.get(Customer, customer_id)
        assert customer is not None
        added, removed = apply_wecom_tag_set(session, customer, wanted.get(customer_id, {}), actor="sync")
        result.tags_added += added
        result.tags_removed += removed
    _end_missing(session, userids, seen_follows, result)
    return result


def _forgotten_follow(session: Session, item: dict[str, Any]) -> int | None:
    """For a contact forgotten on request (and not back since): the id of its anonymous follow of this
    member (0 if none), which the sync leaves as it is; None for every other contact."""
    external_userid = str((item.get("external_contact") or {}).get("external_userid") or "")
    if not external_userid or not is_forgotten(session, external_userid):
        return None
    follow_id = session.scalar(select(Follow.id).join(Customer).join(Staff).where(
        Customer.external_userid == forgotten_key(external_userid),
        Staff.userid == (item.get("follow_info") or {}).get("userid")))
    return follow_id or 0


def _apply(session: Session, item: dict[str, Any], result: ContactSync) -> Follow:
    contact, info = item.get("external_contact") or {}, item.get("follow_info") or {}
    external_userid = contact.get("external_userid")
    if not external_userid or not info.get("userid"):
        raise ValueError("batch/get_by_user returned an item without external_userid or follow userid")
    existed = session.scalar(select(Customer.id).where(Customer.external_userid == external_userid)) is not None
    customer = upsert_customer(session, external_userid, contact)
    result.customers_added += not existed
    staff = session.scalar(select(Staff).where(Staff.userid == info["userid"]))
    if staff is None:
        staff = Staff(userid=info["userid"], name=info["userid"])
        session.add(staff)
        session.flush()
    had = session.scalar(select(Follow.id).where(Follow.customer_id == customer.id, Follow.staff_id == staff.id))
    follow = upsert_follow(session, customer, staff)
    before = (follow.remark, follow.description, follow.state, follow.ended_at)
    follow.remark, follow.description = info.get("remark") or "", info.get("description") or ""
    follow.state = info.get("state") or follow.state
    follow.add_way = info.get("add_way", follow.add_way)
    if info.get("createtime"):
        follow.added_at = datetime.fromtimestamp(int(info["createtime"]), tz=UTC)
        joined_no_later_than(customer, follow.added_at)
    follow.ended_at, follow.ended_reason = None, None
    customer.owner_userid = customer.owner_userid or staff.userid
    if had is None:
        result.follows_added += 1
    elif before != (follow.remark, follow.description, follow.state, follow.ended_at):
        result.follows_updated += 1
    return follow


def _end_missing(session: Session, userids: list[str], seen: set[int], result: ContactSync) -> None:
    """Follows of the synced members that WeCom no longer lists were deleted while we missed the event."""
    if not userids:
        return
    live = session.execute(select(Follow).join(Staff).where(Staff.userid.in_(userids),
                                                            Follow.ended_at.is_(None))).scalars().all()
    for follow in live:
        if follow.id not in seen:
            follow.ended_at, follow.ended_reason = utcnow(), "missing_in_wecom"
            result.follows_ended += 1
