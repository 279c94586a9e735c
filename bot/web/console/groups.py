"""The console's 客户群 pages: each group with its members' tier mix, and one group with its welcome,
join code and members, where operators set the group's tier (for tier-group broadcasts and SOPs) and
its own labels, as `scrm groups tier` / `tag` do, audited; and the group broadcasts and SOPs with each
run's outcome, which operators may cancel, as `scrm groups broadcast cancel` / `sop cancel` do. They
share the console's sign-in, CSRF, headers and labels."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Flask, abort, flash, redirect, render_template, request, url_for
from sqlalchemy import func, or_, select
from sqlalchemy.sql.elements import ColumnElement
from werkzeug.exceptions import HTTPException

from bot.campaigns import group_broadcasts
from bot.campaigns.broadcasts import BroadcastError, next_cron_time, tier_key_names
from bot.campaigns.group_sop import (
    MAX_DAY,
    SopPreview,
    cancel_sop,
    create_sop,
    planned_per_step,
    preview_sop,
    sop_templates,
)
from bot.campaigns.rules import value_tier_names
from bot.contacts.groups import active_members, group_tier_key, label_problem, tier_mix
from bot.core.db import contains_pattern, row_id
from bot.models import CustomerGroup, GroupBroadcast, GroupSop
from bot.outbox.messages import TIER_NAMES
from bot.web.console import views
from bot.web.console.figures import tier_label
from segments.rfm import SEGMENT_NAMES

logger = logging.getLogger(__name__)
bp = Blueprint("console_groups", __name__, url_prefix="/console/groups")
bp.before_request(views._guard)
bp.after_request(views._headers)
bp.context_processor(views._labels)
bp.register_error_handler(HTTPException, views.console_error)
PAGE = 100
SEARCH_MAX = 100
MEMBERS_SHOWN = 300
CHURN_NAMES = {"low": "低", "medium": "中", "high": "高"}
TAGS_TEXT_MAX = 2000
RUNS_SHOWN = 5
PREVIEW_ROWS = 10
SOP_STEP_ROWS = 6
# The outbox statuses of a group message, as an owner sees them in WeCom.
GROUP_MESSAGE_STATES = {"pending": "待提交", "sending": "提交中", "submitted": "待群主确认", "confirmed": "已发送",
                        "failed": "失败", "skipped": "未发送"}


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)


@bp.get("/")
def groups_page() -> str:
    """A page of groups in id order (keyset: ``after`` the last one shown), by owner and name, with the total."""
    owner = request.args.get("owner", "").strip()[:64]
    search = request.args.get("q", "").strip()[:SEARCH_MAX]
    show_all = request.args.get("all") == "1"
    after = row_id(request.args.get("after", "0"))
    if after is None:
        views._refuse(400, "after must be a group id")
    where = _group_filters(owner, search, show_all)
    with views._db().sessions() as s:
        total = s.scalar(select(func.count()).select_from(CustomerGroup).where(*where)) or 0
        groups = list(s.scalars(select(CustomerGroup).where(CustomerGroup.id > after, *where)
                                .order_by(CustomerGroup.id).limit(PAGE + 1)))
        more, groups = len(groups) > PAGE, groups[:PAGE]
        mixes = tier_mix(s, [g.id for g in groups])
    rows = [{"g": g, "mix": mixes[g.id], "tier": group_tier_key(g, mixes[g.id])} for g in groups]
    kept = {k: v for k, v in request.args.items() if k != "after"}
    return render_template("console/groups.html", rows=rows, owner=owner, search=search, show_all=show_all,
                           total=total, churn_names=CHURN_NAMES, bar=_bar,
                           first_url=url_for("console_groups.groups_page", **kept) if after else None,
                           next_url=url_for("console_groups.groups_page", **kept, after=groups[-1].id)
                           if more else None)


def _group_filters(owner: str, search: str, show_all: bool) -> list[ColumnElement[bool]]:
    """By owner, by name (contains the text) or chat id (is it), and without the dismissed unless asked."""
    where: list[ColumnElement[bool]] = []
    if owner:
        where.append(CustomerGroup.owner_userid == owner)
    if search:
        where.append(or_(CustomerGroup.name.like(contains_pattern(search), escape="\\"),
                         CustomerGroup.chat_id == search))
    if not show_all:
        where.append(CustomerGroup.dismissed_at.is_(None))
    return where


@bp.get("/<int:group_id>")
def group_page(group_id: int) -> str:
    with views._db().sessions() as s:
        group = s.get(CustomerGroup, group_id)
        if group is None:
            abort(404, "no such group")
        mix = tier_mix(s, [group.id])[group.id]
        members = sorted(active_members(group), key=lambda m: (m.member_type, m.join_time or group.created_at))
        left = sorted((m for m in group.members if m.left_at is not None), key=lambda m: m.left_at, reverse=True)
        return render_template("console/group.html", g=group, mix=mix, tier=group_tier_key(group, mix),
                               members=members[:MEMBERS_SHOWN], more=max(0, len(members) - MEMBERS_SHOWN),
                               left=left[:50], churn_names=CHURN_NAMES, bar=_bar,
                               tier_choices=_tier_choices(group.tier))


@bp.post("/<int:group_id>/settings")
def group_settings(group_id: int) -> Any:
    """The group's tier ("" = by its members' majority) and labels (separated by 、 or commas; a label may
    hold spaces, as `scrm groups tag` allows). A field left out of the form keeps its value."""
    tier = request.form.get("tier")
    tier = tier.strip() if tier is not None else None
    text = request.form.get("tags")
    if text is not None and len(text) > TAGS_TEXT_MAX:
        views._refuse(400, f"at most {TAGS_TEXT_MAX} characters of labels")
    labels = views.split_words(text) if text is not None else None
    problem = label_problem(labels or [])
    if problem:
        views._refuse(400, problem)
    with views._db().begin() as s:
        group = s.get(CustomerGroup, group_id)
        if group is None:
            abort(404, "no such group")
        before = {"tier": group.tier, "tags": list(group.tags or [])}
        if tier and tier not in tier_key_names(views._settings()) and tier != group.tier:
            views._refuse(400, f"unknown tier {tier[:40]!r}")  # the group's own, gone from the config, may stay
        if tier is not None:
            group.tier = tier or None
        if labels is not None:
            group.tags = labels
        after = {"tier": group.tier, "tags": list(group.tags or [])}
        if after != before:
            views._audit(s, "groups.update", f"group:{group.chat_id}", before, after)
    flash("已保存群层级与群标签" if after != before else "没有改动")
    return redirect(url_for("console_groups.group_page", group_id=group_id))


@bp.get("/campaigns")
def campaigns_page() -> str:
    """Group broadcasts (schedule, audience, the latest runs by outcome with the reasons of those not sent)
    and group SOPs (steps with how many group messages each planned)."""
    with views._db().sessions() as s:
        broadcasts = group_broadcasts.broadcast_rows(s)
        for row in broadcasts:
            broadcast = s.get(GroupBroadcast, row["id"])
            row["cron"], row["send_at"] = broadcast.cron, broadcast.send_at
            row["unsent"] = group_broadcasts.unsent(s, broadcast)
            row["runs_shown"] = group_broadcasts.results(s, broadcast, latest=RUNS_SHOWN)[::-1]
        planned = planned_per_step(s)
        sops = [{"sop": sop, "audience": group_broadcasts.describe_audience(sop.audience),
                 "steps": [{**step, "planned": planned.get(f"group_sop:{sop.id}:{i}", 0)}
                           for i, step in enumerate(sop.steps)]}
                for sop in s.scalars(select(GroupSop).order_by(GroupSop.id))]
    return render_template("console/group_campaigns.html", broadcasts=broadcasts, sops=sops,
                           states=GROUP_MESSAGE_STATES)


@bp.route("/broadcasts/new", methods=["GET", "POST"])
def new_broadcast() -> Any:
    """Plan a broadcast to groups as `scrm groups broadcast create` does: preview (writes nothing: which
    groups, each owner's share, what is skipped and why, the texts), then schedule, audited."""
    form = request.form if request.method == "POST" else request.args
    shown: group_broadcasts.GroupPreview | None = None
    error, status = "", 200
    if request.method == "POST":
        try:
            spec = _group_spec(form)
            settings, now = views._settings(), views._now()
            with views._db().begin() as s:
                if form.get("intent") == "schedule":
                    broadcast = group_broadcasts.create(s, settings, spec, now)
                    views._audit(s, "group_broadcasts.create", f"group_broadcast:{broadcast.id}", None,
                                 {"name": broadcast.name, "audience": broadcast.audience,
                                  "templates": broadcast.templates, "send_at": _iso(broadcast.send_at),
                                  "cron": broadcast.cron})
                    flash(f"已排期群发「{broadcast.name}」，首次 {views._local(broadcast.next_run_at)}")
                    return redirect(url_for("console_groups.campaigns_page"))
                if spec.send_at is None and spec.cron is None:
                    raise BroadcastError("give a send time (once) or a cron expression (repeating)")
                at = spec.send_at or next_cron_time(str(spec.cron), settings, now)
                shown = group_broadcasts.preview(s, settings, spec, at)
        except BroadcastError as exc:
            logger.info("console: group broadcast refused: %s", exc)
            error, status = str(exc), 400
    return render_template("console/group_broadcast_new.html", form=form, preview=shown, error=error,
                           tier_choices=_tier_choices(None)[1:], value_tiers=value_tier_names(views._settings()),
                           PREVIEW_ROWS=PREVIEW_ROWS), status


@bp.route("/sops/new", methods=["GET", "POST"])
def new_sop() -> Any:
    """Create a group SOP as `scrm groups sop create` does: preview (writes nothing: the groups that match, each
    step with the groups it will still reach and its text for one of them), then create, audited."""
    form = request.form if request.method == "POST" else request.args
    shown: SopPreview | None = None
    error, status = "", 200
    settings = views._settings()
    if request.method == "POST":
        try:
            name, audience, steps = (form.get("name") or "").strip(), _group_audience(form), _sop_steps(form)
            with views._db().begin() as s:
                if form.get("intent") == "create":
                    sop = create_sop(s, settings, name, audience, steps, views._now())
                    views._audit(s, "group_sops.create", f"group_sop:{sop.id}", None,
                                 {"name": sop.name, "audience": sop.audience, "steps": sop.steps})
                    flash(f"已创建群 SOP「{sop.name}」：{len(sop.steps)} 个步骤")
                    return redirect(url_for("console_groups.campaigns_page"))
                shown = preview_sop(s, settings, audience, steps, views._now())
        except BroadcastError as exc:
            logger.info("console: group SOP refused: %s", exc)
            error, status = str(exc), 400
    return render_template("console/group_sop_new.html", form=form, preview=shown, error=error,
                           tier_choices=_tier_choices(None)[1:], templates=sop_templates(settings),
                           step_rows=SOP_STEP_ROWS), status


def _sop_steps(form: Any) -> list[dict[str, Any]]:
    """The filled step rows (day and template) in order; a day that is not a whole number is named."""
    steps = []
    for row in range(SOP_STEP_ROWS):
        day, template = (form.get(f"day_{row}") or "").strip(), (form.get(f"template_{row}") or "").strip()
        if not day and not template:
            continue
        if not (day.isascii() and day.isdigit() and len(day) <= 3) or not template:
            raise BroadcastError(f"第 {row + 1} 步：天数须为 0–{MAX_DAY} 的整数，并选择模板")
        steps.append({"day": int(day), "template": template[:100]})
    if not steps:
        raise BroadcastError("至少填写一个步骤（天数与模板）")
    return steps


def _group_spec(form: Any) -> group_broadcasts.GroupBroadcastSpec:
    """The builder's form as a spec; the audience as GroupAudience reads it (its checks run on it)."""
    audience = _group_audience(form)
    templates = {"default": form.get("tpl_default", "")}
    for key in value_tier_names(views._settings()):
        text = (form.get(f"tpl_{key}") or "").strip()
        if text:
            templates[key] = text
    repeat = form.get("schedule") == "cron"
    cron = (form.get("cron") or "").strip()[:100] if repeat else ""
    if repeat and not cron:
        raise BroadcastError("give a cron expression (minute hour day month weekday), e.g. 0 10 * * 1")
    send_at = None if repeat else views._send_at(form.get("send_at", ""))
    return group_broadcasts.GroupBroadcastSpec((form.get("name") or "").strip(), audience, templates, send_at,
                                               cron or None)


def _group_audience(form: Any) -> dict[str, Any]:
    """The audience fields of a builder (broadcast or SOP) as GroupAudience reads them."""
    audience: dict[str, Any] = {}
    for key in ("owners", "names", "tags"):
        text = (form.get(key) or "")[:TAGS_TEXT_MAX]
        if views.split_words(text):
            audience[key] = views.split_words(text)
    tiers = [t for t in form.getlist("tiers") if t][:50]
    if tiers:
        audience["tiers"] = tiers
    mix_tier, share = (form.get("mix_tier") or "").strip(), (form.get("mix_share") or "").strip()
    if mix_tier:
        if not (share.isascii() and share.isdigit() and 1 <= int(share) <= 100):
            raise BroadcastError("成员占比须为 1–100 的整数（百分比）")
        audience["mix"] = {"tier": mix_tier, "min_share": int(share) / 100}
    members = (form.get("min_members") or "").strip()
    if members:
        if not (members.isascii() and members.isdigit() and len(members) <= 6):
            raise BroadcastError("最少成员数须为整数")
        audience["min_members"] = int(members)
    return audience


def _iso(moment: Any) -> str | None:
    return moment.isoformat() if moment else None


@bp.post("/broadcasts/<int:broadcast_id>/cancel")
def cancel_broadcast(broadcast_id: int) -> Any:
    return _cancel(GroupBroadcast, broadcast_id, "群发", "group_broadcast",
                   lambda s, row: group_broadcasts.cancel(s, row, views._now()),
                   finished=lambda s, row: row.status in ("done", "failed") and not group_broadcasts.unsent(s, row))


@bp.post("/sops/<int:sop_id>/cancel")
def cancel_group_sop(sop_id: int) -> Any:
    return _cancel(GroupSop, sop_id, "群 SOP", "group_sop", lambda s, row: cancel_sop(s, row, views._now()))


def _cancel(model: Any, row_id: int, label: str, kind: str, cancel: Any, finished: Any = None) -> Any:
    """Cancel a group broadcast or SOP (its unsent group messages skipped), audited as ``<kind>s.cancel``;
    one that is ``finished`` (sent, nothing left to stop) keeps its history."""
    with views._db().begin() as s:
        row = s.get(model, row_id)
        if row is None:
            abort(404, f"no such {kind.replace('_', ' ')}")
        name = row.name
        if row.status == "cancelled":
            flash(f"{label}「{name}」已取消过")
            return redirect(url_for("console_groups.campaigns_page"))
        if finished is not None and finished(s, row):
            flash(f"{label}「{name}」已结束，没有未提交的群消息可取消")
            return redirect(url_for("console_groups.campaigns_page"))
        before = {"status": row.status}
        skipped = cancel(s, row)
        views._audit(s, f"{kind}s.cancel", f"{kind}:{row.id}", before, {"status": row.status, "skipped": skipped})
    flash(f"已取消{label}「{name}」，{skipped} 条未提交的群消息不再发送")
    return redirect(url_for("console_groups.campaigns_page"))


def _tier_choices(current: str | None) -> list[tuple[str, str]]:
    """("", by majority) then the value tiers and the RFM segments, as the console names them; a tier the
    group holds that the config no longer has stays selectable, so a save of its labels keeps it."""
    choices = ([("", "按成员多数")] + [(t, tier_label(t, TIER_NAMES)) for t in value_tier_names(views._settings())]
               + [(code, f"{name}（{code}）") for code, name in SEGMENT_NAMES.items()])
    if current and current not in {key for key, _ in choices}:
        choices.append((current, f"{current}（已不在配置中）"))
    return choices


def _bar(counts: dict[str, int], names: dict[str, str]) -> list[dict[str, Any]]:
    """Segments of a 100 % bar: label, count, width in percent, largest first."""
    total = sum(counts.values())
    return [{"key": k, "label": names.get(k, "未分层" if k == "none" else k), "n": n,
             "width": round(100 * n / total, 1)} for k, n in sorted(counts.items(), key=lambda p: (-p[1], p[0]))
            if total]
