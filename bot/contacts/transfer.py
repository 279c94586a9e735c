"""在职继承 / 离职继承: hand a member's customers (and a departed member's groups) to others.

A plan says who goes where and why: chosen customers, all of a member's, or by rule (e.g. the
member's 重要价值 customers to a senior list, the rest round-robin). Running it calls
transfer_customer / resigned/transfer_customer at most 100 customers per call, one row per customer
in ``transfers``. WeCom's 0 only means "started": the customer has 24 hours to refuse. The outcome
comes from transfer_result (polled) or the ``transfer_fail`` callback; on success the customer's
follow moves to the new member and owner-based audiences follow. Tiers, tags, history, coupons,
sequences and predictions belong to the customer and are not touched."""

from __future__ import annotations

import hashlib
import secrets
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from sqlalchemy import exists, func, literal, select, union_all, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from wechatpy.exceptions import WeChatClientException

from bot.contacts.customers import from_epoch, upsert_customer, upsert_follow
from bot.contacts.interactions import add_interaction
from bot.core.privacy import forgotten_key
from bot.models import (
    ADD_WAY_ASSIGNED,
    Customer,
    CustomerTag,
    CustomerTier,
    Follow,
    GroupTransfer,
    Staff,
    Tag,
    TagGroup,
    Transfer,
)

PER_CALL = 100
NEVER_STARTED_AFTER = timedelta(hours=48)
PLANNED_STALE_AFTER = timedelta(minutes=15)  # a run calls WeCom within seconds of recording its rows
ROUTE_KEYS = ("rfm", "value", "stage", "tag")
RESULT_STATUS = {1: "succeeded", 2: "waiting", 3: "refused", 4: "takeover_full", 5: "no_record"}
IN_FLIGHT = ("planned", "waiting")  # asked of WeCom (or about to be), not yet settled
UNDER_WAY = 40129  # 客户正在转接中: WeCom already hands this customer over (a retry, another tool)
GROUP_ALREADY_MOVED = 90508  # 离职群已经继承
GROUP_BEING_MOVED = 90507  # 离职群正在继承处理中
BUSY = -1  # may come after WeCom acted: like no answer, the poll tells
GROUPS_UNANSWERED = "no answer from WeCom: a new departed plan lists the group again if it was not moved"
FAIL_REASONS = {"customer_refused": "refused", "customer_limit_exceed": "takeover_full"}
REASONS = {  # per-customer errcodes and outcomes, as an operator reads them
    "refused": "客户拒绝 (customer_refused)",
    "takeover_full": "接替成员客户已达上限 (customer_limit_exceed)",
    "no_record": "WeCom 无接替记录",
    40096: "不合法的外部联系人 (40096)",
    40097: "该成员尚未离职 (40097)",
    40098: "成员尚未实名认证 (40098)",
    40099: "外部联系人数量已达上限 (40099)",
    40100: "客户已在转移流程中 (40100)",
    40128: "客户转接过于频繁: 90 天内最多两次 (40128)",
    40129: "客户正在转接中 (40129)",
    40130: "原跟进人与接手人相同 (40130)",
    40131: "原跟进人不是该客户的跟进人 (40131)",
    60011: "成员不在应用可见范围 (60011)",
    60111: "成员不存在 (60111)",
    84061: "不存在外部联系人关系 (84061)",
    84074: "没有外部联系人权限 (84074)",
}


class TransferError(ValueError):
    """A plan that cannot be made (bad rule, unknown member, nobody to hand over to)."""


def reason_text(code: int | str | None) -> str:
    if code is None:
        return ""
    return REASONS.get(code, f"errcode {code}" if isinstance(code, int) else str(code))


@dataclass(frozen=True)
class Route:
    """``rfm:重要价值=wang,li``: customers matching ``key:value`` go to these members in turn."""

    key: str
    value: str
    members: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Route:
        head, sep, tail = text.partition("=")
        key, colon, value = head.partition(":")
        members = tuple(m.strip() for m in tail.split(",") if m.strip())
        if not sep or not colon or key.strip() not in ROUTE_KEYS or not value.strip() or not members:
            raise TransferError(f"bad rule {text[:80]!r}: use KEY:VALUE=USERID[,USERID…] with KEY one of "
                                f"{', '.join(ROUTE_KEYS)} (e.g. rfm:重要价值=wang,li)")
        if not text.isprintable() or len(value.strip()) > 100:
            raise TransferError(f"bad rule {text[:80]!r}: no control characters, a value of at most 100")
        return cls(key.strip(), value.strip(), members)

    def label(self) -> str:
        return f"{self.key}:{self.value}"


@dataclass
class PlanRow:
    kind: str
    handover_userid: str
    takeover_userid: str
    external_userid: str
    customer_id: int | None
    why: str


@dataclass
class GroupPlanRow:
    chat_id: str
    handover_userid: str
    takeover_userid: str


@dataclass
class Plan:
    rows: list[PlanRow] = field(default_factory=list)
    groups: list[GroupPlanRow] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (external_userid, why)
    # Takeover userids no synced customer follows and no hand-over has named: a typo is refused by WeCom
    # (60111) for every customer handed to it, so the plan says so before it is run.
    unknown_members: list[str] = field(default_factory=list)

    def digest(self) -> str:
        """Who goes to whom, in 16 hex digits: a page shows it with the plan, and a run whose plan has
        changed since (customers added, gone, or sent elsewhere) is refused rather than run unseen."""
        pairs = sorted(f"{r.external_userid}>{r.takeover_userid}" for r in self.rows)
        pairs += sorted(f"group {g.chat_id}>{g.takeover_userid}" for g in self.groups)
        return hashlib.sha256("\n".join(pairs).encode("utf-8")).hexdigest()[:16]

    def summary(self) -> list[tuple[str, str, str, int]]:
        """(handover, takeover, why, customers), in a stable order."""
        counts = Counter((r.handover_userid, r.takeover_userid, r.why) for r in self.rows)
        return [(h, t, w, n) for (h, t, w), n in sorted(counts.items())]


# ---------------------------------------------------------------------------- planning


def plan_onjob(session: Session, handover: str, rest: list[str], routes: list[Route],
               customers: list[str] | None = None) -> Plan:
    """A member still at the company: all their live customers (or the chosen ones)."""
    _check_members(handover, rest, routes)
    query = (select(Customer.id, Customer.external_userid).join(Follow, Follow.customer_id == Customer.id)
             .join(Staff, Staff.id == Follow.staff_id)
             .where(Staff.userid == handover, Follow.ended_at.is_(None)).order_by(Customer.id))
    found = {ext: cid for cid, ext in session.execute(query)}
    under_way = set(session.scalars(select(Transfer.external_userid).where(
        Transfer.handover_userid == handover, Transfer.status.in_(IN_FLIGHT))))
    plan = Plan()
    wanted = list(dict.fromkeys(customers)) if customers else list(found)
    pool = []
    for external_userid in wanted:
        if external_userid not in found:
            plan.skipped.append((external_userid, f"not a current customer of {handover}"))
        elif external_userid in under_way:  # run twice (a reload, a double click), it would be asked twice
            plan.skipped.append((external_userid, "a hand-over of this customer is under way"))
        else:
            pool.append((found[external_userid], external_userid))
    _assign(session, plan, "onjob", handover, pool, rest, routes)
    plan.unknown_members = _unknown_members(session, plan)
    return plan


def plan_departed(session: Session, api: Any, rest: list[str], routes: list[Route],
                  only: list[str] | None = None, with_groups: bool = True) -> Plan:
    """Departed members' customers as WeCom lists them (get_unassigned_list), and their groups. A customer
    whose hand-over is already under way here is left out (a reload or a second run would ask twice)."""
    for userid in only or []:
        _check_userid(userid)
    by_member: dict[str, list[str]] = defaultdict(list)
    for item in api.gen_unassigned():
        userid, external_userid = str(item.get("handover_userid") or ""), str(item.get("external_userid") or "")
        if userid and external_userid and (not only or userid in only):
            by_member[userid].append(external_userid)
    plan = Plan()
    for handover in sorted(by_member):
        _check_members(handover, rest, routes)
        under_way = set(session.scalars(select(Transfer.external_userid).where(
            Transfer.handover_userid == handover, Transfer.status.in_(IN_FLIGHT))))
        plan.skipped += [(e, "a hand-over of this customer is under way") for e in dict.fromkeys(by_member[handover])
                         if e in under_way]
        ids = [e for e in dict.fromkeys(by_member[handover]) if e not in under_way]
        known = dict(session.execute(select(Customer.external_userid, Customer.id)
                                     .where(Customer.external_userid.in_(ids))).all())
        pool = [(known.get(e), e) for e in ids]
        _assign(session, plan, "resigned", handover, pool, rest, routes)
    if with_groups:
        if not rest:
            raise TransferError("name at least one member to hand over to (--to)")
        # A departed member with groups but no customers is not in get_unassigned_list: without
        # --member, ask for every waiting group of the visible range.
        owners = sorted(only or [])
        chunks = [owners[start:start + 100] for start in range(0, len(owners), 100)] or [[]]
        chat_ids = [chat_id for chunk in chunks for chat_id in api.resigned_group_chats(chunk)]
        for turn, chat_id in enumerate(dict.fromkeys(chat_ids)):
            plan.groups.append(GroupPlanRow(chat_id, "", rest[turn % len(rest)]))
    plan.unknown_members = _unknown_members(session, plan)
    return plan


def _unknown_members(session: Session, plan: Plan) -> list[str]:
    """The plan's takeover members this service has never seen as a member (see Plan.unknown_members)."""
    wanted = {r.takeover_userid for r in plan.rows} | {g.takeover_userid for g in plan.groups}
    known = set(session.scalars(select(Staff.userid).where(Staff.userid.in_(wanted))))
    return sorted(wanted - known)


def _check_members(handover: str, rest: list[str], routes: list[Route]) -> None:
    if not rest:
        raise TransferError("name at least one member to hand over to (--to)")
    everyone = set(rest) | {m for r in routes for m in r.members}
    for userid in {handover, *everyone}:
        _check_userid(userid)
    if handover.casefold() in {m.casefold() for m in everyone}:  # WeCom's userids ignore case
        raise TransferError(f"{handover} cannot hand customers over to themselves")


def _check_userid(userid: str) -> None:
    if not 1 <= len(userid) <= 64 or not userid.isprintable() or any(ch.isspace() for ch in userid):
        raise TransferError(f"{userid[:70]!r} is not a member's userid (1–64 characters, no spaces or "
                            "control characters)")


def _assign(session: Session, plan: Plan, kind: str, handover: str, pool: list[tuple[int | None, str]],
            rest: list[str], routes: list[Route]) -> None:
    """First matching route wins; within a route and for the rest, members take turns."""
    ids = [cid for cid, _ in pool if cid is not None]
    matches = {route: _matching(session, route, ids) for route in routes}
    turns: Counter[Route | None] = Counter()
    for customer_id, external_userid in pool:
        route = next((r for r in routes if customer_id in matches[r]), None)
        members = route.members if route else tuple(rest)
        takeover = members[turns[route] % len(members)]
        turns[route] += 1
        why = f"rule {route.label()}" if route else ("the rest, in turn" if routes else "in turn")
        if customer_id is None:
            why += " (not in our database yet)"
        plan.rows.append(PlanRow(kind, handover, takeover, external_userid, customer_id, why))


def _matching(session: Session, route: Route, ids: list[int]) -> set[int]:
    if not ids:
        return set()
    if route.key == "tag":
        group, _, name = route.value.rpartition("/")
        query = (select(CustomerTag.customer_id).join(Tag, Tag.id == CustomerTag.tag_id)
                 .join(TagGroup, TagGroup.id == Tag.group_id)
                 .where(Tag.name == name, CustomerTag.removed_at.is_(None), CustomerTag.customer_id.in_(ids)))
        if group:
            query = query.where(TagGroup.name == group)
        return set(session.scalars(query))
    column = {"rfm": CustomerTier.rfm_segment, "value": CustomerTier.value_tier, "stage": CustomerTier.stage}[route.key]
    value = _rfm_code(route.value) if route.key == "rfm" else route.value
    return set(session.scalars(select(CustomerTier.customer_id).where(column == value,
                                                                      CustomerTier.customer_id.in_(ids))))


def parse_routes(session: Session, texts: Iterable[str], value_tiers: Sequence[str],
                 stages: Sequence[str]) -> list[Route]:
    """The rules, each value checked against what can match it (the configured value tiers, the stage
    path, the tags there are): a typo would match nobody and send everyone "the rest, in turn"."""
    routes = [Route.parse(text) for text in texts]
    for route in routes:
        if route.key == "rfm":
            _rfm_code(route.value)
        elif route.key in ("value", "stage") and route.value not in (value_tiers if route.key == "value" else stages):
            what, known = ("value tier", value_tiers) if route.key == "value" else ("stage", stages)
            raise TransferError(f"unknown {what} {route.value!r}: one of {', '.join(known)}")
        elif route.key == "tag":
            _check_tag(session, route.value)
    return routes


def _check_tag(session: Session, value: str) -> None:
    group, _, name = value.rpartition("/")
    query = (select(TagGroup.name, Tag.name).join(TagGroup, TagGroup.id == Tag.group_id)
             .where(Tag.deleted.is_(False)).order_by(TagGroup.name, Tag.name))
    if session.scalar(select(func.count()).select_from(query.where(
            Tag.name == name, *([TagGroup.name == group] if group else [])).subquery())):
        return
    shown = [f"{g}/{t}" for g, t in session.execute(query.limit(21))]
    more = "…" if len(shown) > 20 else ""
    raise TransferError(f"no tag {value!r}: write 组/标签 or 标签 of an existing tag, e.g. "
                        f"{', '.join(shown[:20]) or '(no tags yet)'}{more}")


def _rfm_code(text: str) -> str:
    from segments.rfm import SEGMENT_NAMES

    names = {v: k for k, v in SEGMENT_NAMES.items()}
    if text in SEGMENT_NAMES:
        return text
    if text not in names:
        raise TransferError(f"unknown RFM segment {text!r}: one of {', '.join(SEGMENT_NAMES.values())}")
    return names[text]


# ---------------------------------------------------------------------------- running


@dataclass
class RunResult:
    batch: str
    calls: int = 0
    started: int = 0
    failed: int = 0
    unknown: int = 0
    under_way: int = 0  # WeCom answered 40129: already being handed over, the poll settles them
    groups_moved: int = 0
    groups_failed: int = 0
    groups_unknown: int = 0  # no answer: a new departed plan shows those WeCom did not move
    # 90508 / 90507: moved, or being moved, before this run (an earlier run, a double submit, the admin console)
    groups_already: int = 0
    errors: Counter[str] = field(default_factory=Counter)


def new_batch(now: datetime, tz: tzinfo = UTC) -> str:
    """A batch id that starts with its local minute, as the pages and the CLI show times."""
    return f"{now.astimezone(tz):%Y%m%d%H%M}-{secrets.token_hex(3)}"


def run_plan(session: Session, api: Any, plan: Plan, now: datetime, success_msg: str | None = None,
             progress: Callable[[int], None] | None = None, tz: tzinfo = UTC) -> RunResult:
    """Record the plan, then call WeCom ≤ 100 customers per (handover, takeover) call, committing
    after each call so an interrupted run loses nothing. A call that got no answer leaves its
    customers waiting: polling transfer_result settles them (status 5 = it never started)."""
    result = RunResult(batch=new_batch(now, tz))
    for userid in {r.handover_userid for r in plan.rows if r.kind == "resigned"}:
        staff = session.scalar(select(Staff).where(Staff.userid == userid))
        if staff is not None:
            staff.active = False
    chunks: dict[tuple[str, str, str], list[Transfer]] = defaultdict(list)
    for row in plan.rows:
        transfer = Transfer(batch=result.batch, kind=row.kind, customer_id=row.customer_id,
                            external_userid=row.external_userid, handover_userid=row.handover_userid,
                            takeover_userid=row.takeover_userid, why=row.why[:128], status="planned",
                            created_at=now, updated_at=now)
        session.add(transfer)
        chunks[(row.kind, row.handover_userid, row.takeover_userid)].append(transfer)
    _claim(session)
    for (kind, handover, takeover), rows in chunks.items():
        for start in range(0, len(rows), PER_CALL):
            _call(session, api, kind, handover, takeover, rows[start:start + PER_CALL], success_msg, now, result)
            session.commit()
            if progress:
                progress(len(rows[start:start + PER_CALL]))
    _move_groups(session, api, plan, result, now)
    session.commit()
    return result


def _claim(session: Session) -> None:
    """Commit the planned rows: uq_transfers_in_flight lets one run hold a customer, so a second run of
    the same plan (a double submit) stops here, before WeCom is asked."""
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise TransferError("a hand-over of these customers is already under way (another run of this plan); "
                            "nothing was asked of WeCom") from None


def _call(session: Session, api: Any, kind: str, handover: str, takeover: str, rows: list[Transfer],
          success_msg: str | None, now: datetime, result: RunResult) -> None:
    ids = [r.external_userid for r in rows]
    result.calls += 1
    try:
        if kind == "onjob":
            answer = api.transfer_customer(handover, takeover, ids, transfer_success_msg=success_msg)
        else:
            answer = api.resigned_transfer_customer(handover, takeover, ids)
    except WeChatClientException as exc:
        if exc.errcode == BUSY:
            _unanswered(rows, now, result)
            return
        for row in rows:
            _settle(row, "failed", now, errcode=exc.errcode)
        result.failed += len(rows)
        result.errors[reason_text(exc.errcode)] += len(rows)
        return
    except OSError:
        _unanswered(rows, now, result)
        return
    codes = {str(item.get("external_userid")): int(item.get("errcode") or 0) for item in answer.get("customer") or []}
    for row in rows:
        code = codes.get(row.external_userid)
        if code == 0:
            row.status, row.errcode, row.updated_at = "waiting", 0, now
            result.started += 1
        elif code == UNDER_WAY:
            row.status, row.errcode, row.updated_at = "waiting", code, now
            result.under_way += 1
        else:
            _settle(row, "failed", now, errcode=code)
            result.failed += 1
            result.errors[reason_text(code) or "no answer for this customer"] += 1


def _unanswered(rows: list[Transfer], now: datetime, result: RunResult) -> None:
    """No answer: WeCom may or may not have started it; never blindly call again, the poll tells."""
    for row in rows:
        row.status, row.updated_at = "waiting", now
    result.unknown += len(rows)


def _move_groups(session: Session, api: Any, plan: Plan, result: RunResult, now: datetime) -> None:
    by_owner: dict[str, list[str]] = defaultdict(list)
    for group in plan.groups:
        by_owner[group.takeover_userid].append(group.chat_id)
    for new_owner, chat_ids in by_owner.items():
        for start in range(0, len(chat_ids), PER_CALL):
            chunk = chat_ids[start:start + PER_CALL]
            try:
                failed = {str(f["chat_id"]): f for f in api.groupchat_transfer(chunk, new_owner)
                          .get("failed_chat_list") or []}
            except WeChatClientException as exc:
                if exc.errcode == BUSY:
                    _groups_unanswered(session, chunk, new_owner, result, now)
                    continue
                failed = {c: {"errcode": exc.errcode, "errmsg": exc.errmsg} for c in chunk}
            except OSError:  # requests' timeouts and connection errors: WeCom may have moved them
                _groups_unanswered(session, chunk, new_owner, result, now)
                continue
            for chat_id in chunk:
                bad = failed.get(chat_id)
                code = int(bad["errcode"]) if bad else None
                # 90508 / 90507: moved, or being moved, before this call (an earlier run, the other half of a
                # double submit, an unanswered call WeCom did): not this run's move, perhaps to another owner.
                status = ("succeeded" if code is None else
                          "already" if code in (GROUP_ALREADY_MOVED, GROUP_BEING_MOVED) else "failed")
                session.add(GroupTransfer(batch=result.batch, chat_id=chat_id, handover_userid="",
                                          takeover_userid=new_owner, status=status,
                                          errcode=code, errmsg=str(bad.get("errmsg") or "")[:255] if bad else None,
                                          created_at=now))
                result.groups_moved += status == "succeeded"
                result.groups_already += status == "already"
                result.groups_failed += status == "failed"
            session.commit()


def _groups_unanswered(session: Session, chat_ids: list[str], new_owner: str, result: RunResult,
                       now: datetime) -> None:
    """No answer for a group move: recorded as unknown; a new departed plan lists the groups WeCom has not moved."""
    for chat_id in chat_ids:
        session.add(GroupTransfer(batch=result.batch, chat_id=chat_id, handover_userid="", takeover_userid=new_owner,
                                  status="unknown", errmsg=GROUPS_UNANSWERED, created_at=now))
    result.groups_unknown += len(chat_ids)
    session.commit()


# ---------------------------------------------------------------------------- outcomes


def poll_results(session: Session, api: Any, now: datetime, batch: str | None = None) -> Counter[str]:
    """Ask transfer_result for each (handover, takeover) pair with customers still waiting and
    record each outcome. Returns how many changed to each status."""
    changed: Counter[str] = Counter()
    # A row left "planned" by a run that died before or during its call: WeCom may have it, so it waits
    # for the answer like an unanswered call (never started → no_record after 48 h), not for good.
    stale = update(Transfer).where(Transfer.status == "planned", Transfer.updated_at < now - PLANNED_STALE_AFTER)
    session.execute((stale.where(Transfer.batch == batch) if batch else stale).values(status="waiting", updated_at=now))
    query = select(Transfer.kind, Transfer.handover_userid, Transfer.takeover_userid).where(
        Transfer.status == "waiting").distinct()
    if batch:
        query = query.where(Transfer.batch == batch)
    for kind, handover, takeover in session.execute(query).all():
        waiting = {t.external_userid: t for t in session.scalars(select(Transfer).where(
            Transfer.status == "waiting", Transfer.kind == kind, Transfer.handover_userid == handover,
            Transfer.takeover_userid == takeover))}
        listed: set[str] = set()
        for item in api.gen_result(kind, handover, takeover):
            # A customer forgotten meanwhile (`scrm customer forget`) is waiting under their key (a digest)
            row = waiting.get(str(item.get("external_userid"))) or waiting.get(forgotten_key(str(item.get(
                "external_userid"))))
            status = RESULT_STATUS.get(int(item.get("status") or 0))
            if row is None or status is None:
                continue
            listed.add(row.external_userid)
            row.result_status = int(item["status"])
            if item.get("takeover_time"):
                row.takeover_at = from_epoch(item["takeover_time"])
            if status == "waiting":
                row.updated_at = now
                continue
            if status == "succeeded":
                complete(session, row, row.takeover_at or now)
            else:
                _settle(row, status, now)
            changed[status] += 1
        for external_userid, row in waiting.items():
            # WeCom lists every transfer it started; one still missing long after a call that got
            # no answer never started.
            if external_userid not in listed and row.created_at < now - NEVER_STARTED_AFTER:
                _settle(row, "no_record", now)
                changed["no_record"] += 1
    session.flush()
    return changed


def record_failure(session: Session, external_userid: str, takeover_userid: str, fail_reason: str,
                   at: datetime) -> Transfer | None:
    """The ``transfer_fail`` callback: the waiting transfer of this customer to this member failed."""
    row = session.scalar(select(Transfer).where(Transfer.external_userid.in_((external_userid,
                                                                             forgotten_key(external_userid))),
                                                Transfer.takeover_userid == takeover_userid,
                                                Transfer.status == "waiting").order_by(Transfer.id.desc()).limit(1))
    if row is not None:
        _settle(row, FAIL_REASONS.get(fail_reason, "failed"), at)
        row.fail_reason = fail_reason[:64]
    return row


def awaits_takeover(session: Session, external_userid: str, takeover_userid: str) -> bool:
    """True if this customer is being handed to this member (their add is the takeover)."""
    return session.scalar(select(Transfer.id).where(Transfer.external_userid == external_userid,
                                                    Transfer.takeover_userid == takeover_userid,
                                                    Transfer.status == "waiting").limit(1)) is not None


def record_takeover(session: Session, external_userid: str, takeover_userid: str, at: datetime) -> Transfer | None:
    """The takeover member's add event: a waiting transfer to them has completed."""
    row = session.scalar(select(Transfer).where(Transfer.external_userid.in_((external_userid,
                                                                             forgotten_key(external_userid))),
                                                Transfer.takeover_userid == takeover_userid,
                                                Transfer.status == "waiting").order_by(Transfer.id.desc()).limit(1))
    if row is not None:
        complete(session, row, at)
    return row


def complete(session: Session, row: Transfer, at: datetime) -> None:
    """The customer now belongs to the takeover member: their follow ends as "transferred" (not a
    churn), the new member's follow carries the channel and notes on, and the owner moves."""
    _settle(row, "succeeded", at)
    row.takeover_at = row.takeover_at or at
    customer = session.get(Customer, row.customer_id) if row.customer_id else None
    if customer is None:
        customer = upsert_customer(session, row.external_userid, {})
        row.customer_id = customer.id
    old = session.scalar(select(Follow).join(Staff, Staff.id == Follow.staff_id).where(
        Follow.customer_id == customer.id, Staff.userid == row.handover_userid))
    new = upsert_follow(session, customer, _staff(session, row.takeover_userid))
    if old is not None:
        if old.ended_at is None:
            old.ended_at, old.ended_reason = at, "transferred"
        new.state = new.state or old.state
        new.remark = new.remark or old.remark
        new.description = new.description or old.description
    if new.ended_at is not None or new.added_at is None:  # the hand-over gives them the customer: no add
        new.added_at, new.ended_at, new.ended_reason, new.add_way = at, None, None, ADD_WAY_ASSIGNED
    new.add_way = new.add_way if new.add_way is not None else ADD_WAY_ASSIGNED
    if customer.owner_userid in (None, row.handover_userid):
        customer.owner_userid = row.takeover_userid
    add_interaction(session, customer, "transferred", f"transfer:{row.id}", at, row.takeover_userid,
                    {"from": row.handover_userid, "to": row.takeover_userid, "kind": row.kind}, touch=False)


def _settle(row: Transfer, status: str, at: datetime, errcode: int | None = None) -> None:
    row.status, row.settled_at, row.updated_at = status, at, at
    if errcode is not None:
        row.errcode = errcode


def _staff(session: Session, userid: str) -> Staff:
    staff = session.scalar(select(Staff).where(Staff.userid == userid))
    if staff is None:
        staff = Staff(userid=userid, name=userid)
        session.add(staff)
        session.flush()
    return staff


# ---------------------------------------------------------------------------- status


@dataclass
class BatchStatus:
    batch: str
    kind: str
    started_at: datetime
    counts: dict[str, int]
    problems: list[tuple[str, str, str, str]]  # (external_userid, handover, takeover, reason)
    groups: dict[str, int]


def batch_status(session: Session, batches: Iterable[str] | None = None, limit: int = 10) -> list[BatchStatus]:
    """The latest batches (or these), with counts per status and every refusal or failure with its reason."""
    customers = select(Transfer.batch.label("batch"), Transfer.kind.label("kind"), Transfer.created_at.label("at"))
    groups_only = select(GroupTransfer.batch, literal("resigned"), GroupTransfer.created_at).where(
        ~exists().where(Transfer.batch == GroupTransfer.batch))  # a departed run that moved groups only
    every = union_all(customers, groups_only).subquery()
    query = select(every.c.batch, every.c.kind, func.min(every.c.at)).group_by(every.c.batch, every.c.kind) \
        .order_by(func.min(every.c.at).desc())
    if batches:
        query = query.where(every.c.batch.in_(list(batches)))
    out = []
    for batch, kind, started in session.execute(query.limit(limit)).all():
        counts = dict(session.execute(select(Transfer.status, func.count()).where(Transfer.batch == batch)
                                      .group_by(Transfer.status)).all())
        problems = [(t.external_userid, t.handover_userid, t.takeover_userid,
                     reason_text(t.status if t.status in REASONS else t.errcode) or t.fail_reason or t.status)
                    for t in session.scalars(select(Transfer).where(
                        Transfer.batch == batch, Transfer.status.in_(["refused", "takeover_full", "no_record",
                                                                       "failed"])).order_by(Transfer.id))]
        groups = dict(session.execute(select(GroupTransfer.status, func.count()).where(GroupTransfer.batch == batch)
                                      .group_by(GroupTransfer.status)).all())
        out.append(BatchStatus(batch, kind, started, counts, problems, groups))
    return out
