"""Mirror WeCom's corp tags here, and push local customer tags to WeCom (add_corp_tag for tags
WeCom lacks, mark_tag on the customer's follow), within WeCom's limits."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from wechatpy.exceptions import WeChatClientException

from bot.models import Customer, CustomerTag, Follow, Staff, Tag, TagGroup
from bot.tagging.system import mark_pushed

logger = logging.getLogger(__name__)
MAX_CORP_TAGS = 3000  # corp + strategy tags per corp
TAG_NAME_EXISTS = 40071  # add_corp_tag: a tag of this name is in the group already
TAG_LIMIT_ERRORS = frozenset({40126})  # 企业标签个数达到上限
NOT_EXTERNAL_CONTACT = 84061


@dataclass
class MirrorResult:
    groups_added: int = 0
    tags_added: int = 0
    renamed: int = 0
    deleted: int = 0


def mirror_corp_tags(session: Session, contact_client: Any) -> MirrorResult:
    """Make local groups and tags match WeCom's corp tag library (ids, names, order, deletions)."""
    groups = contact_client.external_contact.get_corp_tag_list().get("tag_group", []) or []
    result = MirrorResult()
    seen_tags: set[str] = set()
    seen_groups: set[str] = set()
    for data in groups:
        group = _upsert_group(session, data, result)
        seen_groups.add(data["group_id"])
        for tag_data in data.get("tag", []) or []:
            _upsert_tag(session, group, tag_data, result)
            seen_tags.add(tag_data["id"])
    for tag in session.scalars(select(Tag).where(Tag.wecom_tag_id.is_not(None), Tag.deleted.is_(False))):
        if tag.wecom_tag_id not in seen_tags:
            tag.deleted = True
            result.deleted += 1
    for group in session.scalars(select(TagGroup).where(TagGroup.wecom_group_id.is_not(None))):
        if group.wecom_group_id not in seen_groups:
            group.deleted = True
    session.flush()
    return result


def _upsert_group(session: Session, data: dict[str, Any], result: MirrorResult) -> TagGroup:
    group = session.scalar(select(TagGroup).where(TagGroup.wecom_group_id == data["group_id"]))
    if group is None:
        group = session.scalar(select(TagGroup).where(TagGroup.name == data["group_name"]))
    if group is None:
        group = TagGroup(name=data["group_name"])
        session.add(group)
        result.groups_added += 1
    elif group.name != data["group_name"]:
        result.renamed += 1
    group.wecom_group_id, group.name = data["group_id"], data["group_name"]
    group.order, group.deleted = int(data.get("order") or 0), bool(data.get("deleted", False))
    session.flush()
    return group


def _upsert_tag(session: Session, group: TagGroup, data: dict[str, Any], result: MirrorResult) -> Tag:
    tag = session.scalar(select(Tag).where(Tag.wecom_tag_id == data["id"]))
    if tag is None:
        tag = session.scalar(select(Tag).where(Tag.group_id == group.id, Tag.name == data["name"]))
    if tag is None:
        tag = Tag(group_id=group.id, name=data["name"])
        session.add(tag)
        result.tags_added += 1
    elif tag.name != data["name"]:
        result.renamed += 1
    tag.wecom_tag_id, tag.group_id, tag.name = data["id"], group.id, data["name"]
    tag.order, tag.deleted = int(data.get("order") or 0), bool(data.get("deleted", False))
    session.flush()
    return tag


def tag_from_wecom(session: Session, tag_id: str, group_name: str, tag_name: str) -> Tag:
    """The local tag for a WeCom tag id seen on a contact (created if the library was not mirrored)."""
    tag = session.scalar(select(Tag).where(Tag.wecom_tag_id == tag_id))
    if tag is not None:
        return tag
    group = session.scalar(select(TagGroup).where(TagGroup.name == group_name)) or TagGroup(name=group_name)
    session.add(group)
    session.flush()
    tag = session.scalar(select(Tag).where(Tag.group_id == group.id, Tag.name == tag_name))
    if tag is None:
        tag = Tag(group_id=group.id, name=tag_name)
        session.add(tag)
    tag.wecom_tag_id, tag.deleted = tag_id, False
    session.flush()
    return tag


def create_in_wecom(session: Session, contact_client: Any, tags: Iterable[Tag]) -> list[Tag]:
    """add_corp_tag for local tags WeCom does not have yet, one call per group; returns the tags
    that now have a WeCom id. Stops before WeCom's 3000-tag limit."""
    by_group: dict[int, list[Tag]] = defaultdict(list)
    for tag in tags:
        if not tag.wecom_tag_id:
            by_group[tag.group_id].append(tag)
    if not by_group:
        return []
    count = _wecom_tag_count(contact_client)
    created: list[Tag] = []
    for group_id, group_tags in by_group.items():
        if count + len(group_tags) > MAX_CORP_TAGS:
            raise TagLimitReached(f"WeCom allows {MAX_CORP_TAGS} corp tags; {count} exist, "
                                  f"{len(group_tags)} more needed")
        group = session.get(TagGroup, group_id)
        assert group is not None
        try:
            answer = contact_client.external_contact.add_corp_tag(
                group.wecom_group_id or None, None if group.wecom_group_id else group.name, None,
                [{"name": t.name} for t in group_tags])
        except WeChatClientException as exc:
            if exc.errcode != TAG_NAME_EXISTS:
                raise
            # Another process (a second add in the same burst, the admin console) made the tag first:
            # take WeCom's ids for these names instead of leaving the customers' tags unpushed.
            answer = {"tag_group": _existing_group(contact_client, group)}
        data = answer.get("tag_group", {})
        group.wecom_group_id = data.get("group_id", group.wecom_group_id)
        ids = {t["name"]: t["id"] for t in data.get("tag", [])}
        for tag in group_tags:
            tag.wecom_tag_id = ids.get(tag.name, tag.wecom_tag_id)
            if tag.wecom_tag_id:
                created.append(tag)
        count += len(group_tags)
    session.flush()
    return created


def _existing_group(contact_client: Any, group: TagGroup) -> dict[str, Any]:
    """WeCom's tag group with this id, or else this name ({} if none)."""
    groups = contact_client.external_contact.get_corp_tag_list().get("tag_group", []) or []
    by_id = next((g for g in groups if group.wecom_group_id and g.get("group_id") == group.wecom_group_id), None)
    return by_id or next((g for g in groups if g.get("group_name") == group.name), {})


def _wecom_tag_count(contact_client: Any) -> int:
    groups = contact_client.external_contact.get_corp_tag_list().get("tag_group", []) or []
    return sum(len(g.get("tag", []) or []) for g in groups)


class TagLimitReached(RuntimeError):
    pass


@dataclass
class PushResult:
    customers: int = 0
    added: int = 0
    removed: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


def push_pending(session: Session, contact_client: Any, customer_ids: Iterable[int] | None = None,
                 limit: int | None = None, progress: Callable[[int], None] | None = None) -> PushResult:
    """Tell WeCom about customer tags added or removed here (``push_state`` add/remove)."""
    query = (select(CustomerTag.customer_id)
             .where(CustomerTag.push_state.is_not(None), CustomerTag.push_error.is_(None))
             .group_by(CustomerTag.customer_id).order_by(CustomerTag.customer_id))
    if customer_ids is not None:
        query = query.where(CustomerTag.customer_id.in_(list(customer_ids)))
    if limit:
        query = query.limit(limit)
    result = PushResult()
    for customer_id in session.scalars(query).all():
        _push_customer(session, contact_client, customer_id, result)
        if progress:
            progress(1)
    return result


def _push_customer(session: Session, contact_client: Any, customer_id: int, result: PushResult) -> None:
    rows = session.execute(
        select(CustomerTag, Tag).join(Tag, Tag.id == CustomerTag.tag_id)
        .where(CustomerTag.customer_id == customer_id, CustomerTag.push_state.is_not(None))
    ).all()
    customer = session.get(Customer, customer_id)
    assert customer is not None
    userid = _follow_userid(session, customer)
    if userid is None:
        mark_pushed(session, customer_id, [r.CustomerTag.tag_id for r in rows],
                    error="no staff member follows this customer in WeCom")
        result.failed += len(rows)
        return
    try:
        create_in_wecom(session, contact_client, [r.Tag for r in rows if r.CustomerTag.push_state == "add"])
    except (TagLimitReached, WeChatClientException) as exc:
        mark_pushed(session, customer_id, [r.CustomerTag.tag_id for r in rows], error=f"add_corp_tag: {exc}")
        result.failed += len(rows)
        result.errors.append(str(exc))
        return
    add = [r.Tag.wecom_tag_id for r in rows if r.CustomerTag.push_state == "add" and r.Tag.wecom_tag_id]
    remove = [r.Tag.wecom_tag_id for r in rows if r.CustomerTag.push_state == "remove" and r.Tag.wecom_tag_id]
    try:
        if add or remove:
            contact_client.external_contact.mark_tag(userid, customer.external_userid, add_tag=add, remove_tag=remove)
    except WeChatClientException as exc:
        logger.warning("mark_tag for customer %d failed: %s", customer_id, exc)
        mark_pushed(session, customer_id, [r.CustomerTag.tag_id for r in rows], error=f"mark_tag: {exc}")
        result.failed += len(rows)
        result.errors.append(str(exc))
        return
    mark_pushed(session, customer_id, [r.CustomerTag.tag_id for r in rows])
    result.customers += 1
    result.added += len(add)
    result.removed += len(remove)


def _follow_userid(session: Session, customer: Customer) -> str | None:
    """The member whose follow carries the tags: the owner if still following, else the earliest."""
    rows = session.execute(
        select(Staff.userid).join(Follow, Follow.staff_id == Staff.id)
        .where(Follow.customer_id == customer.id, Follow.ended_at.is_(None)).order_by(Follow.added_at, Follow.id)
    ).scalars().all()
    if customer.owner_userid in rows:
        return customer.owner_userid
    return rows[0] if rows else None


def retry_failed_pushes(session: Session) -> int:
    """Clear recorded push errors so the next push tries again."""
    rows = session.scalars(select(CustomerTag).where(CustomerTag.push_error.is_not(None))).all()
    for row in rows:
        row.push_error = None
    return len(rows)
