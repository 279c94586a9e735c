"""The greetings & coupons page (``/console/greetings``): this year's holiday calendar with each
greeting rendered per value tier (the template the greeting job would choose, the words a customer of
that tier gets), and every coupon definition with issued / redeemed / expired / withdrawn counts and the revenue
of the orders the redeemed coupons were used on — one aggregate query over the coupons."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from flask import render_template
from sqlalchemy import and_, case, func, select
from sqlalchemy.orm import Session

from bot.campaigns.coupons import CouponBook, CouponDefinition
from bot.campaigns.holidays import calendar
from bot.campaigns.rules import value_tier_names
from bot.core.config import Settings
from bot.models import Coupon, Order
from bot.outbox.messages import TIER_NAMES, MessageTemplates, TemplateMissing, TemplateRefused
from bot.web.console.views import _db, _now, _settings, bp


@dataclass
class GreetingDay:
    day: date
    code: str
    name: str
    enabled: bool
    previews: list[tuple[str, str, str]]  # tier, template path, text (or why it cannot be rendered)


@dataclass
class CouponFigures:
    code: str
    title: str
    terms: str
    valid_days: int
    tiers: tuple[str, ...]
    configured: bool
    issued: int = 0
    outstanding: int = 0
    redeemed: int = 0
    expired: int = 0
    withdrawn: int = 0
    revenue_fen: int = 0
    orders: int = 0
    uses: list[str] = field(default_factory=list)


def greeting_calendar(settings: Settings, year: int) -> list[GreetingDay]:
    templates = MessageTemplates.from_settings(settings)
    enabled = set(settings.greetings.holidays)
    days = []
    for day, holiday in calendar(year):
        previews = []
        for tier in (*value_tier_names(settings), ""):
            try:
                rendered = templates.render("holiday", holiday.code, [tier or None], holiday=holiday.name,
                                            brand=settings.app.brand_name, tier_name=TIER_NAMES.get(tier, ""),
                                            segment_name="")
                previews.append((tier, rendered.template, rendered.text))
            except (TemplateMissing, TemplateRefused) as exc:
                previews.append((tier, "-", f"无法生成：{exc}"))
        days.append(GreetingDay(day, holiday.code, holiday.name, holiday.code in enabled, previews))
    return days


def coupon_figures(session: Session, settings: Settings, now: datetime) -> list[CouponFigures]:
    """Per definition code: one GROUP BY over the coupons, revenue from the paid orders they were used on."""
    book = CouponBook.from_settings(settings)
    rows = {d.code: _from_definition(d, settings) for d in book.definitions.values()}
    expired = case((Coupon.status == "expired", 1), (and_(Coupon.status == "issued", Coupon.expires_at <= now), 1),
                   else_=0)
    outstanding = case((and_(Coupon.status == "issued", Coupon.expires_at > now), 1), else_=0)
    redeemed = case((Coupon.status == "redeemed", 1), else_=0)
    withdrawn = case((Coupon.status == "withdrawn", 1), else_=0)
    order_id = Coupon.order_id
    if session.get_bind().dialect.name == "postgresql":
        order_id = order_id.collate("C")  # orders.order_id is C-collated
    paid = and_(Coupon.status == "redeemed", Order.status == "paid")
    query = (select(Coupon.definition, func.max(Coupon.title), func.count(), func.sum(outstanding),
                    func.sum(redeemed), func.sum(expired), func.sum(withdrawn),
                    func.coalesce(func.sum(case((paid, Order.amount_fen), else_=0)), 0),
                    func.count(case((paid, Order.id))))
             .select_from(Coupon).outerjoin(Order, Order.order_id == order_id)
             .group_by(Coupon.definition))
    for code, title, issued, open_, used, lapsed, pulled, revenue, orders in session.execute(query):
        row = rows.get(code) or CouponFigures(code, title or code, "-", 0, (), configured=False)
        # A withdrawn coupon reached nobody: not counted as issued, shown on its own.
        row.withdrawn = int(pulled or 0)
        row.issued, row.outstanding = issued - row.withdrawn, int(open_ or 0)
        row.redeemed, row.expired = int(used or 0), int(lapsed or 0)
        row.revenue_fen, row.orders = int(revenue or 0), int(orders or 0)
        rows[code] = row
    return sorted(rows.values(), key=lambda r: (not r.configured, r.code))


def _from_definition(d: CouponDefinition, settings: Settings) -> CouponFigures:
    uses = [what for what, code in (("下单后", settings.coupons.post_purchase),
                                    ("生日", settings.greetings.birthday_coupon)) if code == d.code]
    return CouponFigures(d.code, d.title, d.terms(), d.valid_days, d.tiers, configured=True, uses=uses)


@bp.get("/greetings")
def greetings_page() -> Any:
    settings = _settings()
    now = _now()
    year = now.astimezone(settings.tz).year
    with _db().sessions() as s:
        coupons = coupon_figures(s, settings, now)
    return render_template("console/greetings.html", year=year, days=greeting_calendar(settings, year),
                           today=now.astimezone(settings.tz).date(), coupons=coupons,
                           send_at=settings.greetings.send_at, birthday=settings.greetings.birthday)
