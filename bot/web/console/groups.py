"""The console's 客户群 pages: each group with its members' tier mix, and one group with its welcome,
join code and members, where operators set the group's tier (for tier-group broadcasts and SOPs) and
its own labels, as `scrm groups tier` / `tag` do, audited. They share the console's sign-in, CSRF,
headers and labels."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, abort, flash, redirect, render_template, request, url_for
from sqlalchemy import select

from bot.campaigns.broadcasts import tier_key_names
from bot.campaigns.rules import value_tier_names
from bot.contacts.groups import active_members, group_tier_key, tier_mix
from bot.models import CustomerGroup
from bot.outbox.messages import TIER_NAMES
from bot.web.console import views
from bot.web.console.figures import tier_label
from segments.rfm import SEGMENT_NAMES

bp = Blueprint("console_groups", __name__, url_prefix="/console/groups")
bp.before_request(views._guard)
bp.after_request(views._headers)
bp.context_processor(views._labels)
PAGE = 200
MEMBERS_SHOWN = 300
CHURN_NAMES = {"low": "低", "medium": "中", "high": "高"}
LABEL_MAX, TAGS_TEXT_MAX = 30, 2000


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)


@bp.get("/")
def groups_page() -> str:
    owner = request.args.get("owner", "").strip()[:64]
    show_all = request.args.get("all") == "1"
    with views._db().sessions() as s:
        query = select(CustomerGroup).order_by(CustomerGroup.id).limit(PAGE)
        if owner:
            query = query.where(CustomerGroup.owner_userid == owner)
        if not show_all:
            query = query.where(CustomerGroup.dismissed_at.is_(None))
        groups = list(s.scalars(query))
        mixes = tier_mix(s, [g.id for g in groups])
    rows = [{"g": g, "mix": mixes[g.id], "tier": group_tier_key(g, mixes[g.id])} for g in groups]
    return render_template("console/groups.html", rows=rows, owner=owner, show_all=show_all,
                           churn_names=CHURN_NAMES, bar=_bar)


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
    if labels is not None and any(len(t) > LABEL_MAX for t in labels):
        views._refuse(400, f"a label is at most {LABEL_MAX} characters")
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
