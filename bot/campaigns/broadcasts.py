"""Tiered broadcasts (operators): audience + content + schedule, previewed before they are
scheduled, planned in SQL, with a stratified hold-out group and an effect report.

Planning a run is a handful of set-based statements whatever the audience size: one INSERT …
SELECT writes an outbox row per customer (the tier's text, or the skip reason the contact policy
gives), one UPDATE draws the hold-out group per tier, and only templates that name the customer
(or carry a coupon code) are rendered row by row.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from typing import Any

from jinja2 import TemplateSyntaxError, UndefinedError, meta
from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Float,
    MetaData,
    Numeric,
    String,
    Table,
    and_,
    case,
    cast,
    exists,
    false,
    func,
    insert,
    literal,
    or_,
    select,
    true,
    union,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased
from sqlalchemy.sql.elements import ColumnElement

from bot.campaigns.audience import Audience, count_per_value_tier
from bot.campaigns.coupons import CouponBook, coupon_vars, issue
from bot.campaigns.push import NO_SENDER
from bot.campaigns.rules import cron_trigger, value_tier_names
from bot.core.config import Settings
from bot.core.db import row_id
from bot.core.times import local_time
from bot.models import (
    Broadcast,
    BroadcastRun,
    Coupon,
    Customer,
    CustomerTier,
    Follow,
    Order,
    OutboxMessage,
    Staff,
    utcnow,
)
from bot.outbox.messages import TIER_NAMES, MessageTemplates, customer_vars, refusal
from bot.outbox.policy import COUNTED_STATUSES, PUSH_TRIGGERS, ContactPolicy
from bot.outbox.queue import fit_text, withdraw_carried_coupons
from segments.incremental import ROW_ID
from segments.money import fen_to_yuan
from segments.rfm import SEGMENT_NAMES

logger = logging.getLogger(__name__)
TIER_VARS = {"brand", "tier_name", "segment_name"}  # the same for every customer of a tier: rendered once per tier
PERSONAL_VARS = {"customer", "coupon"}  # rendered per customer
OPTED_OUT = "opted out (退订)"
HELD_OUT = "hold-out group (not sent, for the effect report)"
SAMPLES_PER_TIER = 3


class BroadcastError(ValueError):
    """The broadcast cannot be created or changed as asked; the message says why."""


SEND_YEARS = (1970, 2999)


def parse_send_time(text: str, tz: tzinfo) -> datetime:
    """A send time typed by a person: ISO 8601 (``YYYY-MM-DD HH:MM``), local in ``tz`` without an offset, in
    a year a schedule can mean (year 1 or 9999 overflowed the time arithmetic)."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BroadcastError(f"send time {text[:40]!r}: use YYYY-MM-DD HH:MM (local time)") from None
    if not SEND_YEARS[0] <= moment.year <= SEND_YEARS[1]:
        raise BroadcastError(f"send time {text[:40]!r} is out of range (years {SEND_YEARS[0]}–{SEND_YEARS[1]})")
    return moment if moment.tzinfo else moment.replace(tzinfo=tz)


# ---------------------------------------------------------------- content


@dataclass(frozen=True)
class Content:
    """One template per tier key (an RFM segment or a value tier) plus ``default``."""

    sources: dict[str, str]
    templates: MessageTemplates
    brand: str
    _compiled: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def key_for(self, rfm_segment: str | None, value_tier: str | None) -> str:
        for key in (rfm_segment, value_tier):
            if key and key in self.sources:
                return key
        return "default"

    @property
    def personal(self) -> bool:
        return any(self.variables(src) & PERSONAL_VARS for src in self.sources.values())

    def variables(self, source: str) -> set[str]:
        return set(meta.find_undeclared_variables(self.templates.env.parse(source)))

    def render(self, rfm_segment: str | None, value_tier: str | None, customer: Any = None,
               coupon: dict[str, Any] | None = None) -> tuple[str, str]:
        """(template key, text) as it is sent: within WeCom's limit; a template that fails on this customer's
        data (arithmetic, the sandbox's bounds) is a BroadcastError naming it, not an exception that would stop
        every other broadcast's run."""
        try:
            key, text = self.render_as_is(rfm_segment, value_tier, customer, coupon)
        except Exception as exc:  # noqa: BLE001 - whatever a template does with one customer's data: refused, named
            raise BroadcastError(f"template {self.key_for(rfm_segment, value_tier)!r} refused: {refusal(exc)}") \
                from None
        return key, fit_text("mass_message", text, f"broadcast:{key}")

    def render_as_is(self, rfm_segment: str | None, value_tier: str | None, customer: Any = None,
                     coupon: dict[str, Any] | None = None) -> tuple[str, str]:
        key = self.key_for(rfm_segment, value_tier)
        context: dict[str, Any] = {"brand": self.brand, "tier_name": TIER_NAMES.get(value_tier or "", ""),
                                   "segment_name": SEGMENT_NAMES.get(rfm_segment or "", "")}
        if customer is not None:
            context["customer"] = customer_vars(customer)
        if coupon is not None:
            context["coupon"] = coupon
        if key not in self._compiled:
            self._compiled[key] = self.templates.env.from_string(self.sources[key])
        return key, self._compiled[key].render(**context).strip()


def check_content(sources: Any, templates: MessageTemplates, tier_keys: set[str], has_coupon: bool,
                  brand: str) -> Content:
    """Reject, at creation, a template that would fail when it sends: bad syntax, a variable that
    does not exist (StrictUndefined), a coupon variable without a coupon, an unknown tier key."""
    if not isinstance(sources, dict) or not sources:
        raise BroadcastError("content needs at least a default template")
    if "default" not in sources:
        raise BroadcastError("content needs a default template (for customers no tier template matches)")
    unknown = sorted(set(sources) - tier_keys - {"default"})
    if unknown:
        raise BroadcastError(f"template for unknown tier(s) {unknown}; use a value tier, an RFM segment or default")
    content = Content({k: str(v) for k, v in sources.items()}, templates, brand)
    allowed = TIER_VARS | {"customer"} | ({"coupon"} if has_coupon else set())
    sample = Customer(external_userid="wm_sample_customer", name="样例客户")
    sample_coupon = {"code": "ABCD-EFGH-JKMN", "title": "券", "off": "立减10元", "min_spend": "100",
                     "expires": "2026-12-31"}
    for key, source in content.sources.items():
        if not source.strip():
            raise BroadcastError(f"template {key!r} is empty")
        try:
            names = content.variables(source)
        except TemplateSyntaxError as exc:
            raise BroadcastError(f"template {key!r}: syntax error on line {exc.lineno}: {exc.message}") from None
        extra = sorted(names - allowed)
        if extra:
            hint = " (coupon needs --coupon)" if "coupon" in extra else ""
            raise BroadcastError(f"template {key!r} uses unknown variable(s) {extra}{hint}; "
                                 f"available: {sorted(allowed)}")
        sample.value_tier = key if key in TIER_NAMES else None
        sample.rfm_segment = key if key in SEGMENT_NAMES else None
        try:
            _, text = content.render_as_is(sample.rfm_segment, sample.value_tier, sample,
                                           sample_coupon if has_coupon else None)
        except UndefinedError as exc:
            raise BroadcastError(f"template {key!r}: {exc.message}") from None
        except Exception as exc:  # noqa: BLE001 - the sandbox (SecurityError), arithmetic, a filter's bad argument
            raise BroadcastError(f"template {key!r} refused: {refusal(exc)}") from None
        if len(text.encode("utf-8")) > 4000:
            raise BroadcastError(f"template {key!r} renders to more than 4000 bytes (WeCom's text limit)")
    return content


# ---------------------------------------------------------------- create / cancel


@dataclass(frozen=True)
class BroadcastSpec:
    name: str
    audience: dict[str, Any]
    templates: dict[str, str]
    send_at: datetime | None = None
    cron: str | None = None
    holdout_percent: int | None = None
    coupon: str | None = None


def tier_key_names(settings: Settings) -> set[str]:
    return set(value_tier_names(settings)) | set(SEGMENT_NAMES)


def validate_spec(session: Session, settings: Settings, spec: BroadcastSpec) -> tuple[Audience, Content]:
    if not spec.name.strip() or len(spec.name) > 100:
        raise BroadcastError("a broadcast needs a name of 1–100 characters")
    try:
        audience = Audience.parse(spec.audience, value_tier_names(settings))
        audience.conditions(session, settings.tz)  # unknown tags fail now, not at send time
    except ValueError as exc:
        raise BroadcastError(str(exc)) from None
    if spec.coupon:
        try:
            CouponBook.from_settings(settings).get(spec.coupon, "coupon")
        except ValueError as exc:
            raise BroadcastError(str(exc)) from None
    content = check_content(spec.templates, MessageTemplates.from_settings(settings), tier_key_names(settings),
                            bool(spec.coupon), settings.app.brand_name)
    percent = settings.broadcasts.holdout_percent if spec.holdout_percent is None else spec.holdout_percent
    if not 0 <= percent <= 50:
        raise BroadcastError("hold-out must be 0–50 percent")
    return audience, content


def create_broadcast(session: Session, settings: Settings, spec: BroadcastSpec, now: datetime | None = None
                     ) -> Broadcast:
    now = now or utcnow()
    audience, _ = validate_spec(session, settings, spec)
    next_run = check_schedule(spec, settings, now)
    if session.scalar(select(Broadcast.id).where(Broadcast.name == spec.name)) is not None:
        raise BroadcastError(f"a broadcast named {spec.name!r} exists already")
    broadcast = Broadcast(name=spec.name, audience=audience.to_dict(), templates=dict(spec.templates),
                          send_at=spec.send_at, cron=spec.cron, coupon=spec.coupon or None,
                          holdout_percent=settings.broadcasts.holdout_percent if spec.holdout_percent is None
                          else spec.holdout_percent, status="scheduled", next_run_at=next_run)
    return add_named(session, broadcast, f"a broadcast named {spec.name!r} exists already")


def add_named(session: Session, row: Any, taken: str) -> Any:
    """Insert a row whose name is unique; a name another request took a moment ago (a double click) is a
    BroadcastError saying ``taken``, not an IntegrityError."""
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:
        raise BroadcastError(taken) from None
    return row


def check_schedule(spec: BroadcastSpec, settings: Settings, now: datetime) -> datetime:
    """The first run of a one-off (a send time not in the past) or repeating (a cron that fires) broadcast,
    given one or the other: checked before a preview, so that nothing is previewed that cannot be made."""
    if (spec.send_at is None) == (spec.cron is None):
        raise BroadcastError("give either a send time (once) or a cron expression (repeating)")
    if spec.send_at is not None:
        check_send_time(spec.send_at, settings, now)
        return spec.send_at
    return next_cron_time(str(spec.cron), settings, now)


def check_send_time(send_at: datetime, settings: Settings, now: datetime) -> None:
    """A one-off send time must be aware and not before ``now``: a run planned in the past would go
    out at the next dispatch, at once and unannounced."""
    if send_at.tzinfo is None:
        raise BroadcastError("the send time needs a time zone")
    if send_at < now:
        raise BroadcastError(f"the send time {local_time(send_at, settings.tz)} is in the past "
                             f"(now {local_time(now, settings.tz)}); give a later one")


def next_cron_time(expression: str, settings: Settings, after: datetime) -> datetime:
    try:
        trigger = cron_trigger(expression, settings.tz)
    except ValueError as exc:
        raise BroadcastError(f"cron {expression!r}: {exc}") from None
    fire = trigger.get_next_fire_time(None, after.astimezone(settings.tz) + timedelta(seconds=1))
    if fire is None:
        raise BroadcastError(f"cron {expression!r} never fires")
    return fire


def unsent_messages(session: Session, broadcast: Broadcast) -> int:
    """Its messages not yet handed to WeCom (a run deferred past quiet hours, say): what a cancel would stop."""
    due = _unsent(session, broadcast)
    return (session.scalar(select(func.count()).select_from(OutboxMessage).where(due)) or 0) if due is not None else 0


def _unsent(session: Session, broadcast: Broadcast) -> ColumnElement[bool] | None:
    refs = [run_ref(run_id) for run_id in session.scalars(select(BroadcastRun.id).where(
        BroadcastRun.broadcast_id == broadcast.id))]
    if not refs:
        return None
    return and_(OutboxMessage.trigger_kind == "campaign", OutboxMessage.trigger_ref.in_(refs),
                OutboxMessage.status == "pending")


def find_broadcast(session: Session, name_or_id: str) -> Broadcast:
    query = select(Broadcast).where(Broadcast.name == name_or_id)
    found = session.scalar(query)
    if found is None and (number := row_id(name_or_id)) is not None:
        found = session.get(Broadcast, number)
    if found is None:
        raise BroadcastError(f"no broadcast {name_or_id!r} (see `scrm broadcast list`)")
    return found


def cancel_broadcast(session: Session, broadcast: Broadcast, now: datetime | None = None) -> int:
    """Stop future runs; messages not yet handed to WeCom are skipped. Returns how many."""
    now = now or utcnow()
    broadcast.status, broadcast.next_run_at = "cancelled", None
    due = _unsent(session, broadcast)
    if due is None:
        return 0
    count = session.scalar(select(func.count()).select_from(OutboxMessage).where(due)) or 0
    withdraw_carried_coupons(session, due)
    session.execute(update(OutboxMessage).where(due).values(status="skipped", reason="broadcast cancelled",
                                                            updated_at=now))
    return count


def run_ref(run_id: int) -> str:
    return f"broadcast_run:{run_id}"


# ---------------------------------------------------------------- audience + policy in SQL


def _skip_reason(settings: Settings, policy: ContactPolicy, at: datetime, coupon_tiers: tuple[str, ...],
                 per_customer: bool = False, live_owner: ColumnElement[bool] | None = None,
                 push_counts: Any = None, opted_out: ColumnElement[bool] | None = None,
                 key: ColumnElement[Any] | None = None) -> ColumnElement[Any]:
    """The first reason (or NULL) a customer must not get this push at ``at`` — one CASE over
    the customer row and indexed subqueries, evaluated inside the planning INSERT.

    The caps are sets of customers over the cap (each grouped once per statement), or, with
    ``per_customer``, each customer's own pushes counted through the (customer_id, created_at) index:
    the same answer, cheaper for a statement that looks at a few customers only (the preview's samples).
    ``live_owner``: whether the owner follows the customer, when the statement joins that (``_with_owner``)
    instead of asking a subquery per customer. ``push_counts``: the customers over a cap with their
    counted pushes per cap (``_pushes_per_cap``, a CTE of the statement), instead of grouping them per
    cap; ``key`` is then the customer id the statement has (default ``customers.id``). ``opted_out``:
    the condition that the customer opted out, when the statement does not read the customer row."""
    if live_owner is None:
        live_owner = exists().where(Follow.customer_id == Customer.id, Follow.ended_at.is_(None),
                                    Follow.staff_id == Staff.id, Staff.userid == Customer.owner_userid)
    opted_out = Customer.opted_out.is_(True) if opted_out is None else opted_out
    whens: list[tuple[ColumnElement[bool], str]] = [(opted_out, OPTED_OUT)]
    if coupon_tiers:
        whens.append((_coupon_blocked(coupon_tiers), _coupon_reason(coupon_tiers)))
    whens.append((~live_owner, NO_SENDER))
    for n, (since, cap, channel, reason) in enumerate(_caps(policy, at)):
        if push_counts is not None:
            over = select(push_counts.c.customer_id).where(push_counts.c[f"cap_{n}"] >= max(cap, 1))
            whens.append(((Customer.id if key is None else key).in_(over), reason))
        elif per_customer:
            own = [OutboxMessage.customer_id == Customer.id, OutboxMessage.trigger_kind.in_(PUSH_TRIGGERS),
                   OutboxMessage.status.in_(COUNTED_STATUSES), OutboxMessage.scheduled_at >= since]
            if channel:
                own.append(OutboxMessage.channel == channel)
            pushes = select(func.count()).select_from(OutboxMessage).where(*own).scalar_subquery()
            whens.append((pushes >= cap, reason))
        else:
            whens.append((Customer.id.in_(_over_cap(since, cap, channel)), reason))
    return case(*whens, else_=None)


def _coupon_blocked(coupon_tiers: tuple[str, ...]) -> ColumnElement[bool]:
    """The customer's tiers (joined) are not among those the coupon is for (no tier row: not either)."""
    allowed = or_(CustomerTier.value_tier.in_(coupon_tiers), CustomerTier.rfm_segment.in_(coupon_tiers))
    return ~func.coalesce(allowed, False)


def _coupon_reason(coupon_tiers: tuple[str, ...]) -> str:
    return f"the coupon is only for {list(coupon_tiers)}"


def _caps(policy: ContactPolicy, at: datetime) -> list[tuple[datetime, int, str | None, str]]:
    """The contact caps at ``at``: (counted since, cap, channel or None for every channel, skip reason)."""
    day_start = datetime.combine(at.astimezone(policy.tz).date(), datetime.min.time(), tzinfo=policy.tz)
    period_start, allowed_mass = policy.mass_period(at)
    return [(day_start, policy.daily_cap, None, f"brand cap: {policy.daily_cap} push(es) per day reached"),
            (at - timedelta(days=7), policy.weekly_cap, None,
             f"brand cap: {policy.weekly_cap} pushes per 7 days reached"),
            (period_start, allowed_mass, "mass_message",
             f"WeCom mass-message cap ({policy.mass_rule}: {allowed_mass} per period) reached")]


def _pushes_per_cap(policy: ContactPolicy, at: datetime) -> Any:
    """Per customer over any cap at ``at``, their counted pushes within each cap's window (``cap_0``…),
    in one pass over the pushes of the longest window. As ``_over_cap``, a customer without a push in a
    window is never over its cap."""
    caps = _caps(policy, at)
    within = [and_(OutboxMessage.scheduled_at >= since, *([OutboxMessage.channel == channel] if channel else []))
              for since, _, channel, _ in caps]
    counts = [func.count().filter(condition) for condition in within]
    return (select(OutboxMessage.customer_id.label("customer_id"),
                   *(count.label(f"cap_{n}") for n, count in enumerate(counts)))
            .where(OutboxMessage.trigger_kind.in_(PUSH_TRIGGERS), OutboxMessage.status.in_(COUNTED_STATUSES),
                   OutboxMessage.scheduled_at >= min(since for since, _, _, _ in caps))
            .group_by(OutboxMessage.customer_id)
            .having(or_(*(count >= max(cap, 1) for count, (_, cap, _, _) in zip(counts, caps, strict=True))))
            .cte("pushes_per_cap"))  # one grouping, read twice (the suspects, their counts)


def _over_cap(since: datetime, cap: int, channel: str | None) -> Any:
    """The customers with ``cap`` or more counted pushes since ``since`` (on ``channel``, if given)."""
    counted = (select(OutboxMessage.customer_id)
               .where(OutboxMessage.trigger_kind.in_(PUSH_TRIGGERS), OutboxMessage.status.in_(COUNTED_STATUSES),
                      OutboxMessage.scheduled_at >= since)
               .group_by(OutboxMessage.customer_id).having(func.count() >= cap))
    return counted.where(OutboxMessage.channel == channel) if channel else counted


# ---------------------------------------------------------------- preview


@dataclass
class Preview:
    audience: int = 0
    per_tier: dict[str, int] = field(default_factory=dict)
    skipped: Counter[str] = field(default_factory=Counter)
    held_out: dict[str, int] = field(default_factory=dict)
    to_send: int = 0
    send_after: datetime | None = None
    deferred: bool = False
    samples: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    # With {{ customer.… }} or {{ coupon.… }} every customer's text differs, and WeCom takes one mass-message
    # task per text and sender: each customer becomes a task their member confirms one by one.
    personal_tasks: int = 0


def preview(session: Session, settings: Settings, spec: BroadcastSpec, at: datetime | None = None) -> Preview:
    """What a run at ``at`` would do: audience per tier, who is skipped and why, the expected
    hold-out per tier (the run draws it at random), and three rendered samples per tier. Writes nothing."""
    at = at or spec.send_at or utcnow()
    audience, content = validate_spec(session, settings, spec)
    policy = ContactPolicy.from_settings(settings)
    send_after = policy.next_allowed(at)
    book = CouponBook.from_settings(settings)
    coupon_def = book.get(spec.coupon) if spec.coupon else None
    where = audience.conditions(session, settings.tz, tiers_joined=True)  # every query below joins the tiers
    coupon_tiers = coupon_def.tiers if coupon_def else ()
    result = Preview(send_after=send_after, deferred=send_after != at)
    eligible = _preview_counts(session, settings, audience, where, policy, send_after, coupon_tiers, result)
    sendable_tiers = {"" if tier == "none" else tier for tier, n in eligible.items() if n}
    percent = settings.broadcasts.holdout_percent if spec.holdout_percent is None else spec.holdout_percent
    # The plan draws round(n × percent) of each tier's audience, then skips the blocked among them:
    # expected hold-out = the draw × the tier's sendable share.
    result.held_out = {tier: round(holdout_size(result.per_tier[tier], percent) * n / result.per_tier[tier])
                       for tier, n in eligible.items()}
    result.to_send = sum(eligible.values()) - sum(result.held_out.values())
    result.personal_tasks = result.to_send if content.personal else 0
    # The first sendable customers of each tier in key order: each query walks customers in id order
    # and stops once it has them, so their caps are counted per customer rather than grouped for everyone.
    first_reason = _skip_reason(settings, policy, send_after, coupon_tiers, per_customer=True)
    tiered = _tiered(inner=bool(audience.tier_conditions()))
    # The reason is asked inside a CASE on the tier, so that customers of other tiers walked past cost a
    # tier lookup only (SQLite would otherwise test a condition on customers alone before the join).
    sample_ids = [customer_id for tier in sorted(sendable_tiers) for customer_id in session.scalars(
        select(Customer.id).select_from(tiered)
        .where(*where, case((func.coalesce(CustomerTier.value_tier, "") == tier, first_reason),
                            else_=literal("another tier")).is_(None))
        .order_by(Customer.id).limit(SAMPLES_PER_TIER))]
    sample_coupon = None
    if coupon_def:
        sample_coupon = {"code": "XXXX-XXXX-XXXX", "title": coupon_def.title, "off": coupon_def.terms(),
                         "min_spend": fen_to_yuan(coupon_def.min_spend_fen),
                         "expires": (send_after + timedelta(days=coupon_def.valid_days)).astimezone(
                             settings.tz).strftime("%Y-%m-%d")}
    for customer in session.scalars(select(Customer).where(Customer.id.in_(sample_ids)).order_by(Customer.id)):
        key, text = content.render(customer.rfm_segment, customer.value_tier, customer, sample_coupon)
        result.samples.setdefault(customer.value_tier or "none", []).append(
            {"customer": customer.external_userid, "template": key, "text": text})
    return result


def _preview_counts(session: Session, settings: Settings, audience: Audience, where: list[ColumnElement[bool]],
                    policy: ContactPolicy, at: datetime, coupon_tiers: tuple[str, ...], result: Preview
                    ) -> Counter[str]:
    """Fill ``result``'s audience, per-tier counts and skip reasons; return the sendable per tier.

    Everyone is counted per tier on the tier table (as the builder's live count); the skip reasons are
    asked only of the few customers a push could skip for another reason than the coupon: the opted
    out and those whose owner no longer follows them (two partial indexes, kept by the database), and
    those over a cap (grouped from the recent pushes). The rest of the audience is sendable, unless
    the coupon is not for their tiers: that is counted per tier on the tier table too. The same
    numbers as asking every customer (the planning INSERT's CASE), at a fraction of the lookups."""
    names = value_tier_names(settings)
    tiers_only = audience.only_tiers
    totals = count_per_value_tier(session, names, audience if tiers_only else None, where)
    blocked: dict[str, int] = {}
    if coupon_tiers:
        blocked = count_per_value_tier(session, names, audience if tiers_only else None, where,
                                       extra=[_coupon_blocked(coupon_tiers)])
        blocked[""] = totals.get("", 0)  # no tier row: the coupon is not for them either
    pushes = _pushes_per_cap(policy, at)
    opted = select(Customer.id.label("id")).where(Customer.opted_out == true()).cte("opted_out_ids")
    unfollowed = select(Customer.id.label("id")).where(Customer.owner_follows == false()).cte("unfollowed_ids")
    suspects = union(select(opted.c.id), select(unfollowed.c.id), select(pushes.c.customer_id)).subquery()
    # Whether the owner follows them as the database keeps it (migration 0019), where a run's planning
    # INSERT joins the follow itself: test_the_preview_counts_what_a_run_plans holds the two equal.
    if audience.only_tiers:  # the partial indexes say what the customer rows would: they are not read
        source: Any = suspects
        flags = {"opted_out": suspects.c.id.in_(select(opted.c.id)),
                 "live_owner": suspects.c.id.not_in(select(unfollowed.c.id))}
    else:
        source = suspects.join(Customer.__table__, Customer.id == suspects.c.id)
        flags = {"opted_out": Customer.opted_out.is_(True), "live_owner": Customer.owner_follows.is_(True)}
    source = (source.join if audience.tier_conditions() else source.outerjoin)(
        CustomerTier.__table__, CustomerTier.customer_id == suspects.c.id)
    reason = _skip_reason(settings, policy, at, coupon_tiers, push_counts=pushes, key=suspects.c.id, **flags)
    each = (select(func.coalesce(CustomerTier.value_tier, "").label("tier"), reason.label("reason"),
                   (_coupon_blocked(coupon_tiers) if coupon_tiers else literal(False)).label("blocked"))
            .select_from(source).where(*where).subquery())
    skipped_per_tier: Counter[str] = Counter()
    for tier, why, is_blocked, count in session.execute(
            select(each.c.tier, each.c.reason, each.c.blocked, func.count())
            .group_by(each.c.tier, each.c.reason, each.c.blocked)):
        if why:
            result.skipped[why] += count
            skipped_per_tier[tier] += count
        if is_blocked:
            blocked[tier] = blocked.get(tier, 0) - count  # left: the blocked whom no other reason skips first
    for tier, n in blocked.items():
        if n > 0:
            result.skipped[_coupon_reason(coupon_tiers)] += n
            skipped_per_tier[tier] += n
    eligible: Counter[str] = Counter()
    for tier, n in totals.items():
        result.audience += n
        result.per_tier[tier or "none"] = n
        if n > skipped_per_tier[tier]:
            eligible[tier or "none"] = n - skipped_per_tier[tier]
    return eligible


def holdout_size(eligible: int, percent: int) -> int:
    """round(eligible × percent / 100), halves up — the same integer arithmetic the SQL uses."""
    return (eligible * percent + 50) // 100


# ---------------------------------------------------------------- planning a run


@dataclass
class RunPlan:
    run: BroadcastRun
    created: bool


def plan_run(session: Session, settings: Settings, broadcast: Broadcast, run_at: datetime,
             now: datetime | None = None) -> RunPlan:
    """Write this run's outbox rows (once: a second call for the same run time returns the first)."""
    now = now or utcnow()
    existing = session.scalar(select(BroadcastRun).where(BroadcastRun.broadcast_id == broadcast.id,
                                                         BroadcastRun.run_at == run_at))
    if existing is not None:
        return RunPlan(existing, False)
    spec = spec_of(broadcast)
    audience, content = validate_spec(session, settings, spec)
    policy = ContactPolicy.from_settings(settings)
    send_after = policy.next_allowed(max(run_at, now))
    book = CouponBook.from_settings(settings)
    coupon_def = book.get(broadcast.coupon) if broadcast.coupon else None
    run = BroadcastRun(broadcast_id=broadcast.id, run_at=run_at, send_after=send_after, skipped={})
    session.add(run)
    session.flush()
    ref = run_ref(run.id)
    conditions = audience.conditions(session, settings.tz)
    reason = _skip_reason(settings, policy, send_after, coupon_def.tiers if coupon_def else ())
    draw = HoldoutDraw(session, conditions, broadcast.holdout_percent) if broadcast.holdout_percent else None
    # A customer the policy blocks is skipped even when drawn: both groups stay random samples of
    # the customers who could be sent to, so the effect report compares like with like.
    why = case((reason.is_not(None), reason), (Customer.id.in_(draw.drawn()), HELD_OUT), else_=None) if draw \
        else reason
    audience_rows = (select(Customer.id.label("customer_id"), Customer.external_userid, Customer.owner_userid,
                            CustomerTier.rfm_segment, CustomerTier.value_tier, why.label("why"))
                     .select_from(_tiered()).where(*conditions)
                     # evaluated once per customer (SQLite would otherwise inline it at every reference)
                     .cte("audience").prefix_with("MATERIALIZED"))
    text_expr: Any = literal("{}")
    if not content.personal:
        text_expr = _tier_content(session, settings, audience, content, audience_rows.c.rfm_segment,
                                  audience_rows.c.value_tier)
    if session.get_bind().dialect.name == "postgresql":
        text_expr = cast(text_expr, JSON)
    status = case((audience_rows.c.why.is_(None), "pending"), (audience_rows.c.why == HELD_OUT, "held_out"),
                  else_="skipped")
    stamp = literal(now, type_=OutboxMessage.__table__.c.created_at.type)
    session.execute(insert(OutboxMessage).from_select(
        ["dedupe_key", "channel", "customer_id", "recipient", "sender_userid", "trigger_kind", "trigger_ref",
         "content", "status", "reason", "attempts", "scheduled_at", "created_at", "updated_at"],
        select(literal(f"campaign:{run.id}:") + cast(audience_rows.c.customer_id, String), literal("mass_message"),
               audience_rows.c.customer_id, audience_rows.c.external_userid, audience_rows.c.owner_userid,
               literal("campaign"), literal(ref), text_expr, status, audience_rows.c.why, literal(0),
               literal(send_after, type_=OutboxMessage.__table__.c.scheduled_at.type), stamp, stamp)))
    if draw:
        draw.drop()
    if coupon_def is not None or content.personal:
        _render_personal(session, settings, content, ref, coupon_def, book, now)
    _count(session, run, ref)
    return RunPlan(run, True)


def spec_of(broadcast: Broadcast) -> BroadcastSpec:
    return BroadcastSpec(broadcast.name, broadcast.audience, broadcast.templates, broadcast.send_at, broadcast.cron,
                         broadcast.holdout_percent, broadcast.coupon)


def _with_owner(source: Any) -> tuple[Any, ColumnElement[bool]]:
    """``source`` (customers joined to their tiers) outer-joined to the owner's live follow, and the
    condition that there is one. At most one row per customer (staff.userid and (customer, staff) are
    unique), so counts do not change; PostgreSQL can then hash-join instead of probing per customer."""
    owner, follow = aliased(Staff), aliased(Follow)
    joined = source.outerjoin(owner, owner.userid == Customer.owner_userid).outerjoin(
        follow, and_(follow.customer_id == Customer.id, follow.staff_id == owner.id, follow.ended_at.is_(None)))
    return joined, follow.id.is_not(None)


def _tiered(inner: bool = False) -> Any:
    """Customers with their tiers (NULL where a customer has none yet). ``inner``: only tiered customers —
    for an audience with a tier key, which no untiered customer matches; the database may then read the
    narrow tier table first rather than every customer row (SQLite keeps a LEFT JOIN's order)."""
    if inner:
        return Customer.__table__.join(CustomerTier.__table__, CustomerTier.customer_id == Customer.id)
    return Customer.__table__.outerjoin(CustomerTier.__table__, CustomerTier.customer_id == Customer.id)


def _tier_content(session: Session, settings: Settings, audience: Audience, content: Content, segment: Any,
                  tier: Any) -> Any:
    """A CASE giving each (segment, tier) pair of the audience its rendered JSON content: a CASE on the
    tier, inside it one on the segment where the tier's texts differ by segment (each row compares a
    few keys instead of testing every pair)."""
    pairs = session.execute(select(CustomerTier.rfm_segment, CustomerTier.value_tier).select_from(_tiered()).where(
        *audience.conditions(session, settings.tz)).distinct()).all()
    docs: dict[str, dict[str, str]] = defaultdict(dict)
    for segment_value, tier_value in pairs:
        key, text = content.render(segment_value, tier_value)
        docs[tier_value or ""][segment_value or ""] = json.dumps({"text": text, "template": f"broadcast:{key}"},
                                                                 ensure_ascii=False)
    if not docs:
        return literal("{}")
    by_tier = {tier_value: literal(next(iter(by_segment.values()))) if len(set(by_segment.values())) == 1
               else case(by_segment, value=func.coalesce(segment, ""), else_=literal("{}"))
               for tier_value, by_segment in docs.items()}
    return case(by_tier, value=func.coalesce(tier, ""), else_=literal("{}"))


class HoldoutDraw:
    """round(n × percent / 100) customers of each value tier of the audience, drawn at random: each
    customer gets a random key and the smallest keys of each tier are held out.

    Sorting the whole audience by its keys (1M customers: 4–6 s on SQLite) is not needed: only keys
    under a per-tier threshold are kept, in a temporary table, and sorted. The threshold is set so
    that the expected number of candidates exceeds the draw by six standard deviations; the smallest
    keys of a tier are all candidates whenever the tier has at least as many candidates as its draw,
    which is checked, and a tier short of that (about once in 10⁹) is drawn again from all its
    customers. The sample is the same exact, uniform one as sorting everyone would give."""

    MARGIN_SIGMAS = 6

    def __init__(self, session: Session, conditions: list[Any], percent: int) -> None:
        self.session = session
        self.sqlite = session.get_bind().dialect.name == "sqlite"
        self.table = Table("holdout_candidates", MetaData(), Column("customer_id", ROW_ID, primary_key=True),
                           Column("tier", String(32)), Column("draw", Float().with_variant(BigInteger(), "sqlite")),
                           prefixes=["TEMPORARY"])
        self.table.create(session.connection())
        tier = func.coalesce(CustomerTier.value_tier, "")
        sizes = session.execute(select(tier, func.count()).select_from(_tiered())
                                .where(*conditions, _in_key_order()).group_by(tier)).all()
        self.wanted = {name: holdout_size(n, percent) for name, n in sizes if holdout_size(n, percent)}
        keyed = (select(Customer.id, tier.label("tier"), func.random().label("draw")).select_from(_tiered())
                 .where(*conditions, _in_key_order())
                 .offset(0).subquery())  # OFFSET 0: each customer's key drawn once, not once per reference
        thresholds = {name: self._threshold(self.wanted[name], n) for name, n in sizes if name in self.wanted}
        self._fill(keyed, thresholds)
        short = self._short_tiers()
        if short:
            session.execute(self.table.delete().where(self.table.c.tier.in_(short)))
            self._fill(keyed, {name: self._all_keys() for name in short})

    def _threshold(self, wanted: int, size: int) -> Any:
        share = max(0.0, (wanted + self.MARGIN_SIGMAS * math.sqrt(wanted) + 10) / size)
        if share >= 1:
            return self._all_keys()
        # random() is a signed 64-bit integer on SQLite, a float in [0, 1) on PostgreSQL
        return min(int(-2 ** 63 + share * 2 ** 64), 2 ** 63 - 1) if self.sqlite else share

    def _all_keys(self) -> Any:
        return 2 ** 63 - 1 if self.sqlite else 1.0

    def _fill(self, keyed: Any, thresholds: dict[str, Any]) -> None:
        if not thresholds:
            return
        limit = case(*[(keyed.c.tier == name, literal(bound)) for name, bound in thresholds.items()], else_=None)
        kept = select(keyed.c.id, keyed.c.tier, keyed.c.draw).where(keyed.c.draw <= limit)
        self.session.execute(insert(self.table).from_select(["customer_id", "tier", "draw"], kept))

    def _short_tiers(self) -> list[str]:
        c = self.table.c
        found = dict(self.session.execute(select(c.tier, func.count()).group_by(c.tier)).all())
        return [name for name, wanted in self.wanted.items() if found.get(name, 0) < wanted]

    def drawn(self) -> Any:
        """The held-out customer ids (a subquery over the temporary table)."""
        c = self.table.c
        ranked = select(c.customer_id, c.tier, func.row_number().over(partition_by=c.tier, order_by=c.draw).label("rn")
                        ).subquery()
        wanted = case(*[(ranked.c.tier == name, n) for name, n in self.wanted.items()], else_=0) \
            if self.wanted else literal(0)
        return select(ranked.c.customer_id).where(ranked.c.rn <= wanted)

    def drop(self) -> None:
        self.table.drop(self.session.connection())


def _in_key_order() -> ColumnElement[bool]:
    """Always true; it makes SQLite read customers in key order (a rowid range) rather than through a
    smaller covering index in another order — the tier lookups that follow then walk customer_tiers in
    order (1M customers: 0.2–0.5 s against 1.4 s)."""
    return Customer.id >= 0


def _render_personal(session: Session, settings: Settings, content: Content, ref: str, coupon_def: Any,
                     book: CouponBook, now: datetime, chunk: int = 10000) -> None:
    """Templates that name the customer or carry a coupon: rendered per sendable row, in chunks,
    written back with one driver-level executemany per chunk."""
    connection = session.connection()
    mark = "?" if connection.dialect.paramstyle == "qmark" else "%s"
    statement = f"UPDATE outbox_messages SET content = {mark} WHERE id = {mark}"
    last_id = 0
    while True:
        rows = session.execute(
            select(OutboxMessage.id.label("outbox_id"), Customer.id, Customer.name, Customer.external_userid,
                   CustomerTier.value_tier, CustomerTier.rfm_segment, CustomerTier.stage)
            .select_from(OutboxMessage).join(Customer, Customer.id == OutboxMessage.customer_id)
            .outerjoin(CustomerTier, CustomerTier.customer_id == Customer.id)
            .where(OutboxMessage.trigger_ref == ref, OutboxMessage.status == "pending", OutboxMessage.id > last_id)
            .order_by(OutboxMessage.id).limit(chunk)).all()
        if not rows:
            return
        coupons: dict[int, Coupon] = {}
        if coupon_def is not None:
            coupons = issue(session, book, coupon_def, [r.id for r in rows], ref, now)
        updates = []
        for row in rows:
            coupon = coupons.get(row.id)
            key, text = content.render(row.rfm_segment, row.value_tier, row,
                                       coupon_vars(coupon, settings.tz) if coupon else None)
            doc: dict[str, Any] = {"text": text, "template": f"broadcast:{key}"}
            if coupon:
                doc["coupon"] = coupon.code
            updates.append((json.dumps(doc, ensure_ascii=False), row.outbox_id))
        connection.exec_driver_sql(statement, updates)
        last_id = rows[-1].outbox_id


def _count(session: Session, run: BroadcastRun, ref: str) -> None:
    """Totals per status from the (trigger_ref, status) index alone; reasons only for skipped rows."""
    mine = OutboxMessage.trigger_ref == ref
    for status, count in session.execute(select(OutboxMessage.status, func.count()).where(mine)
                                         .group_by(OutboxMessage.status)):
        run.audience += count
        if status == "held_out":
            run.held_out += count
        elif status != "skipped":
            run.to_send += count
    run.skipped = {reason or "skipped": count for reason, count in session.execute(
        select(OutboxMessage.reason, func.count()).where(mine, OutboxMessage.status == "skipped")
        .group_by(OutboxMessage.reason))}
    session.flush()


# ---------------------------------------------------------------- dispatch (scheduled job)


def dispatch_due(session: Session, settings: Settings, now: datetime | None = None) -> list[BroadcastRun]:
    """Plan every broadcast whose run time has come; move cron broadcasts to their next time."""
    now = now or utcnow()
    runs = []
    due = session.scalars(select(Broadcast).where(Broadcast.status == "scheduled", Broadcast.next_run_at <= now)
                          .order_by(Broadcast.next_run_at)).all()
    for broadcast in due:
        assert broadcast.next_run_at is not None
        try:
            with session.begin_nested():
                runs.append(plan_run(session, settings, broadcast, broadcast.next_run_at, now).run)
        except BroadcastError as exc:
            logger.error("broadcast %r cannot run any more: %s", broadcast.name, exc)
            broadcast.status, broadcast.next_run_at = "failed", None
            continue
        except Exception:  # noqa: BLE001 - one broadcast's fault must not hold up the others; tried again next tick
            logger.exception("broadcast %r not planned this time", broadcast.name)
            continue
        if broadcast.cron:
            broadcast.next_run_at = next_cron_time(broadcast.cron, settings, max(now, broadcast.next_run_at))
        else:
            broadcast.status, broadcast.next_run_at = "done", None
    session.flush()
    return runs


# ---------------------------------------------------------------- effect report


@dataclass
class GroupFigures:
    customers: int = 0
    converters: int = 0
    orders: int = 0
    revenue_fen: int = 0
    revenue_sq_fen: int = 0  # Σ (revenue per customer)², for the variance

    @property
    def conversion(self) -> float:
        return self.converters / self.customers if self.customers else 0.0

    @property
    def orders_per_customer(self) -> float:
        return self.orders / self.customers if self.customers else 0.0

    @property
    def revenue_per_customer_fen(self) -> float:
        return self.revenue_fen / self.customers if self.customers else 0.0

    def revenue_variance(self) -> float:
        n = self.customers
        if n < 2:
            return 0.0
        mean = self.revenue_fen / n
        return max((self.revenue_sq_fen - n * mean * mean) / (n - 1), 0.0)


@dataclass
class Lift:
    difference: float
    low: float
    high: float
    relative: float | None


@dataclass
class EffectReport:
    broadcast: str
    runs: int
    days: int
    sent: GroupFigures
    held_out: GroupFigures
    delivered: int
    conversion_lift: Lift | None
    revenue_lift_fen: Lift | None


Z95 = 1.959964


def conversion_lift(sent: GroupFigures, held: GroupFigures) -> Lift | None:
    """Difference in the share who ordered (sent − held out), with Newcombe's hybrid score 95% interval
    (Newcombe 1998, method 10: from each group's Wilson interval). Unlike the Wald interval it stays
    honest for small groups and for shares of 0 or 1, which a tier of a small broadcast often has."""
    if not sent.customers or not held.customers:
        return None
    p1, p2 = sent.conversion, held.conversion
    l1, u1 = wilson_interval(sent.converters, sent.customers)
    l2, u2 = wilson_interval(held.converters, held.customers)
    diff = p1 - p2
    low = diff - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = diff + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return Lift(diff, low, high, (p1 / p2 - 1) if p2 else None)


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for a proportion."""
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def no_revenue_yet(sent: GroupFigures, held: GroupFigures) -> bool:
    """Both groups have customers but neither any revenue yet: no interval then (it would be +0.00 … +0.00,
    which reads as certain when there is no data); the CLI and the console say so instead."""
    return sent.customers > 0 and held.customers > 0 and sent.revenue_fen == 0 and held.revenue_fen == 0


def revenue_lift(sent: GroupFigures, held: GroupFigures) -> Lift | None:
    """Difference in revenue per customer (fen), with a 95% Welch interval; None without the data for one."""
    if sent.customers < 2 or held.customers < 2 or no_revenue_yet(sent, held):
        return None
    m1, m2 = sent.revenue_per_customer_fen, held.revenue_per_customer_fen
    se = math.sqrt(sent.revenue_variance() / sent.customers + held.revenue_variance() / held.customers)
    diff = m1 - m2
    return Lift(diff, diff - Z95 * se, diff + Z95 * se, (m1 / m2 - 1) if m2 else None)


def effect_report(session: Session, broadcast: Broadcast, days: int, now: datetime | None = None) -> EffectReport:
    """效果评估: per customer of each run, paid orders within ``days`` after the run's send time;
    the planned recipients (intent to treat) against the hold-out group."""
    now = now or utcnow()
    groups = {"sent": GroupFigures(), "held_out": GroupFigures()}
    delivered = 0
    runs = session.scalars(select(BroadcastRun).where(BroadcastRun.broadcast_id == broadcast.id)).all()
    for run in runs:
        ref = run_ref(run.id)
        start, end = run.send_after, min(run.send_after + timedelta(days=days), now)
        members = (select(OutboxMessage.customer_id, OutboxMessage.status)
                   .where(OutboxMessage.trigger_ref == ref, OutboxMessage.status != "skipped").subquery())
        per_customer = (select(Order.customer_id, func.count().label("orders"),
                               func.sum(Order.amount_fen).label("revenue"))
                        .where(Order.customer_id.in_(select(members.c.customer_id)), Order.status == "paid",
                               Order.paid_at >= start, Order.paid_at < end)
                        .group_by(Order.customer_id).subquery())
        group = case((members.c.status == "held_out", "held_out"), else_="sent")
        revenue = func.coalesce(per_customer.c.revenue, 0)
        exact = cast(revenue, Numeric(38, 0))  # squares of big spenders' fen overflow BIGINT
        query = (select(group, func.count(), func.count(per_customer.c.customer_id),
                        func.coalesce(func.sum(per_customer.c.orders), 0), func.coalesce(func.sum(revenue), 0),
                        func.coalesce(func.sum(exact * exact), 0))
                 .select_from(members).outerjoin(per_customer, per_customer.c.customer_id == members.c.customer_id)
                 .group_by(group))
        for name, customers, converters, orders, rev, rev_sq in session.execute(query):
            g = groups[name]
            g.customers += customers
            g.converters += converters
            g.orders += int(orders)
            g.revenue_fen += int(rev)
            g.revenue_sq_fen += int(rev_sq)
        delivered += session.scalar(select(func.count()).select_from(OutboxMessage).where(
            OutboxMessage.trigger_ref == ref, OutboxMessage.status.in_(("sent", "confirmed")))) or 0
    sent, held = groups["sent"], groups["held_out"]
    return EffectReport(broadcast.name, len(runs), days, sent, held, delivered, conversion_lift(sent, held),
                        revenue_lift(sent, held))


def broadcast_rows(session: Session) -> list[dict[str, Any]]:
    """For `scrm broadcast list`: each broadcast with its schedule and run totals."""
    totals: dict[int, Counter[str]] = defaultdict(Counter)
    for run in session.scalars(select(BroadcastRun)):
        totals[run.broadcast_id].update({"runs": 1, "to_send": run.to_send, "held_out": run.held_out,
                                         "skipped": sum(run.skipped.values())})
    out = []
    for b in session.scalars(select(Broadcast).order_by(Broadcast.id)):
        out.append({"id": b.id, "name": b.name, "status": b.status, "cron": b.cron, "send_at": b.send_at,
                    "schedule": b.cron or (b.send_at.isoformat() if b.send_at else ""),
                    "next_run_at": b.next_run_at if b.status == "scheduled" else None,
                    "audience": Audience.parse(b.audience).describe() if b.audience is not None else "",
                    "coupon": b.coupon or "", **totals[b.id]})
    return out
