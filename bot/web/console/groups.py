"""The console's 客户群 pages (read-only): each group with its members' tier mix, and one group with
its welcome, join code and members. They share the console's sign-in, CSRF, headers and labels."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, abort, render_template, request
from sqlalchemy import select

from bot.contacts.groups import active_members, group_tier_key, tier_mix
from bot.models import CustomerGroup
from bot.web.console import views

bp = Blueprint("console_groups", __name__, url_prefix="/console/groups")
bp.before_request(views._guard)
bp.after_request(views._headers)
bp.context_processor(views._labels)
PAGE = 200
MEMBERS_SHOWN = 300
CHURN_NAMES = {"low": "低", "medium": "中", "high": "高"}


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
                               left=left[:50], churn_names=CHURN_NAMES, bar=_bar)


def _bar(counts: dict[str, int], names: dict[str, str]) -> list[dict[str, Any]]:
    """Segments of a 100 % bar: label, count, width in percent, largest first."""
    total = sum(counts.values())
    return [{"key": k, "label": names.get(k, "未分层" if k == "none" else k), "n": n,
             "width": round(100 * n / total, 1)} for k, n in sorted(counts.items(), key=lambda p: (-p[1], p[0]))
            if total]
