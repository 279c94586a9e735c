"""The console's routes. Every request passes ``_guard``: a CSRF token on every POST (400 without),
a signed-in operator on every page but sign-in (else to the sign-in page), and no POST from a viewer
(403). Every change is written to the audit log in the same transaction as the change itself."""

from __future__ import annotations

import json
import logging
import secrets
import time
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    current_app,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    stream_with_context,
    url_for,
)
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from werkzeug.exceptions import HTTPException

from bot.campaigns.audience import ALL_STAGES, NO_CHANNEL, Audience, AudienceError, count_per_value_tier
from bot.campaigns.broadcasts import (
    BroadcastError,
    BroadcastSpec,
    Preview,
    cancel_broadcast,
    create_broadcast,
    effect_report,
    next_cron_time,
    no_revenue_yet,
    parse_send_time,
    preview,
)
from bot.campaigns.coupons import CouponBook, CouponError
from bot.campaigns.effect import effect_by_tier
from bot.campaigns.rules import value_tier_names
from bot.core.config import Settings
from bot.core.db import Database, row_id
from bot.core.times import local_time, localised, zone_name
from bot.models import (
    CHURN_RISKS,
    AuditEntry,
    Broadcast,
    BroadcastRun,
    CustomerTag,
    InboxEvent,
    Operator,
    Tag,
    TagGroup,
)
from bot.outbox.messages import STAGE_NAMES, TIER_NAMES
from bot.tagging.rules import TagRules
from bot.tagging.system import check_tags, merge_tags
from bot.web.console import accounts, handover, users
from bot.web.console.customers import (
    AUDIENCE_ARGS,
    CustomerFilter,
    channel_choices,
    csv_chunks,
    customer_record,
    list_page,
)
from bot.web.console.figures import (
    ACTIVITY_NAMES,
    ENGAGEMENT_NAMES,
    UNTIERED,
    FiguresCache,
    dashboard,
    tier_label,
)
from bot.web.console.system import OUTBOX_DAYS, event_state, last_line, system_figures
from bot.web.console.words import broadcast_status_zh, error_zh, reason_zh
from bot.web.live import current_settings
from bot.web.logpaths import logged_path
from segments.policy import ACTIVITY_LEVELS, ENGAGEMENT_STATES, TierPolicy
from segments.predict_view import CHURN_BAND_NAMES
from segments.rfm import SEGMENT_NAMES

logger = logging.getLogger(__name__)
bp = Blueprint("console", __name__, url_prefix="/console", template_folder="templates", static_folder="static")
handover.register(bp)  # 渠道 and 交接 pages
users.register(bp)  # 账号 page
PUBLIC_ENDPOINTS = {"console.login", "console.static"}
ANY_ROLE_POSTS = {"console.logout"}  # a viewer may still sign out
AUDIT_PAGE = 100
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")


class _SessionInterface(SecureCookieSessionInterface):
    """The session cookie is marked Secure whenever the request came over https (behind a proxy:
    app.trusted_proxies, or app.public_url on https), and stays usable on plain http for local use. A
    request that sent no session cookie (every WeCom callback) gets its empty session without the
    signing serializer Flask would build for it: a tenth of a callback's own work."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"]) or (bool(request) and request.is_secure)

    def open_session(self, app: Flask, request: Any) -> SecureCookieSession | None:
        if app.secret_key and self.get_cookie_name(app) not in request.cookies:
            return self.session_class()
        return super().open_session(app, request)


def init_app(app: Flask) -> None:
    app.config.setdefault("SESSION_COOKIE_HTTPONLY", True)
    app.config["SESSION_COOKIE_SAMESITE"] = app.config.get("SESSION_COOKIE_SAMESITE") or "Lax"
    app.session_interface = _SessionInterface()
    app.extensions["scrm.console.figures"] = FiguresCache(sessions=app.extensions["scrm.db"].sessions)
    app.register_blueprint(bp)


# ---------------------------------------------------------------- shared pieces


def _settings() -> Settings:
    return current_settings()


def _db() -> Database:
    return current_app.extensions["scrm.db"]


def _now() -> datetime:
    return current_app.extensions["scrm.clock"]()


def _ip() -> str:
    return (request.remote_addr or "?")[:64]


def _audit(s: Session, action: str, target: str, before: dict[str, Any] | None, after: dict[str, Any] | None) -> None:
    accounts.record(s, g.operator.name, action, target, before, after, _ip(), at=_now())


def _refuse(status: int, why: str) -> None:
    logger.info("console %s %s refused (%d): %s", request.method, logged_path(), status, why)
    abort(status, why)


@bp.before_request
def _guard() -> Response | None:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    if request.method == "POST":
        given = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token")
        if not accounts.same_token(given, session.get("csrf")):
            _refuse(400, "表单已过期（CSRF 令牌缺失或失效）：请返回、刷新页面后重试。")
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    operator = _signed_in()
    if operator is None:
        if request.method == "GET" and not request.path.endswith(".json"):
            return redirect(url_for("console.login", next=request.full_path))
        _refuse(401, "请先登录")
    g.operator = operator
    _keep_alive()
    if request.method == "POST" and operator.role == "viewer" and request.endpoint not in ANY_ROLE_POSTS:
        _refuse(403, VIEWER_REFUSED)
    return None


VIEWER_REFUSED = "只读账号（viewer）不能修改任何内容；需要修改请让管理员或运营账号操作。"
ERROR_HEADLINES = {400: "请求有误", 401: "请先登录", 403: "没有权限", 404: "找不到", 405: "不支持的操作",
                   413: "内容过大", 429: "请求过于频繁"}


@bp.errorhandler(HTTPException)
def console_error(exc: HTTPException) -> Any:
    """A refusal on a console page is a console page in Chinese with a way back (the browser keeps what
    was typed), not Werkzeug's bare English one; a .json endpoint answers JSON."""
    if exc.code is None or exc.code >= 500:
        return exc
    if request.path.endswith(".json"):
        return jsonify(error=error_zh(exc.description)), exc.code
    referrer = urlsplit(request.referrer or "")
    back = (f"{referrer.path}?{referrer.query}" if referrer.query else referrer.path) \
        if referrer.netloc == request.host and referrer.path.startswith(bp.url_prefix + "/") else ""
    return render_template("console/error.html", status=exc.code, headline=ERROR_HEADLINES.get(exc.code, "出错了"),
                           message=error_zh(exc.description), back=_safe_next(back)), exc.code


def _keep_alive() -> None:
    """The signed cookie expires sidebar.session_minutes after it was last written, and reading pages wrote
    nothing: an operator reading reports was signed out 30 minutes after signing in. Rewritten at most once
    a minute while in use, it lapses after that long idle (and 12 hours after sign-in, see _signed_in)."""
    now = time.time()  # the cookie's own age is on the real clock, whatever clock the app runs on
    seen = session.get("seen_at")
    if not isinstance(seen, int | float) or now - seen >= 60:
        session["seen_at"] = now


def _signed_in() -> Operator | None:
    operator_id = session.get("operator_id")
    if not isinstance(operator_id, int):
        return None
    with _db().sessions() as s:
        operator = s.get(Operator, operator_id)
    if operator is None or not operator.active or session.get("pw") != accounts.password_mark(operator):
        return None  # deleted, disabled, signed out or its password changed since this session began
    signed_in_at = session.get("signed_in_at")
    if not isinstance(signed_in_at, int | float) or \
            _now().timestamp() - signed_in_at > accounts.SESSION_HOURS * 3600:
        return None  # however active, a session ends: a copied cookie is not good for ever
    return operator


@bp.after_request
def _headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    if request.endpoint != "console.static":
        response.headers["Cache-Control"] = "no-store"
    return response


bp.add_app_template_filter(reason_zh, "reason_zh")
bp.add_app_template_filter(error_zh, "error_zh")
bp.add_app_template_filter(broadcast_status_zh, "broadcast_status_zh")


@bp.app_template_global()
def csrf_token() -> str:
    return session.get("csrf", "")


@bp.context_processor
def _labels() -> dict[str, Any]:
    return {"TIER_NAMES": TIER_NAMES, "SEGMENT_NAMES": SEGMENT_NAMES, "STAGE_NAMES": STAGE_NAMES,
            "ENGAGEMENT_NAMES": ENGAGEMENT_NAMES, "ACTIVITY_NAMES": ACTIVITY_NAMES, "tier_label": tier_label,
            "operator": g.get("operator"), "local": _local, "pretty": _pretty, "ROLE_NAMES": users.ROLE_NAMES,
            "zone": zone_name(_settings().tz), "no_revenue_yet": no_revenue_yet,
            "NO_REVENUE_YET": "两组都还没有收入，暂无区间"}


def split_words(text: str) -> list[str]:
    """A form's list: items separated by 、, commas, semicolons or lines (a space belongs to its item), each
    once."""
    for separator in ("，", ",", "；", ";", "\n"):
        text = text.replace(separator, "、")
    return list(dict.fromkeys(t.strip() for t in text.split("、") if t.strip()))


def _pretty(value: Any) -> str:
    """Recorded JSON (the audit log's before and after) for a page: its ``…_at`` times, recorded in UTC, in
    app.timezone with the offset (the record itself is left as it is)."""
    if value is None:
        return "-"
    return json.dumps(localised(value, _settings().tz), ensure_ascii=False, indent=1, sort_keys=True, default=str)


def _local(moment: datetime | None, seconds: bool = False) -> str:
    """A time on a page, in app.timezone: every page names the zone in its top bar (``zone``)."""
    return local_time(moment, _settings().tz, zone=False, seconds=seconds)


# ---------------------------------------------------------------- sign-in


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    error, status = None, 200
    if request.method == "POST":
        name, password = request.form.get("name", ""), request.form.get("password", "")
        with _db().begin() as s:
            attempt = accounts.begin_attempt(s, name, _ip(), _now())
        with _db().begin() as s:
            result = accounts.sign_in(s, name, password, _ip(), _now(), attempt)
            if result.operator is not None:
                operator_id, pw = result.operator.id, accounts.password_mark(result.operator)
                accounts.record(s, result.operator.name, "login", f"operator:{result.operator.name}", None, None,
                                _ip(), at=_now())
        if result.operator is not None:
            session.clear()  # a fresh session (and CSRF token) at every sign-in: no fixation
            session.update(operator_id=operator_id, pw=pw, csrf=secrets.token_urlsafe(32),
                           signed_in_at=_now().timestamp())
            return redirect(_safe_next(request.args.get("next")))
        if result.throttled:
            logger.info("console sign-in throttled from one address (%d failures within %d min)",
                        accounts.MAX_FAILURES, accounts.FAILURE_WINDOW.seconds // 60)
            error, status = f"失败次数过多，请 {accounts.FAILURE_WINDOW.seconds // 60} 分钟后再试", 429
        else:
            logger.info("console sign-in failed")
            error, status = "用户名或密码错误", 401
    return render_template("console/login.html", error=error), status


def _safe_next(target: str | None) -> str:
    """Only a path inside the console: never another site (open redirect)."""
    if target:
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc and parts.path.startswith(bp.url_prefix + "/") \
                and not target.startswith("//"):
            return target
    return url_for("console.dashboard_page")


@bp.post("/logout")
def logout() -> Response:
    with _db().begin() as s:
        accounts.sign_out(s, g.operator.id)
    session.clear()
    return redirect(url_for("console.login"))


# ---------------------------------------------------------------- dashboard


@bp.get("/")
def dashboard_page() -> str:
    with _db().sessions() as s:
        figures = dashboard(s, _now(), _settings().broadcasts.report_days,
                            current_app.extensions["scrm.console.figures"], _settings().tz)
    return render_template("console/dashboard.html", d=figures)


# ---------------------------------------------------------------- customers


def _customer_conditions(s: Session, wanted: CustomerFilter, tiers_joined: bool = False) -> list[Any]:
    try:
        return wanted.conditions(s, value_tier_names(_settings()), _settings().tz, tiers_joined)
    except AudienceError as exc:
        logger.info("console customer filter refused: %s", exc)
        abort(400, str(exc))


@bp.get("/customers")
def customers_page() -> str:
    wanted = CustomerFilter.from_args(request.args)
    after = row_id(request.args.get("after", "0"))
    if after is None:
        _refuse(400, "after must be a customer id")
    with _db().sessions() as s:
        page = list_page(s, _customer_conditions(s, wanted, tiers_joined=True), after)
        choices = _choices(s)
    kept = {k: v for k, v in request.args.to_dict(flat=False).items() if k != "after"}
    return render_template(
        "console/customers.html", page=page, wanted=wanted, choices=choices,
        args=request.args,
        csv_url=url_for("console.customers_csv", **kept),
        first_url=url_for("console.customers_page", **kept) if int(after) else None,
        next_url=url_for("console.customers_page", **kept, after=page.next_after) if page.next_after else None)


@bp.get("/customers.csv")
def customers_csv() -> Response:
    wanted = CustomerFilter.from_args(request.args)
    with _db().sessions() as s:  # the filter is checked (400) before the stream starts
        _customer_conditions(s, wanted)

    def generate() -> Any:
        with _db().sessions() as s:
            yield from csv_chunks(s, wanted.conditions(s, value_tier_names(_settings()), _settings().tz),
                                  _settings().tz)

    name = f"customers-{_now().astimezone(_settings().tz):%Y%m%d-%H%M}.csv"
    return Response(stream_with_context(generate()), content_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


@bp.get("/customers/<int:customer_id>")
def customer_page(customer_id: int) -> str:
    settings = _settings()
    with _db().sessions() as s:
        record = customer_record(s, customer_id, TierPolicy.of(settings),
                                 _now().astimezone(settings.tz).date(), settings.tz)
        if record is None:
            abort(404, "no such customer")
        return render_template("console/customer.html", r=record)


def _choices(session: Session) -> dict[str, list[tuple[str, str]]]:
    return {"channels": [(state, state) for state in channel_choices(session)] + [(NO_CHANNEL, "（无渠道）")],
            "value_tiers": [(t, tier_label(t, TIER_NAMES)) for t in value_tier_names(_settings())],
            "rfm_segments": [(code, f"{name}（{code}）") for code, name in SEGMENT_NAMES.items()],
            "stages": [(s, tier_label(s, STAGE_NAMES)) for s in ALL_STAGES],
            "engagement": [(e, tier_label(e, ENGAGEMENT_NAMES)) for e in ENGAGEMENT_STATES],
            "activity": [(a, tier_label(a, ACTIVITY_NAMES)) for a in ACTIVITY_LEVELS],
            "churn_risk": [(r, f"{CHURN_BAND_NAMES.get(r, r)}（{r}）") for r in CHURN_RISKS]}


# ---------------------------------------------------------------- broadcasts


@bp.get("/broadcasts")
def broadcasts_page() -> str:
    with _db().sessions() as s:
        runs = {bid: (n, to_send, held) for bid, n, to_send, held in s.execute(
            select(BroadcastRun.broadcast_id, func.count(), func.sum(BroadcastRun.to_send),
                   func.sum(BroadcastRun.held_out)).group_by(BroadcastRun.broadcast_id))}
        rows = list(s.scalars(select(Broadcast).order_by(Broadcast.id.desc())))
    return render_template("console/broadcasts.html", rows=rows, runs=runs)


@bp.get("/broadcasts/count.json")
def audience_count() -> Response | tuple[Response, int]:
    """The live count per value tier for the builder's current filters."""
    wanted = CustomerFilter.from_args(request.args)
    with _db().sessions() as s:
        try:
            audience = Audience.parse(dict(wanted.audience or {}), value_tier_names(_settings()))
            where = wanted.conditions(s, value_tier_names(_settings()), _settings().tz)
        except AudienceError as exc:
            return jsonify(error=error_zh(str(exc))), 400
        tiers_only = audience.only_tiers and not wanted.search and not wanted.opted_out
        rows = list(count_per_value_tier(s, value_tier_names(_settings()), audience if tiers_only else None,
                                         where).items())
    per_tier = [{"code": code, "label": tier_label(code, TIER_NAMES) if code else UNTIERED, "count": n}
                for code, n in sorted(rows, key=lambda r: _tier_order(r[0]))]
    return jsonify(total=sum(r["count"] for r in per_tier), per_tier=per_tier)


def _tier_order(code: str) -> int:
    names = value_tier_names(_settings())
    return names.index(code) if code in names else len(names)


def _spec_from_form(form: Any) -> BroadcastSpec:
    audience = dict(CustomerFilter.from_args(form).audience or {})
    templates = {"default": form.get("tpl_default", "")}
    for key in (*value_tier_names(_settings()), *SEGMENT_NAMES):
        text = form.get(f"tpl_{key}", "").strip()
        if text:
            templates[key] = text
    holdout = form.get("holdout", "").strip()
    if holdout and not (holdout.isascii() and holdout.isdigit() and len(holdout) <= 3):
        raise BroadcastError("hold-out must be a whole number of percent (0–50)")
    repeat = form.get("schedule") == "cron"
    cron = form.get("cron", "").strip()[:100] if repeat else ""
    if repeat and not cron:
        raise BroadcastError("give a cron expression (minute hour day month weekday), e.g. 0 10 * * 1")
    return BroadcastSpec(form.get("name", "").strip(), audience, templates,
                         None if repeat else _send_at(form.get("send_at", "")), cron or None,
                         int(holdout) if holdout else None, form.get("coupon", "").strip()[:64] or None)


def _send_at(text: str) -> datetime | None:
    return parse_send_time(text, _settings().tz) if text.strip() else None


@bp.route("/broadcasts/new", methods=["GET", "POST"])
def broadcast_new() -> Any:
    form = request.form if request.method == "POST" else request.args
    result: Preview | None = None
    error = None
    status = 200
    if request.method == "POST":
        try:
            spec = _spec_from_form(form)
            if form.get("intent") == "schedule":
                created_id = _schedule(spec)
                flash(f"已排期：群发 #{created_id}「{spec.name}」")
                return redirect(url_for("console.broadcast_page", broadcast_id=created_id))
            with _db().sessions() as s:  # never committed: a preview writes nothing
                at = spec.send_at or (next_cron_time(spec.cron, _settings(), _now()) if spec.cron else _now())
                result = preview(s, _settings(), spec, at)
        except BroadcastError as exc:
            logger.info("console broadcast refused: %s", exc)
            error, status = str(exc), 400
    with _db().sessions() as s:
        choices = _choices(s)
    return render_template("console/broadcast_new.html", form=form, choices=choices, preview=result,
                           error=error, default_holdout=_settings().broadcasts.holdout_percent,
                           audience_args=AUDIENCE_ARGS,
                           tiers=value_tier_names(_settings()), coupons=_coupon_choices()), status


def _coupon_choices() -> list[tuple[str, str]]:
    book = CouponBook.from_settings(_settings())
    return [(code, f"{d.title}（{code}，{d.terms()}）") for code, d in sorted(book.definitions.items())]


def _schedule(spec: BroadcastSpec) -> int:
    if spec.cron is None and spec.send_at is None:
        raise BroadcastError("choose a send time")
    if spec.send_at is not None and spec.send_at <= _now():
        raise BroadcastError("the send time has passed; choose a later one")
    with _db().begin() as s:
        created = create_broadcast(s, _settings(), spec, _now())
        _audit(s, "broadcast.create", f"broadcast:{created.id}", None, _broadcast_state(created))
        return created.id


def _broadcast_state(b: Broadcast) -> dict[str, Any]:
    return {"name": b.name, "status": b.status, "audience": b.audience, "templates": b.templates,
            "send_at": b.send_at.isoformat() if b.send_at else None, "cron": b.cron,
            "holdout_percent": b.holdout_percent, "coupon": b.coupon}


@bp.get("/broadcasts/<int:broadcast_id>")
def broadcast_page(broadcast_id: int) -> str:
    with _db().sessions() as s:
        broadcast = s.get(Broadcast, broadcast_id)
        if broadcast is None:
            abort(404, "no such broadcast")
        report = effect_report(s, broadcast, _settings().broadcasts.report_days, _now())
        by_tier = effect_by_tier(s, broadcast, _settings().broadcasts.report_days, _settings().tz, _now(),
                                 value_tier_names(_settings()))
        runs = list(s.scalars(select(BroadcastRun).where(BroadcastRun.broadcast_id == broadcast_id)
                              .order_by(BroadcastRun.run_at)))
        return render_template("console/broadcast.html", b=broadcast, report=report, runs=runs, by_tier=by_tier,
                               tier_chart=_tier_chart(by_tier), coupon=_coupon_carried(broadcast.coupon))


def _coupon_carried(code: str | None) -> str:
    """The coupon a broadcast hands out, as the builder's choice named it, or why it cannot be named."""
    if not code:
        return "不发券"
    try:
        definition = CouponBook.from_settings(_settings()).definitions.get(code)
    except CouponError as exc:
        return f"{code}（优惠券配置有误：{exc}）"
    return f"{definition.title}（{code}，{definition.terms()}）" if definition else f"{code}（配置中已没有这张券）"


def _tier_chart(by_tier: list[Any]) -> dict[str, Any]:
    return {"tiers": [tier_label(t.tier, TIER_NAMES) if t.tier else UNTIERED for t in by_tier],
            "conversion": [[round(t.sent.conversion * 100, 2) for t in by_tier],
                           [round(t.held_out.conversion * 100, 2) for t in by_tier]],
            "revenue": [[round(t.sent.revenue_per_customer_fen / 100, 2) for t in by_tier],
                        [round(t.held_out.revenue_per_customer_fen / 100, 2) for t in by_tier]]}


@bp.post("/broadcasts/<int:broadcast_id>/cancel")
def broadcast_cancel(broadcast_id: int) -> Response:
    with _db().begin() as s:
        broadcast = s.get(Broadcast, broadcast_id)
        if broadcast is None:
            abort(404, "no such broadcast")
        if broadcast.status != "scheduled":
            abort(409, f"the broadcast is {broadcast.status}; only a scheduled one can be cancelled")
        before = _broadcast_state(broadcast)
        skipped = cancel_broadcast(s, broadcast, _now())
        _audit(s, "broadcast.cancel", f"broadcast:{broadcast_id}", before,
               {**_broadcast_state(broadcast), "messages_skipped": skipped})
    flash(f"已取消群发 #{broadcast_id}，{skipped} 条未发消息不再发送")
    return redirect(url_for("console.broadcast_page", broadcast_id=broadcast_id))


# ---------------------------------------------------------------- audit


@bp.get("/audit")
def audit_page() -> str:
    before = request.args.get("before", "")
    with _db().sessions() as s:
        query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(AUDIT_PAGE + 1)
        if (before_id := row_id(before)) is not None:
            query = query.where(AuditEntry.id < before_id)
        entries = list(s.scalars(query))
    more = len(entries) > AUDIT_PAGE
    entries = entries[:AUDIT_PAGE]
    return render_template("console/audit.html", entries=entries,
                           next_before=entries[-1].id if more and entries else None)


# ---------------------------------------------------------------- system


@bp.get("/system")
def system_page() -> str:
    with _db().sessions() as s:
        figures = system_figures(s, _settings(), _db(), _now())
        return render_template("console/system.html", f=figures, last_line=last_line,
                               outbox_days=OUTBOX_DAYS)


@bp.post("/system/inbox/<int:event_id>/retry")
def inbox_retry(event_id: int) -> Response:
    """Make a failed, dead or unhandled event due again; the inbox worker runs it."""
    processor = current_app.extensions["scrm.processor"]
    with _db().sessions() as s:
        event = s.get(InboxEvent, event_id)
        if event is None:
            abort(404, "no such inbox event")
        before = event_state(event)
    try:
        processor.retry(event_id)
    except (LookupError, ValueError) as exc:
        _refuse(409, str(exc))
    with _db().begin() as s:
        _audit(s, "inbox.retry", f"inbox_event:{event_id}", before, event_state(s.get(InboxEvent, event_id)))
    flash(f"回调 #{event_id} 已重新排队，由 inbox worker 处理")
    return redirect(url_for("console.system_page"))


# ---------------------------------------------------------------- tags


@bp.get("/tags")
def tags_page() -> str:
    usage = (select(CustomerTag.tag_id, func.count().label("n")).where(CustomerTag.removed_at.is_(None))
             .group_by(CustomerTag.tag_id).subquery())
    with _db().sessions() as s:
        rows = s.execute(select(TagGroup.name, Tag.name, Tag.wecom_tag_id, func.coalesce(usage.c.n, 0))
                         .join(Tag, Tag.group_id == TagGroup.id).outerjoin(usage, usage.c.tag_id == Tag.id)
                         .where(Tag.deleted.is_(False), TagGroup.deleted.is_(False))
                         .order_by(TagGroup.order, TagGroup.name, Tag.order, Tag.name)).all()
        report = check_tags(s)
    groups: dict[str, list[Any]] = {}
    for group, name, wecom_id, used in rows:
        groups.setdefault(group, []).append((name, wecom_id, used))
    return render_template("console/tags.html", groups=groups, report=report)


@bp.post("/tags/merge")
def tags_merge() -> Response:
    source, target = request.form.get("source", "").strip()[:130], request.form.get("target", "").strip()[:130]
    try:
        with _db().begin() as s:
            result = merge_tags(s, TagRules.from_settings(_settings()), source, target, by=g.operator.name)
            _audit(s, "tags.merge", f"tag:{source}", {"source": source, "target": target},
                   {"alias_of": target, "moved": result.moved, "already_had": result.already_had})
    except (LookupError, ValueError) as exc:  # RuleError is a ValueError
        logger.info("console tag merge refused: %s", exc)
        flash(f"未合并：{exc}")
        return redirect(url_for("console.tags_page"))
    flash(f"已合并 {source} → {target}：{result.moved} 位客户转入，{result.already_had} 位已有该标签")
    return redirect(url_for("console.tags_page"))

