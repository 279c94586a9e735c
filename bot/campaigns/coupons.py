"""优惠券: definitions from ``[coupons]``, one unguessable code per customer and reason, and
issue → redeem → expire. Redemption is one conditional UPDATE, so a code is redeemed once even
when two tills try at the same moment; it records an interaction (activity) and the order it was
used on (revenue attribution)."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from sqlalchemy import exists, false, func, select, text, update
from sqlalchemy.orm import Session

from bot.contacts.interactions import add_interaction
from bot.core.times import local_time
from bot.models import AuditEntry, Coupon, Customer, Order, OutboxMessage, utcnow
from segments.money import fen_to_yuan, number_to_fen

logger = logging.getLogger(__name__)

# No look-alikes (0/O, 1/I/L): a code read aloud or typed from a screenshot still works.
ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
DEFINITION_KEYS = {"code", "title", "value", "percent_off", "min_spend", "valid_days", "tiers"}


class CouponError(ValueError):
    """A definition or a request is invalid; the message says which and why."""


@dataclass(frozen=True)
class CouponDefinition:
    code: str
    title: str
    value_fen: int
    percent_off: int
    min_spend_fen: int
    valid_days: int
    tiers: tuple[str, ...]

    @classmethod
    def parse(cls, raw: Any, where: str) -> CouponDefinition:
        if not isinstance(raw, dict):
            raise CouponError(f"{where} must be a table")
        unknown = sorted(set(raw) - DEFINITION_KEYS)
        if unknown:
            raise CouponError(f"{where}: unknown key(s) {unknown}; known: {sorted(DEFINITION_KEYS)}")
        code = raw.get("code")
        if not isinstance(code, str) or not code.replace("_", "").isalnum() or not code.isascii() or len(code) > 64:
            raise CouponError(f"{where}.code must be letters, digits and _ (≤64)")
        try:
            value_fen = number_to_fen(raw.get("value", 0))
            min_spend_fen = number_to_fen(raw.get("min_spend", 0))
        except ValueError as exc:
            raise CouponError(f"{where}: {exc}") from None
        percent_off = raw.get("percent_off", 0)
        if not isinstance(percent_off, int) or not 0 <= percent_off < 100:
            raise CouponError(f"{where}.percent_off must be a whole number 0–99")
        if (value_fen > 0) == (percent_off > 0):
            raise CouponError(f"{where}: give either value (元 off) or percent_off, not both or neither")
        valid_days = raw.get("valid_days", 30)
        if not isinstance(valid_days, int) or valid_days <= 0:
            raise CouponError(f"{where}.valid_days must be a whole number > 0")
        tiers = raw.get("tiers", [])
        if not isinstance(tiers, list) or not all(isinstance(t, str) for t in tiers):
            raise CouponError(f"{where}.tiers must be a list of tier or segment names")
        return cls(code, str(raw.get("title") or code), value_fen, percent_off, min_spend_fen, valid_days,
                   tuple(tiers))

    def allows(self, customer: Any) -> bool:
        return not self.tiers or customer.value_tier in self.tiers or customer.rfm_segment in self.tiers

    def terms(self) -> str:
        off = _off(self.value_fen, self.percent_off)
        return f"满{fen_to_yuan(self.min_spend_fen)}元{off}" if self.min_spend_fen else off


def _off(value_fen: int, percent_off: int) -> str:
    return f"立减{fen_to_yuan(value_fen)}元" if value_fen else f"{100 - percent_off}折"


class CouponBook:
    def __init__(self, definitions: Sequence[CouponDefinition], code_length: int = 12) -> None:
        self.definitions = {d.code: d for d in definitions}
        self.code_length = code_length

    @classmethod
    def from_settings(cls, settings: Any) -> CouponBook:
        c = settings.coupons
        definitions = [CouponDefinition.parse(raw, f"coupons.definitions[{i}]") for i, raw in enumerate(c.definitions)]
        codes = [d.code for d in definitions]
        if len(set(codes)) != len(codes):
            raise CouponError("coupons.definitions: two definitions share a code")
        if not 8 <= c.code_length <= 32:
            raise CouponError("coupons.code_length must be 8–32")
        book = cls(definitions, c.code_length)
        for key, code in (("coupons.post_purchase", c.post_purchase),
                          ("greetings.birthday_coupon", settings.greetings.birthday_coupon)):
            if code:
                book.get(code, key)
        return book

    def get(self, code: str, where: str = "coupon") -> CouponDefinition:
        try:
            return self.definitions[code]
        except KeyError:
            raise CouponError(f"{where}: no coupon definition {code!r} (defined: {sorted(self.definitions)})") from None

    def new_code(self) -> str:
        return "".join(secrets.choice(ALPHABET) for _ in range(self.code_length))


def normalize_code(text: str) -> str:
    """What a customer types → the stored form: upper case, no spaces or dashes."""
    return "".join(ch for ch in text.upper() if ch not in " -\t")


def display_code(code: str) -> str:
    return "-".join(code[i:i + 4] for i in range(0, len(code), 4))


def coupon_vars(coupon: Coupon, tz: Any) -> dict[str, Any]:
    """What a template may say about a coupon."""
    return {"code": display_code(coupon.code), "title": coupon.title, "off": _off(coupon.value_fen, coupon.percent_off),
            "min_spend": fen_to_yuan(coupon.min_spend_fen),
            "expires": coupon.expires_at.astimezone(tz).strftime("%Y-%m-%d")}


@dataclass(frozen=True)
class CouponOffer:
    """A coupon a push carries: issued (once per ``issue_ref``) to each customer the push is planned for
    and the definition allows, never to one whose message is skipped."""

    book: CouponBook
    definition: CouponDefinition
    issue_ref: str


def unissued_vars(definition: CouponDefinition) -> dict[str, Any]:
    """What a skipped push's stored text says in place of a coupon it never got (nothing is issued for a
    message that does not go out)."""
    return {"code": "（未发放）", "title": definition.title, "off": _off(definition.value_fen, definition.percent_off),
            "min_spend": fen_to_yuan(definition.min_spend_fen), "expires": "—"}


def issue(session: Session, book: CouponBook, definition: CouponDefinition, customer_ids: Sequence[int],
          issue_ref: str, now: datetime | None = None) -> dict[int, Coupon]:
    """One coupon per customer for this reason (``issue_ref``); issuing again returns the same coupons."""
    now = now or utcnow()
    found = {c.customer_id: c for c in session.scalars(select(Coupon).where(
        Coupon.definition == definition.code, Coupon.issue_ref == issue_ref,
        Coupon.customer_id.in_(list(customer_ids))))}
    for customer_id in customer_ids:
        if customer_id in found:
            continue
        coupon = Coupon(code=book.new_code(), definition=definition.code, title=definition.title,
                        customer_id=customer_id, issue_ref=issue_ref[:128], value_fen=definition.value_fen,
                        percent_off=definition.percent_off, min_spend_fen=definition.min_spend_fen,
                        issued_at=now, expires_at=now + timedelta(days=definition.valid_days))
        session.add(coupon)
        found[customer_id] = coupon
    session.flush()
    return found


STAFF_ISSUE_ACTION = "sidebar.coupon_issue"
# A mass message in these states has not reached its customer (submitted: the member has not confirmed).
NOT_YET_SENT = ("pending", "sending", "submitted")


@dataclass(frozen=True)
class StaffIssue:
    """A member's one-tap issue: the coupon (new, or the one the same request key already made), or
    why nothing was issued (``refused``), with the member's count for the day after it."""

    coupon: Coupon | None
    created: bool
    issued_today: int
    refused: str = ""


def staff_issue_ref(staff_userid: str, request_key: str) -> str:
    return f"staff:{staff_userid}:{request_key}"[:128]


def staff_actor(staff_userid: str) -> str:
    """The audit log's actor for a WeCom member (operators appear by their console name)."""
    return f"staff:{staff_userid}"[:64]


def issued_by_staff_since(session: Session, staff_userid: str, since: datetime) -> int:
    """Coupons this member issued from the sidebar since ``since`` (their audit entries)."""
    return session.scalar(select(func.count()).select_from(AuditEntry).where(
        AuditEntry.at >= since, AuditEntry.action == STAFF_ISSUE_ACTION,
        AuditEntry.actor == staff_actor(staff_userid))) or 0


def _one_issue_at_a_time(session: Session, staff_userid: str) -> None:
    """Two taps of one member at once must not both pass the daily limit: the count and the issue
    run under a lock until commit (PostgreSQL: an advisory lock per member; SQLite: the database's
    one write lock, taken by a write that changes nothing)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
                        {"key": f"sidebar-coupons:{staff_userid}"})
    else:
        session.execute(update(AuditEntry).where(false()).values(actor=AuditEntry.actor))


def issue_by_staff(session: Session, book: CouponBook, definition: CouponDefinition, customer: Customer,
                   staff_userid: str, request_key: str, *, daily_limit: int, day_start: datetime,
                   now: datetime) -> StaffIssue:
    """Issue ``definition`` to ``customer`` for a member, at most ``daily_limit`` a day (from
    ``day_start``, the member's local midnight). The same ``request_key`` (a double tap, a retried
    request) returns the coupon it made instead of a second one. Each new coupon is audited: who,
    when, which customer and definition."""
    ref = staff_issue_ref(staff_userid, request_key)
    _one_issue_at_a_time(session, staff_userid)
    already = session.scalar(select(Coupon).where(Coupon.definition == definition.code,
                                                  Coupon.customer_id == customer.id, Coupon.issue_ref == ref))
    today = issued_by_staff_since(session, staff_userid, day_start)
    if already is not None:
        return StaffIssue(already, False, today)
    if not definition.allows(customer):
        return StaffIssue(None, False, today, "tier")
    if today >= daily_limit:
        return StaffIssue(None, False, today, "limit")
    coupon = issue(session, book, definition, [customer.id], ref, now)[customer.id]
    session.add(AuditEntry(actor=staff_actor(staff_userid), action=STAFF_ISSUE_ACTION,
                           target=f"customer:{customer.id}", before=None,
                           after={"coupon_id": coupon.id, "definition": definition.code, "source": "staff"}, at=now))
    session.flush()
    logger.info("coupon %s issued from the sidebar by member %s", definition.code, staff_userid)
    return StaffIssue(coupon, True, today + 1)


@dataclass(frozen=True)
class Redemption:
    ok: bool
    reason: str
    coupon: Coupon | None = None


def redeem(session: Session, code_text: str, *, order_id: str | None = None, amount_fen: int | None = None,
           now: datetime | None = None, tag_rules: Any = None, push_tags: bool = True,
           tz: tzinfo = UTC) -> Redemption:
    """Redeem a code once. ``order_id`` links the order (a paid one of the coupon's customer; its amount, not a
    given one, checks the minimum spend); ``amount_fen`` is the spend when no order is known yet. Times in
    the reasons are shown in ``tz``."""
    now = now or utcnow()
    code = normalize_code(code_text)
    coupon = session.scalar(select(Coupon).where(Coupon.code == code)) if code else None
    if coupon is None:
        return Redemption(False, "unknown coupon code")
    if coupon.status == "redeemed":
        return Redemption(False, f"already redeemed at {local_time(coupon.redeemed_at, tz)}"
                                 f"{f' on order {coupon.order_id}' if coupon.order_id else ''}", coupon)
    if coupon.status == "withdrawn":
        return Redemption(False, "withdrawn: the message that carried it did not go out", coupon)
    if coupon.status == "expired" or coupon.expires_at <= now:
        return Redemption(False, f"expired on {local_time(coupon.expires_at, tz)}", coupon)
    if order_id:
        order = session.scalar(select(Order).where(Order.order_id == order_id))
        if order is not None:
            if order.customer_id != coupon.customer_id:
                return Redemption(False, "the order belongs to another customer", coupon)
            if order.status != "paid":
                return Redemption(False, f"the order is {order.status}, not paid: it meets no minimum spend", coupon)
            amount_fen = order.amount_fen  # the order's own amount, whatever the caller says it was
    if coupon.min_spend_fen and (amount_fen is None or amount_fen < coupon.min_spend_fen):
        spent = "no amount given" if amount_fen is None else f"spend {fen_to_yuan(amount_fen)}元"
        return Redemption(False, f"minimum spend {fen_to_yuan(coupon.min_spend_fen)}元 not met ({spent})", coupon)
    claimed = session.execute(
        update(Coupon).where(Coupon.id == coupon.id, Coupon.status == "issued", Coupon.expires_at > now)
        .values(status="redeemed", redeemed_at=now, order_id=order_id)
        .execution_options(synchronize_session=False)).rowcount
    if claimed != 1:
        session.refresh(coupon)
        if coupon.status == "withdrawn":  # its message failed meanwhile
            return Redemption(False, "withdrawn: the message that carried it did not go out", coupon)
        return Redemption(False, "already redeemed", coupon)
    session.refresh(coupon)
    customer = session.get(Customer, coupon.customer_id)
    if customer is not None:
        add_interaction(session, customer, "coupon_redeem", f"coupon:{coupon.code}", now,
                        detail={"coupon": coupon.definition, "order_id": order_id})
        if tag_rules is not None:
            from bot.tagging.system import apply_rules

            apply_rules(session, tag_rules, customer.id, "coupon_redeemed", push=push_tags)
    logger.info("coupon %s… (%s) redeemed by customer %s", coupon.code[:4], coupon.definition, coupon.customer_id)
    return Redemption(True, "redeemed", coupon)


@dataclass(frozen=True)
class Expiry:
    expired: int
    withdrawn: int


def expire_coupons(session: Session, now: datetime | None = None) -> Expiry:
    """Unused coupons past their date become expired; those whose message was still waiting for its
    member to confirm it (or to be submitted) reached nobody, so they are withdrawn instead."""
    now = now or utcnow()
    due = (Coupon.status == "issued", Coupon.expires_at <= now)
    # Correlated on the customer (indexed): only the due coupons' own messages are read, however many
    # unconfirmed mass messages the outbox keeps.
    unsent = exists().where(OutboxMessage.customer_id == Coupon.customer_id,
                            OutboxMessage.channel == "mass_message", OutboxMessage.status.in_(NOT_YET_SENT),
                            OutboxMessage.content["coupon"].as_string() == Coupon.code)
    withdrawn = session.execute(update(Coupon).where(*due, unsent).values(status="withdrawn")
                                .execution_options(synchronize_session=False)).rowcount or 0
    if withdrawn:
        logger.info("%d coupon(s) withdrawn at expiry: their members never sent the messages carrying them", withdrawn)
    count = session.scalar(select(func.count()).select_from(Coupon).where(*due)) or 0
    if count:
        session.execute(update(Coupon).where(*due).values(status="expired"))
    return Expiry(count, withdrawn)
