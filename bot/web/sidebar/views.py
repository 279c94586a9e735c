"""``/sidebar/``: the page WeCom's chat toolbar opens, its OAuth2 return, the customer card it loads
for the chat's customer, and tag changes. Every view answers for the signed-in member only, and a
customer only after checking the member follows them (or is a manager)."""

from __future__ import annotations

import logging
import re
import secrets
from datetime import datetime
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from flask import Blueprint, Flask, Response, current_app, jsonify, redirect, render_template, request
from jinja2 import TemplateError
from sqlalchemy import select
from wechatpy.exceptions import WeChatClientException
from werkzeug.exceptions import RequestEntityTooLarge

from bot.campaigns.coupons import coupon_vars, issue_by_staff, issued_by_staff_since
from bot.contacts.customers import opted_out_by_customer, set_opted_out
from bot.core.config import Settings
from bot.core.db import MAX_ROW_ID
from bot.core.times import zone_name
from bot.models import Customer, Tag, TagGroup
from bot.outbox.messages import TemplateMissing, TemplateRefused, customer_vars, refusal, tier_keys
from bot.tagging.rules import RuleError, TagRules, parse_ref
from bot.tagging.sync import push_pending
from bot.tagging.system import canonical_ref, ensure_tag, tag_customer, untag_customer
from bot.web.live import current_settings
from bot.web.logpaths import logged_path
from bot.web.sidebar.card import CardSources, build_card, customer_digest, find_customer, may_view, tag_groups
from bot.web.sidebar.identity import (
    Member,
    SignInRefused,
    configure_session,
    csrf_ok,
    current_member,
    finish_sign_in,
    page_url,
    sign_in_redirect,
)
from bot.wecom.api import jsapi_signature
from segments.policy import local_midnight_utc

logger = logging.getLogger(__name__)
bp = Blueprint("sidebar", __name__, url_prefix="/sidebar", template_folder="templates", static_folder="static")
# What the page asks WeCom for: getContext and getCurExternalContact need the app identity (agentConfig).
JS_API_LIST = ["getContext", "getCurExternalContact", "sendChatMessage"]
_EXTERNAL_USERID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_REQUEST_KEY = re.compile(r"[A-Za-z0-9_-]{8,64}")
_REFUSALS = {400: "客户标识无效", 404: "系统里还没有这位客户", 403: "无权为该客户发券"}


# The page's JSON bodies are a tag id or a coupon definition: a few hundred bytes.
MAX_BODY_BYTES = 64 * 1024


def init_app(app: Flask, settings: Settings) -> None:
    configure_session(app, settings)
    app.register_blueprint(bp)


@bp.before_request
def _bound_body() -> None:
    request.max_content_length = MAX_BODY_BYTES


@bp.errorhandler(RequestEntityTooLarge)
def _too_large(_exc: RequestEntityTooLarge) -> tuple[Response, int]:
    logger.warning("sidebar: %s %s refused: body larger than %d bytes", request.method, logged_path(),
                   MAX_BODY_BYTES)
    return jsonify(error="请求过大"), 413


def _settings() -> Settings:
    return current_settings()


def _now() -> datetime:
    return current_app.extensions["scrm.clock"]()


def _clients() -> Any:
    return current_app.extensions["scrm.processor"].clients


@bp.after_request
def _headers(response: Response) -> Response:
    """No CDN: scripts and styles from here, plus WeCom's own JS-SDK (the one script WeCom requires
    from its host). Nothing with a customer's data is cached."""
    jssdk = urlsplit(_settings().sidebar.jssdk_url)
    jssdk_origin = f"{jssdk.scheme}://{jssdk.netloc}"
    response.headers["Content-Security-Policy"] = (
        f"default-src 'self'; script-src 'self' {jssdk_origin}; connect-src 'self' {jssdk_origin}; "
        "img-src 'self' data:; style-src 'self'; base-uri 'none'; form-action 'self'")
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    if request.endpoint != "sidebar.static":
        response.headers["Cache-Control"] = "no-store"
    return response


def _message(status: int, title: str, hint: str) -> tuple[str, int]:
    return render_template("sidebar/message.html", title=title, hint=hint), status


@bp.get("/")
def page() -> Any:
    """The sidebar itself: signed JS-SDK registration for this exact URL, then the JS finds the chat's customer."""
    member = current_member()
    if member is None:
        return redirect(sign_in_redirect(request.full_path))
    settings, clients = _settings(), _clients()
    if clients is None:
        return _message(503, "侧边栏尚未配置", "管理员需要在配置中填写 wecom.corp_id、agent_id 和应用 secret。")
    try:
        corp_ticket = clients.app.jsapi.get_jsapi_ticket()
        agent_ticket = clients.app.jsapi.get_agent_jsapi_ticket(settings.wecom.agent_id)
    except WeChatClientException as exc:
        logger.warning("sidebar: JS-SDK ticket fetch failed with errcode %s", exc.errcode)
        return _message(503, "暂时无法连接企业微信", f"获取 JS-SDK 票据失败（错误 {exc.errcode}），请稍后重新打开。")
    url, timestamp, nonce = page_url(), int(_now().timestamp()), secrets.token_hex(8)
    registration = {
        "corpId": settings.wecom.corp_id, "agentId": settings.wecom.agent_id, "timestamp": timestamp,
        "nonceStr": nonce, "jsApiList": JS_API_LIST,
        "signature": jsapi_signature(corp_ticket, nonce, timestamp, url),
        "agentSignature": jsapi_signature(agent_ticket, nonce, timestamp, url),
    }
    return render_template("sidebar/page.html", registration=registration, csrf=member.csrf,
                           jssdk_url=settings.sidebar.jssdk_url, userid=member.userid)


@bp.get("/oauth")
def oauth_return() -> Any:
    clients = _clients()
    if clients is None:
        return _message(503, "侧边栏尚未配置", "管理员需要在配置中填写 wecom.corp_id、agent_id 和应用 secret。")
    try:
        next_path = finish_sign_in(request.args.get("code", ""), request.args.get("state", ""), clients.app.oauth)
    except SignInRefused as refused:
        return _message(refused.status, refused.title, refused.hint)
    return redirect(next_path)


def _member_or_401() -> Member | tuple[str, int]:
    member = current_member()
    if member is None:
        return _message(401, "登录已过期", "请关闭侧边栏后重新打开。")
    return member


def _allowed_customer(session: Any, member: Member, external_userid: str) -> Customer | tuple[str, int]:
    """The customer, if this member may act on them; else the refusal page (and a log line naming no one)."""
    if not _EXTERNAL_USERID.fullmatch(external_userid):
        logger.info("sidebar: malformed customer id from member %s", member.userid)
        return _message(400, "客户标识无效", "请从客户聊天的工具栏打开侧边栏。")
    customer = find_customer(session, external_userid)
    if customer is None:
        return _message(404, "系统里还没有这位客户", "客户资料同步后即可查看（管理员可运行 scrm sync contacts）。")
    if not may_view(session, member.userid, customer.id, _settings().sidebar.managers):
        logger.warning("sidebar: member %s refused customer %s (not a follower, not a manager)",
                       member.userid, customer_digest(external_userid))
        return _message(403, "无权查看该客户", "只能查看自己跟进的客户；需要查看全部客户请联系管理员。")
    return customer


@bp.get("/customer/<external_userid>")
def customer_card(external_userid: str) -> Any:
    """The card for the chat's customer, as an HTML fragment the page puts in place."""
    member = _member_or_401()
    if not isinstance(member, Member):
        return member
    settings = _settings()
    with current_app.extensions["scrm.db"].begin() as session:
        customer = _allowed_customer(session, member, external_userid)
        if not isinstance(customer, Customer):
            return customer
        now = _now()
        card = build_card(session, customer, member.userid, settings, now, _sources())
        issued_today = issued_by_staff_since(session, member.userid, _day_start(now))
        can_create = member.userid in settings.sidebar.tag_creators
        return render_template("sidebar/card.html", card=card, can_create_tags=can_create,
                               issued_today=issued_today, coupon_limit=settings.sidebar.daily_coupon_limit,
                               zone=zone_name(settings.tz))


def _sources() -> CardSources:
    """Built once per app: Jinja2 then compiles each template once and still notices an operator's
    edit (it checks the file's time on use); the campaign rules and coupons come from the settings."""
    sources = current_app.extensions.get("sidebar.sources")
    if sources is None:
        sources = current_app.extensions["sidebar.sources"] = CardSources.from_settings(_settings())
    return sources


def _day_start(now: datetime) -> datetime:
    """The member's day for the coupon limit: since local midnight."""
    return local_midnight_utc(now.astimezone(_settings().tz).date(), _settings().tz)


@bp.post("/customer/<external_userid>/coupons")
def issue_coupon(external_userid: str) -> Any:
    """``{"definition": "VIP", "key": "<random per tap>"}``: one coupon of a definition the customer's
    tier may have, within the member's daily limit; the same key returns the coupon it made."""
    member = _member_or_401()
    if not isinstance(member, Member):
        return jsonify(error="登录已过期，请重新打开侧边栏"), 401
    if not csrf_ok(member):
        logger.warning("sidebar: coupon issue by member %s without a valid CSRF token", member.userid)
        return jsonify(error="页面已过期，请刷新后重试"), 403
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("definition"), str) \
            or not isinstance(body.get("key"), str) or not _REQUEST_KEY.fullmatch(body["key"]):
        return jsonify(error="请求格式错误"), 400
    settings, now = _settings(), _now()
    limit = settings.sidebar.daily_coupon_limit
    book = _sources().book
    definition = book.definitions.get(body["definition"])
    if definition is None:
        return jsonify(error="没有这种优惠券"), 400
    with current_app.extensions["scrm.db"].begin() as session:
        customer = _allowed_customer(session, member, external_userid)
        if not isinstance(customer, Customer):
            return jsonify(error=_REFUSALS.get(customer[1], "无权为该客户发券")), customer[1]
        result = issue_by_staff(session, book, definition, customer, member.userid, body["key"],
                                daily_limit=limit, day_start=_day_start(now), now=now)
        if result.refused == "tier":
            return jsonify(error=f"该客户的分层不能领取「{definition.title}」"), 403
        if limit == 0 and result.coupon is None:
            return jsonify(error="从侧边栏发券未开启（sidebar.daily_coupon_limit = 0），未发放。", issued_today=0,
                           limit=0), 429
        if result.refused == "limit" or result.coupon is None:
            logger.info("sidebar: member %s reached the daily coupon limit (%s)", member.userid, limit)
            return jsonify(error=f"今天已发 {result.issued_today} 张，达到每人每日 {limit} 张的上限，未发放。"
                                 "明天再发，或请管理员调整 sidebar.daily_coupon_limit。",
                           issued_today=result.issued_today, limit=limit), 429
        coupon, names = coupon_vars(result.coupon, settings.tz), customer_vars(customer)
        keys = tier_keys(customer)
    return jsonify(created=result.created, code=coupon["code"], title=coupon["title"], expires=coupon["expires"],
                   text=_coupon_text(definition.code, keys, names, coupon), issued_today=result.issued_today,
                   limit=limit)


def _coupon_text(code: str, keys: list[str], names: dict[str, Any], coupon: dict[str, Any]) -> str:
    """The ready message for the chat (coupon/<code>, else coupon/default); "" when an operator's
    template cannot render: the coupon stands, staff read its code from the page."""
    try:
        return _sources().templates.render("coupon", code.lower(), keys, customer=names,
                                           brand=_settings().app.brand_name, coupon=coupon).text
    except (TemplateError, TemplateMissing, TemplateRefused, OverflowError) as exc:
        logger.warning("sidebar: coupon message unavailable: %s", refusal(exc))
        return ""


class _Switch(NamedTuple):
    member: Member
    body: dict[str, Any]


def _switch_request(what: str, switch: str) -> _Switch | Any:
    """A signed-in member's change with a valid CSRF token and a JSON body whose ``switch`` is a boolean,
    or the refusal to answer with (401 page, 403 or 400 JSON)."""
    member = _member_or_401()
    if not isinstance(member, Member):
        return member
    if not csrf_ok(member):
        logger.warning("sidebar: %s by member %s without a valid CSRF token", what, member.userid)
        return jsonify(error="页面已过期，请刷新后重试"), 403
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get(switch), bool):
        return jsonify(error="请求格式错误"), 400
    return _Switch(member, body)


@bp.post("/customer/<external_userid>/tags")
def change_tag(external_userid: str) -> Any:
    """``{"tag_id": n, "checked": bool}`` or ``{"name": "组/标签", "checked": true}``: saved with the
    member as source, then pushed to WeCom (mark_tag); a push that fails is retried by the tag job."""
    checked = _switch_request("tag change", "checked")
    if not isinstance(checked, _Switch):
        return checked
    member, body = checked
    settings = _settings()
    with current_app.extensions["scrm.db"].begin() as session:
        customer = _allowed_customer(session, member, external_userid)
        if not isinstance(customer, Customer):
            return jsonify(error="无权修改该客户"), customer[1]
        tag = _tag_from_request(session, body, member, settings)
        if isinstance(tag, tuple):
            return jsonify(error=tag[0]), tag[1]
        push = settings.tags.push_to_wecom
        if body["checked"]:
            tag_customer(session, customer.id, tag, source="staff", added_by=member.userid, push=push, at=_now())
        else:
            untag_customer(session, customer.id, tag, removed_by=member.userid, push=push)
        customer_id, tag_id = customer.id, tag.id
    pushed = _push_now(customer_id) if settings.tags.push_to_wecom else False
    with current_app.extensions["scrm.db"].begin() as session:
        checked = any(t.id == tag_id and t.checked for g in tag_groups(session, customer_id) for t in g.tags)
    return jsonify(tag_id=tag_id, checked=checked, pushed=pushed)


@bp.post("/customer/<external_userid>/opt-out")
def change_opt_out(external_userid: str) -> Any:
    """``{"opted_out": bool}``: a customer who answered 退订 in the member's own chat (not 微信客服, where
    the word is caught by itself) is switched off broadcasts and pushes here, or back on. Back on only
    when a member or operator recorded the opt-out: a customer's own 退订 in 微信客服 is undone by the
    customer alone (409, the message says how)."""
    checked = _switch_request("opt-out change", "opted_out")
    if not isinstance(checked, _Switch):
        return checked
    member, body = checked
    with current_app.extensions["scrm.db"].begin() as session:
        customer = _allowed_customer(session, member, external_userid)
        if not isinstance(customer, Customer):
            return jsonify(error="无权修改该客户"), customer[1]
        if not body["opted_out"] and opted_out_by_customer(session, customer):
            logger.info("sidebar: member %s may not undo a customer's own opt-out", member.userid)
            words = "」或「".join(_settings().kf.opt_in_words)
            return jsonify(error=f"客户本人在微信客服发送了退订，只能由客户本人回复「{words}」恢复推送",
                           opted_out=True), 409
        moved = set_opted_out(session, customer, body["opted_out"], _now(), via="sidebar", by=member.userid)
        if moved:
            logger.info("sidebar: member %s set a customer's opt-out to %s", member.userid, body["opted_out"])
        return jsonify(opted_out=customer.opted_out, changed=moved)


def _tag_from_request(session: Any, body: dict[str, Any], member: Member, settings: Settings) -> Tag | tuple[str, int]:
    tag_id = body.get("tag_id")
    if tag_id is not None:
        if type(tag_id) is not int or not 0 < tag_id <= MAX_ROW_ID:  # bool is an int; a huge one overflows
            return "标签不存在", 400
        tag = session.get(Tag, tag_id)
        if tag is None or tag.deleted or tag.group.deleted:
            return "标签不存在", 400
        return tag
    rules = TagRules.from_settings(settings)
    try:
        ref = canonical_ref(session, rules, parse_ref(body.get("name"), rules.default_group))
    except RuleError:
        return "标签名需为 1–30 个字，可写作 组/标签", 400
    existing = session.scalar(select(Tag).join(TagGroup, TagGroup.id == Tag.group_id)
                              .where(TagGroup.name == ref.group, Tag.name == ref.name, Tag.deleted.is_(False)))
    if existing is not None:
        return existing
    if member.userid not in settings.sidebar.tag_creators:
        logger.info("sidebar: member %s may not create tags", member.userid)
        return "没有新建标签的权限，请从已有标签中选择", 403
    return ensure_tag(session, ref)


def _push_now(customer_id: int) -> bool:
    """Tell WeCom at once (mark_tag); on failure the row keeps its push state for the scheduled push."""
    clients = _clients()
    if clients is None:
        return False
    try:
        with current_app.extensions["scrm.db"].begin() as session:
            result = push_pending(session, clients.contact, customer_ids=[customer_id])
    except WeChatClientException as exc:
        logger.warning("sidebar: tag push failed with errcode %s; the scheduled push retries", exc.errcode)
        return False
    return result.failed == 0
