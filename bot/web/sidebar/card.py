"""What the sidebar shows about one customer, read in a handful of indexed queries (no Flask here):
who may see it, the card itself, and the next best action with its ready text."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from datetime import date, datetime
from zoneinfo import ZoneInfo

from jinja2 import TemplateError
from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.campaigns.automation import PendingStep, pending_steps
from bot.campaigns.coupons import CouponBook
from bot.campaigns.group_welcome import tier_group
from bot.campaigns.rules import CampaignRules
from bot.core.config import Settings
from bot.models import Coupon, Customer, CustomerTag, Follow, Interaction, Order, Staff, Tag, TagGroup, TierChange
from bot.outbox.messages import (
    STAGE_NAMES,
    TIER_NAMES,
    MessageTemplates,
    TemplateMissing,
    TemplateRefused,
    customer_vars,
    refusal,
    tier_keys,
)
from bot.outbox.quick_replies import QuickReplyError, RenderedReply, quick_replies_for
from segments.explain import explanation, stored_stats
from segments.money import fen_to_yuan
from segments.policy import TierPolicy
from segments.predict_view import prediction_view
from segments.rfm import SEGMENT_NAMES

logger = logging.getLogger(__name__)
ENGAGEMENT_NAMES = {"active": "活跃", "silent": "沉默", "churned": "流失"}
ACTIVITY_NAMES = {"high": "高", "mid": "中", "low": "低"}
INTERACTION_NAMES = {"kf_message": "客服消息", "moment_like": "朋友圈点赞", "moment_comment": "朋友圈评论",
                     "campaign_reply": "活动回复", "coupon_redeem": "用券", "added": "添加好友",
                     "group_join": "入群", "group_leave": "退群"}
COUPON_STATUS_NAMES = {"issued": "未使用", "redeemed": "已使用", "expired": "已过期", "withdrawn": "未送达，已撤回"}
DIMENSION_NAMES = {"value_tier": "价值分层", "rfm_segment": "RFM 分群", "stage": "阶段", "engagement": "活跃状态",
                   "activity": "互动活跃度"}
ADD_WAY_NAMES = {0: "未知来源", 1: "扫描二维码", 2: "搜索手机号", 3: "名片分享", 4: "群聊", 5: "手机通讯录",
                 6: "微信联系人", 8: "第三方售前客服", 9: "搜索邮箱", 10: "视频号", 11: "日程参与人",
                 12: "会议参与人", 13: "微信好友的客户", 14: "智能客服", 15: "门店客服", 16: "客户群聊",
                 201: "内部成员共享", 202: "管理员/负责人分配"}
# First match wins: (dimension, value, template name under templates/messages/nba/, what staff do).
NEXT_BEST_ACTIONS: tuple[tuple[str, str, str, str], ...] = (
    ("rfm_segment", "important_value", "vip", "专属客服 · 会员日邀请"),
    ("rfm_segment", "important_retain", "win_back", "挽留：送回归礼券"),
    ("value_tier", "high", "vip", "专属客服 · 会员日邀请"),
    ("value_tier", "mid", "flash", "限时折扣提醒"),
)
DEFAULT_ACTION = ("content", "日常内容关怀")
# A customer who sent 退订 gets no promotion from the sidebar either: service only, whatever the tier.
OPTED_OUT_ACTION = ("service", "已退订营销消息：只做服务，不推促销")


def customer_digest(external_userid: str) -> str:
    """A customer reference for logs that names no one."""
    return hashlib.sha256(external_userid.encode("utf-8")).hexdigest()[:12]


def may_view(session: Session, staff_userid: str, customer_id: int, managers: list[str]) -> bool:
    """Staff see customers they follow now; configured managers see every customer."""
    if staff_userid in managers:
        return True
    follows = (select(Follow.id).join(Staff, Staff.id == Follow.staff_id)
               .where(Follow.customer_id == customer_id, Staff.userid == staff_userid, Follow.ended_at.is_(None)))
    return session.scalar(follows.limit(1)) is not None


@dataclass(frozen=True)
class TierRow:
    label: str
    value: str
    why: str


@dataclass(frozen=True)
class TagOption:
    id: int
    name: str
    checked: bool


@dataclass(frozen=True)
class TagGroupView:
    name: str
    tags: list[TagOption]


@dataclass(frozen=True)
class NextBestAction:
    title: str
    template: str
    text: str


@dataclass(frozen=True)
class CouponOption:
    code: str
    title: str
    terms: str
    valid_days: int


@dataclass(frozen=True)
class StepView:
    due: str
    what: str
    coupon: str
    overdue: bool


@dataclass
class CustomerCard:
    external_userid: str
    name: str
    remark: str
    owner: str
    added_at: str
    channel: str
    opted_out: bool
    tiers: list[TierRow] = field(default_factory=list)
    changes: list[dict[str, str]] = field(default_factory=list)
    orders: list[dict[str, str]] = field(default_factory=list)
    coupons: list[dict[str, str]] = field(default_factory=list)
    interactions: list[dict[str, str]] = field(default_factory=list)
    tag_groups: list[TagGroupView] = field(default_factory=list)
    action: NextBestAction | None = None
    quick_replies: list[RenderedReply] = field(default_factory=list)
    quick_replies_broken: bool = False
    coupon_options: list[CouponOption] = field(default_factory=list)
    steps: list[StepView] = field(default_factory=list)


def find_customer(session: Session, external_userid: str) -> Customer | None:
    return session.scalar(select(Customer).where(Customer.external_userid == external_userid))


@dataclass(frozen=True)
class CardSources:
    """What a card reads besides the database, built once from the settings (parsing the campaign
    rules checks every template they name: too slow to repeat per card)."""

    templates: MessageTemplates
    rules: CampaignRules
    book: CouponBook

    @classmethod
    def from_settings(cls, settings: Settings) -> CardSources:
        return cls(MessageTemplates.from_settings(settings), CampaignRules.from_settings(settings),
                   CouponBook.from_settings(settings))


def build_card(session: Session, customer: Customer, staff_userid: str, settings: Settings,
               now: datetime, sources: CardSources) -> CustomerCard:
    tz = settings.tz
    as_of = now.astimezone(tz).date()
    follow = _follow_shown(session, customer, staff_userid)
    owner = session.scalar(select(Staff.name).where(Staff.userid == customer.owner_userid)) \
        if customer.owner_userid else None
    card = CustomerCard(
        external_userid=customer.external_userid,
        name=customer.name or f"客户…{customer.external_userid[-6:]}",
        remark=follow.remark if follow else "",
        owner=owner or customer.owner_userid or "—",
        added_at=_day(follow.added_at, tz) if follow and follow.added_at else "—",
        channel=_channel(follow),
        opted_out=customer.opted_out,
    )
    card.tiers = tier_rows(session, customer, settings, as_of)
    card.changes = _changes(session, customer.id)
    card.orders = _orders(session, customer.id, tz)
    card.coupons = _coupons(session, customer.id, tz)
    card.interactions = _interactions(session, customer.id, tz)
    card.tag_groups = tag_groups(session, customer.id)
    card.action = next_best_action(customer, sources.templates, settings.app.brand_name,
                                   tier_group(session, tier_keys(customer)))
    card.quick_replies, card.quick_replies_broken = _quick_replies(customer, sources.templates, settings)
    card.coupon_options = coupon_options(sources.book, customer)
    card.steps = [_step_view(step, now, tz)
                  for step in pending_steps(session, settings, customer, now, sources.rules, sources.book)]
    return card


def _quick_replies(customer: Customer, templates: MessageTemplates,
                   settings: Settings) -> tuple[list[RenderedReply], bool]:
    """The 话术库 for this customer; an operator's broken edit (checked at start, but files change while
    the service runs) costs the library, not the card."""
    try:
        return quick_replies_for(customer, templates, settings.app.brand_name), False
    except (QuickReplyError, TemplateError, TemplateMissing, TemplateRefused, OverflowError) as exc:
        logger.warning("sidebar: quick replies unavailable: %s", refusal(exc))
        return [], True


def coupon_options(book: CouponBook, customer: Customer) -> list[CouponOption]:
    """The coupon definitions this customer's value tier or RFM segment may have."""
    return [CouponOption(d.code, d.title, d.terms(), d.valid_days) for d in book.definitions.values()
            if d.allows(customer)]


def _step_view(step: PendingStep, now: datetime, tz: ZoneInfo) -> StepView:
    return StepView(_day(step.due_at, tz), f"{step.flow} 第 {step.day} 天 · {step.template}", step.coupon,
                    step.due_at <= now)


def _follow_shown(session: Session, customer: Customer, staff_userid: str) -> Follow | None:
    """The viewer's own follow (their remark, their channel), else the owner's, else the first."""
    rows = session.execute(select(Follow, Staff.userid).join(Staff, Staff.id == Follow.staff_id)
                           .where(Follow.customer_id == customer.id).order_by(Follow.added_at, Follow.id)).all()
    by_userid = {userid: f for f, userid in rows}
    return by_userid.get(staff_userid) or by_userid.get(customer.owner_userid or "") or (rows[0][0] if rows else None)


def _channel(follow: Follow | None) -> str:
    if follow is None:
        return "—"
    how = ADD_WAY_NAMES.get(follow.add_way or 0, "其他")
    return f"{how} · 渠道 {follow.state}" if follow.state else how


def tier_rows(session: Session, customer: Customer, settings: Settings, as_of: date) -> list[TierRow]:
    policy = TierPolicy.of(settings)
    why = explanation(session, customer, policy, as_of, settings.tz, stats=stored_stats(session),
                      tier_names=TIER_NAMES).why_zh
    scores = "/".join(str(s) if s is not None else "-" for s in (customer.r_score, customer.f_score, customer.m_score))
    rfm_why = " · ".join(why[k] for k in ("r", "f", "m", "rfm_segment") if k in why)
    return [
        TierRow("价值分层", TIER_NAMES.get(customer.value_tier or "", "未分层"), why["value_tier"]),
        TierRow("RFM 分群", f"{SEGMENT_NAMES.get(customer.rfm_segment or '', '无')}（R/F/M {scores}）", rfm_why),
        TierRow("阶段", STAGE_NAMES.get(customer.stage or "", customer.stage or "—"), why["stage"]),
        TierRow("活跃状态", ENGAGEMENT_NAMES.get(customer.engagement or "", "—"), why["engagement"]),
        TierRow("互动活跃度", ACTIVITY_NAMES.get(customer.activity or "", "—"), why["activity"]),
        TierRow("客户评分", f"{customer.score}/100" if customer.score is not None else "—",
                "R/F/M 分数按权重 {}/{}/{} 折算为 0–100".format(*policy.score_weights)),
        *prediction_rows(session, customer.id),
    ]


def prediction_rows(session: Session, customer_id: int) -> list[TierRow]:
    """Churn risk and predicted value from the latest fit (BG/NBD + Gamma-Gamma), when it has one."""
    view = prediction_view(session, customer_id)
    if view is None:
        return [TierRow("流失风险", "—", "暂无预测（上次预测时无已付款订单，或尚未运行 scrm predict fit）")]
    return [TierRow("流失风险", view.churn, f"1 − P(alive)：高 ≥ 75%，中 ≥ 50% · {view.run}"),
            TierRow("预测价值", view.value, view.detail)]


def _changes(session: Session, customer_id: int, limit: int = 5) -> list[dict[str, str]]:
    rows = session.scalars(select(TierChange).where(TierChange.customer_id == customer_id)
                           .order_by(TierChange.as_of.desc(), TierChange.id.desc()).limit(limit))
    return [{"day": c.as_of.isoformat(), "what": DIMENSION_NAMES.get(c.dimension, c.dimension),
             "change": f"{_value_name(c.dimension, c.from_value)} → {_value_name(c.dimension, c.to_value)}"}
            for c in rows]


def _value_name(dimension: str, value: str | None) -> str:
    names = {"value_tier": TIER_NAMES, "rfm_segment": SEGMENT_NAMES, "stage": STAGE_NAMES,
             "engagement": ENGAGEMENT_NAMES, "activity": ACTIVITY_NAMES}.get(dimension, {})
    return names.get(value or "", value or "—")


def _orders(session: Session, customer_id: int, tz: ZoneInfo, limit: int = 5) -> list[dict[str, str]]:
    rows = session.scalars(select(Order).where(Order.customer_id == customer_id)
                           .order_by(Order.paid_at.desc()).limit(limit))
    return [{"day": _day(o.paid_at, tz), "amount": f"¥{fen_to_yuan(o.amount_fen)}",
             "status": {"paid": "已付款", "refunded": "已退款"}.get(o.status, o.status)} for o in rows]


def _coupons(session: Session, customer_id: int, tz: ZoneInfo, limit: int = 5) -> list[dict[str, str]]:
    rows = session.scalars(select(Coupon).where(Coupon.customer_id == customer_id)
                           .order_by(Coupon.issued_at.desc()).limit(limit))
    return [{"title": c.title, "issued": _day(c.issued_at, tz),
             "status": COUPON_STATUS_NAMES.get(c.status, c.status)} for c in rows]


def _interactions(session: Session, customer_id: int, tz: ZoneInfo, limit: int = 8) -> list[dict[str, str]]:
    rows = session.scalars(select(Interaction).where(Interaction.customer_id == customer_id)
                           .order_by(Interaction.occurred_at.desc()).limit(limit))
    return [{"when": _moment(i.occurred_at, tz), "what": INTERACTION_NAMES.get(i.kind, i.kind)} for i in rows]


def tag_groups(session: Session, customer_id: int) -> list[TagGroupView]:
    live = set(session.scalars(select(CustomerTag.tag_id).where(CustomerTag.customer_id == customer_id,
                                                                CustomerTag.removed_at.is_(None))))
    rows = session.execute(select(TagGroup.name, Tag.id, Tag.name).join(Tag, Tag.group_id == TagGroup.id)
                           .where(TagGroup.deleted.is_(False), Tag.deleted.is_(False))
                           .order_by(TagGroup.order.desc(), TagGroup.name, Tag.order.desc(), Tag.name)).all()
    groups: dict[str, list[TagOption]] = {}
    for group, tag_id, name in rows:
        groups.setdefault(group, []).append(TagOption(tag_id, name, tag_id in live))
    return [TagGroupView(name, tags) for name, tags in groups.items()]


def next_best_action(customer: Customer, templates: MessageTemplates, brand: str,
                     group: dict[str, str] | None = None) -> NextBestAction:
    """The first matching action's ready text; ``group`` (the customer's tier's group with a join code)
    lets the text invite them to it."""
    name, title = OPTED_OUT_ACTION if customer.opted_out else DEFAULT_ACTION
    if not customer.opted_out:
        for dimension, value, template, what in NEXT_BEST_ACTIONS:
            if getattr(customer, dimension) == value:
                name, title = template, what
                break
    rendered = templates.render("nba", name, tier_keys(customer), customer=customer_vars(customer), brand=brand,
                                tier_group=group)
    return NextBestAction(title, rendered.template, rendered.text)


def _day(moment: datetime, tz: ZoneInfo) -> str:
    return _local(moment, tz).strftime("%Y-%m-%d")


def _moment(moment: datetime, tz: ZoneInfo) -> str:
    return _local(moment, tz).strftime("%m-%d %H:%M")


def _local(moment: datetime, tz: ZoneInfo) -> datetime:
    return moment.astimezone(tz)
