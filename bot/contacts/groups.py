"""客户群: groups and their members kept in step with WeCom, members linked to known customers.

Two ways in, one result. ``sync_groups`` reads groupchat/list (cursor) and groupchat/get for each
group; the ``change_external_chat`` handler applies a member change in place when the stored
``member_version`` equals the callback's ``LastMemVer`` and otherwise re-reads the group. WeCom says
these callbacks may be lost or arrive out of order, so a missed one shows as a version mismatch on
the next callback and is healed by the next sync either way. Joining and leaving are interactions
of the customer (``group_join`` feeds activity; ``group_leave`` is recorded without touching it),
and ``group_member`` tag rules tag the customers who join a group.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bot.contacts.interactions import add_interaction
from bot.core.db import row_id
from bot.core.forgotten import stored_member_ids
from bot.core.privacy import is_forgotten_key
from bot.models import (
    MEMBER_EXTERNAL,
    MEMBER_STAFF,
    Customer,
    CustomerGroup,
    CustomerPrediction,
    CustomerTier,
    GroupMember,
    Staff,
)
from bot.tagging.rules import TagRules
from bot.tagging.system import canonical_ref, ensure_tag, tag_customer

logger = logging.getLogger(__name__)
JOIN, LEAVE = "group_join", "group_leave"
# change_external_chat JoinScene → groupchat/get join_scene: 0 邀请 (direct or link) → 1, 3 扫码 → 3.
CALLBACK_JOIN_SCENE = {0: 1, 3: 3}
MEMBER_UPDATES = ("add_member", "del_member")
TOO_MANY_WITHOUT_FILTER = 81017  # groupchat/list without owner_filter over a range of > 1000 people
MAX_OWNER_FILTER = 100
LABEL_MAX = 30


def label_problem(labels: Iterable[str]) -> str | None:
    """Why these group labels cannot be kept, or None. A control, bidi or zero-width character (not
    printable) would make one label look like another or reorder the page, as in a channel's fields."""
    for label in labels:
        if len(label) > LABEL_MAX:
            return f"a label is at most {LABEL_MAX} characters"
        if not label.isprintable():
            return f"a label must not contain control characters (zero-width and direction marks included): {label!r}"
    return None


@dataclass
class MemberChanges:
    joined: list[GroupMember] = field(default_factory=list)
    left: list[GroupMember] = field(default_factory=list)


@dataclass
class SyncResult:
    groups: int = 0
    changed: int = 0
    joined: int = 0
    left: int = 0
    dismissed: int = 0
    errors: list[str] = field(default_factory=list)


def from_epoch(value: Any) -> datetime | None:
    try:
        seconds = int(value)
    except (TypeError, ValueError):
        return None
    return datetime.fromtimestamp(seconds, tz=UTC) if seconds > 0 else None


# ---------------------------------------------------------------- lookups


def find_group(session: Session, ref: str) -> CustomerGroup | None:
    """By chat_id, then by exact name (when one group has it), then by id."""
    group = session.scalar(select(CustomerGroup).where(CustomerGroup.chat_id == ref))
    if group is None:
        named = session.scalars(select(CustomerGroup).where(CustomerGroup.name == ref).limit(2)).all()
        group = named[0] if len(named) == 1 else None
    if group is None and (number := row_id(ref)) is not None:
        group = session.get(CustomerGroup, number)
    return group


def active_members(group: CustomerGroup) -> list[GroupMember]:
    return [m for m in group.members if m.left_at is None]


# ---------------------------------------------------------------- from groupchat/get


def upsert_group(session: Session, chat: dict[str, Any], now: datetime) -> tuple[CustomerGroup, MemberChanges]:
    """Make the stored group equal groupchat/get's ``group_chat``: fields, admins, members (who is
    not in the list any more has left). Returns who joined and who left since the stored version."""
    chat_id = str(chat.get("chat_id") or "")
    if not chat_id:
        raise ValueError("groupchat/get answer without chat_id")
    group = session.scalar(select(CustomerGroup).where(CustomerGroup.chat_id == chat_id))
    if group is None:
        group = CustomerGroup(chat_id=chat_id, tags=[])
        session.add(group)
    group.name = str(chat.get("name") or "")[:255]
    group.owner_userid = str(chat.get("owner") or "")[:64]
    group.notice = str(chat.get("notice") or "")
    group.wecom_created_at = from_epoch(chat.get("create_time")) or group.wecom_created_at
    group.member_version = str(chat.get("member_version") or "")[:64]
    group.dismissed_at, group.synced_at = None, now
    admins = {str(a.get("userid")) for a in chat.get("admin_list") or [] if isinstance(a, dict)}
    given = {str(m["userid"]): m for m in chat.get("member_list") or [] if isinstance(m, dict) and m.get("userid")}
    stored = stored_member_ids(session, given)  # a forgotten customer stays a key with no name
    listed = {stored[member_id]: info for member_id, info in given.items()}
    existing = {m.member_id: m for m in group.members}
    changes = MemberChanges()
    for member_id, info in listed.items():
        forgotten = is_forgotten_key(member_id)
        row = existing.get(member_id)
        if row is None:
            row = GroupMember(member_id=member_id[:128])
            group.members.append(row)
        if row.left_at is not None or row.id is None:
            changes.joined.append(row)
        row.left_at, row.quit_scene = None, None
        row.member_type = MEMBER_STAFF if int(info.get("type") or MEMBER_EXTERNAL) == MEMBER_STAFF \
            else MEMBER_EXTERNAL
        row.is_admin = member_id in admins
        row.name = "" if forgotten else str(info.get("name") or row.name or "")[:255]
        row.group_nickname = "" if forgotten else str(info.get("group_nickname") or "")[:255]
        row.join_time = from_epoch(info.get("join_time")) or row.join_time
        row.join_scene = _int_or_none(info.get("join_scene"))
        row.invitor_userid = str((info.get("invitor") or {}).get("userid") or "")[:64] or None
        row.state = str(info.get("state") or "")[:30] or row.state
    for member_id, row in existing.items():
        if member_id not in listed and row.left_at is None:
            row.left_at = now
            changes.left.append(row)
    session.flush()
    link_customers(session, [group.id])
    return group, changes


def link_customers(session: Session, group_ids: Iterable[int] | None = None) -> int:
    """Point external members at their customer rows (a customer may become known after joining)."""
    query = (select(GroupMember, Customer.id).join(Customer, Customer.external_userid == GroupMember.member_id)
             .where(GroupMember.member_type == MEMBER_EXTERNAL, GroupMember.customer_id.is_(None)))
    if group_ids is not None:
        query = query.where(GroupMember.group_id.in_(list(group_ids)))
    linked = 0
    for member, customer_id in session.execute(query):
        member.customer_id = customer_id
        linked += 1
    session.flush()
    return linked


# ---------------------------------------------------------------- from change_external_chat


def member_change_list(value: Any) -> list[str]:
    """MemChangeList as parsed from the callback XML: ``{"Item": [..]}``, ``{"Item": ".."}`` or a
    comma-separated string (WxJava accepts that shape too)."""
    if isinstance(value, dict):
        value = value.get("Item")
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list):
        return [str(v).strip() for v in value if isinstance(v, str | int) and str(v).strip()]
    return []


def apply_member_change(session: Session, group: CustomerGroup, fields: dict[str, Any],
                        at: datetime) -> MemberChanges | None:
    """Apply an add_member / del_member callback in place when it follows the stored version;
    None when it does not (a callback was missed or came out of order): re-read the group."""
    detail = str(fields.get("UpdateDetail") or "")
    last, current = str(fields.get("LastMemVer") or ""), str(fields.get("CurMemVer") or "")
    ids = member_change_list(fields.get("MemChangeList"))
    if detail not in MEMBER_UPDATES or not ids or not current or not group.member_version \
            or group.member_version != last:
        return None
    existing = {m.member_id: m for m in group.members}
    changes = MemberChanges()
    stored = stored_member_ids(session, ids)
    for member_id in (stored[i] for i in ids):
        row = existing.get(member_id)
        if detail == "add_member":
            if row is None:
                row = GroupMember(member_id=member_id[:128], member_type=_guess_type(session, member_id))
                group.members.append(row)
            elif row.left_at is None:
                continue
            row.left_at, row.quit_scene, row.join_time = None, None, at
            row.join_scene = CALLBACK_JOIN_SCENE.get(_int_or_none(fields.get("JoinScene")) or 0)
            changes.joined.append(row)
        elif row is not None and row.left_at is None:
            row.left_at, row.quit_scene = at, _int_or_none(fields.get("QuitScene"))
            changes.left.append(row)
    group.member_version = current[:64]
    session.flush()
    link_customers(session, [group.id])
    return changes


def dismiss_group(session: Session, group: CustomerGroup, at: datetime) -> None:
    """The owner dissolved the group: it stays for history, its members are marked gone (not as
    interactions: nobody chose to leave)."""
    group.dismissed_at = at
    for member in active_members(group):
        member.left_at = at
    session.flush()


def _guess_type(session: Session, member_id: str) -> int:
    """A callback names members without their type: a known customer or an external id (wm…/wo…)
    is external; a later groupchat/get sets the type WeCom gives."""
    known = session.scalar(select(Customer.id).where(Customer.external_userid == member_id))
    return MEMBER_EXTERNAL if known is not None or member_id.startswith(("wm", "wo")) else MEMBER_STAFF


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------- interactions and tag rules


def record_changes(session: Session, group: CustomerGroup, changes: MemberChanges, rules: TagRules | None,
                   push: bool = True) -> dict[str, int]:
    """Joining and leaving as the customers' interactions (once each), and group_member tag rules
    for who joined. Members who are nobody's customer are kept on the group only."""
    out = {"joined": 0, "left": 0, "tagged": 0}
    customers = {c.id: c for c in session.scalars(select(Customer).where(Customer.id.in_(
        [m.customer_id for m in changes.joined + changes.left if m.customer_id])))}
    matching = [r for r in (rules.when("group_member") if rules else []) if r.group in (group.chat_id, group.name)]
    for member in changes.joined:
        customer = customers.get(member.customer_id or 0)
        if customer is None:
            continue
        at = member.join_time or group.synced_at or datetime.now(UTC)
        if add_interaction(session, customer, JOIN, f"{JOIN}:{group.chat_id}:{member.member_id}:{int(at.timestamp())}",
                           at, group.owner_userid or None, {"chat_id": group.chat_id, "group": group.name,
                                                            "join_scene": member.join_scene}):
            out["joined"] += 1
        for rule in matching:
            tag = ensure_tag(session, canonical_ref(session, rules, rule.tag))  # type: ignore[arg-type]
            if tag_customer(session, customer.id, tag, source="rule", rule=rule.name, push=push):
                out["tagged"] += 1
    for member in changes.left:
        customer = customers.get(member.customer_id or 0)
        if customer is None or member.left_at is None:
            continue
        at = member.left_at
        if add_interaction(session, customer, LEAVE, f"{LEAVE}:{group.chat_id}:{member.member_id}:"
                           f"{int(at.timestamp())}", at, group.owner_userid or None,
                           {"chat_id": group.chat_id, "group": group.name, "quit_scene": member.quit_scene},
                           touch=False):
            out["left"] += 1
    return out


# ---------------------------------------------------------------- full sync


def sync_groups(begin: Callable[[], Any], api: Any, rules: TagRules | None, push: bool, now: Callable[[], datetime],
                progress: Callable[[int], None] | None = None, limit: int = 1000) -> SyncResult:
    """Read every group WeCom lists (cursor pages) and re-read each with groupchat/get; each group
    is committed on its own, so a failure costs only that group. Groups no longer listed after a
    complete pass are marked dismissed."""
    from wechatpy.exceptions import WeChatClientException

    result = SyncResult()
    statuses: dict[str, int] = {}
    complete = True
    try:
        _list_into(statuses, api.gen_list(limit=limit))
    except WeChatClientException as exc:
        if exc.errcode != TOO_MANY_WITHOUT_FILTER:
            raise
        # More than 1000 people in the app's range: WeCom wants owners named, at most 100 a call.
        complete = False
        with begin() as session:
            owners = list(session.scalars(select(Staff.userid).where(Staff.active.is_(True)).order_by(Staff.userid)))
        for start in range(0, len(owners), MAX_OWNER_FILTER):
            _list_into(statuses, api.gen_list(limit=limit, owner_userids=owners[start:start + MAX_OWNER_FILTER]))
    seen = set(statuses)
    for chat_id in sorted(seen):
        try:
            chat = api.get(chat_id).get("group_chat") or {}
        except WeChatClientException as exc:
            result.errors.append(f"{chat_id}: WeCom {exc.errcode} {exc.errmsg}")
            continue
        with begin() as session:
            group, changes = upsert_group(session, chat, now())
            group.status = statuses.get(chat_id, 0)
            counted = record_changes(session, group, changes, rules, push)
        result.groups += 1
        result.changed += bool(changes.joined or changes.left)
        result.joined += counted["joined"]
        result.left += counted["left"]
        if progress:
            progress(1)
    if not complete:
        return result  # groups of owners not named above may still exist: none is marked dismissed
    with begin() as session:
        gone = session.scalars(select(CustomerGroup).where(CustomerGroup.dismissed_at.is_(None),
                                                           CustomerGroup.chat_id.not_in(seen) if seen else True))
        for group in gone:
            dismiss_group(session, group, now())
            result.dismissed += 1
    return result


def _list_into(statuses: dict[str, int], pages: Iterable[dict[str, Any]]) -> None:
    for page in pages:
        for item in page.get("group_chat_list") or []:
            chat_id = str(item.get("chat_id") or "")
            if chat_id:
                statuses[chat_id] = _int_or_none(item.get("status")) or 0


# ---------------------------------------------------------------- tier mix


@dataclass
class TierMix:
    members: int = 0  # present, staff excluded
    customers: int = 0  # of them, known customers
    value_tiers: dict[str, int] = field(default_factory=dict)
    rfm_segments: dict[str, int] = field(default_factory=dict)
    churn_risks: dict[str, int] = field(default_factory=dict)

    @property
    def dominant(self) -> str | None:
        """The value tier most of the known customers have (ties: the first by name), or None."""
        ranked = sorted(((n, k) for k, n in self.value_tiers.items() if k != "none"), key=lambda p: (-p[0], p[1]))
        return ranked[0][1] if ranked else None


def tier_mix(session: Session, group_ids: list[int]) -> dict[int, TierMix]:
    """Per group, its present external members by value tier, RFM segment and churn risk (where
    predictions exist): one GROUP BY over the members with their tiers, summed per dimension here."""
    mixes = {gid: TierMix() for gid in group_ids}
    if not group_ids:
        return mixes
    query = (select(GroupMember.group_id, CustomerTier.value_tier, CustomerTier.rfm_segment,
                    CustomerPrediction.churn_risk, func.count(), func.count(GroupMember.customer_id))
             .outerjoin(CustomerTier, CustomerTier.customer_id == GroupMember.customer_id)
             .outerjoin(CustomerPrediction, CustomerPrediction.customer_id == GroupMember.customer_id)
             .where(GroupMember.left_at.is_(None), GroupMember.member_type == MEMBER_EXTERNAL)
             .group_by(GroupMember.group_id, CustomerTier.value_tier, CustomerTier.rfm_segment,
                       CustomerPrediction.churn_risk))
    if len(group_ids) <= 1000:
        query = query.where(GroupMember.group_id.in_(group_ids))
    for gid, value_tier, segment, risk, members, known in session.execute(query):
        mix = mixes.get(gid)
        if mix is None:
            continue
        mix.members += members
        mix.customers += known
        if not known:
            continue
        for counts, key in ((mix.value_tiers, value_tier), (mix.rfm_segments, segment)):
            counts[key or "none"] = counts.get(key or "none", 0) + known
        if risk:
            mix.churn_risks[risk] = mix.churn_risks.get(risk, 0) + known
    return mixes


def group_tier_key(group: CustomerGroup, mix: TierMix | None) -> str | None:
    """The tier a group is for: the operator's choice, else the dominant tier of its members."""
    return group.tier or (mix.dominant if mix else None)
