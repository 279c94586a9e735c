"""The 账号 page: admins list, add and change the console's operators (role, enabled, password). Each change
goes through bot.web.console.accounts (the same rules as `scrm user`) and into the audit log; anyone else
gets a 403. :func:`register` puts the routes on the console blueprint, so its guard (sign-in, CSRF) applies."""

from __future__ import annotations

import logging

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from bot.models import OPERATOR_ROLES, Operator
from bot.web.console import accounts
from bot.web.console.words import NAME_RULE_ZH
from bot.web.logpaths import logged_path

logger = logging.getLogger(__name__)
ROLE_NAMES = {"admin": "管理员", "operator": "运营", "viewer": "只读"}


def register(bp: Blueprint) -> None:
    bp.add_url_rule("/users", view_func=users_page, methods=["GET"])
    bp.add_url_rule("/users/add", view_func=users_add, methods=["POST"])
    # path: a name may hold a slash (华东/运营); with the default converter its address was a 404.
    bp.add_url_rule("/users/<path:name>/change", view_func=users_change, methods=["POST"])


def _admin_only() -> None:
    if g.operator.role != "admin":
        logger.info("console %s %s refused (403): not an admin", request.method, logged_path())
        abort(403, "only admins manage accounts")


def users_page() -> str:
    _admin_only()
    return _page()


def _page(error: str | None = None, name: str = "", role: str = "operator") -> str:
    """The page; after a refused add, with the refusal on the add form and what was typed (not the password)."""
    with current_app.extensions["scrm.db"].sessions() as s:
        operators = list(s.scalars(select(Operator).order_by(Operator.id)))
    return render_template("console/users.html", operators=operators, roles=OPERATOR_ROLES,
                           min_length=accounts.MIN_PASSWORD_LENGTH, error=error, name=name, role=role,
                           name_rule=NAME_RULE_ZH)


def users_add() -> Response | tuple[str, int]:
    _admin_only()
    # The name as typed, not trimmed (add_operator refuses whitespace rather than make another name than typed);
    # cut only far beyond its limit, which add_operator refuses.
    name, role, password = request.form.get("name", "")[:200], _field("role", 16), request.form.get("password", "")
    try:
        with current_app.extensions["scrm.db"].begin() as s:
            accounts.add_operator(s, name, role, password, actor=g.operator.name, ip=request.remote_addr)
    except accounts.AccountError as exc:
        return _page(error=str(exc), name=name, role=role), 400
    flash(f"已添加 {name}（{ROLE_NAMES.get(role, role)}）")
    return redirect(url_for("console.users_page"))


def users_change(name: str) -> Response:
    _admin_only()
    role = _field("role", 16) or None
    active = {"1": True, "0": False}.get(request.form.get("active", ""))
    password = request.form.get("password") or None
    try:
        with current_app.extensions["scrm.db"].begin() as s:
            operator = accounts.change_operator(s, name, g.operator.name, actor_id=g.operator.id, role=role,
                                                active=active, password=password, ip=request.remote_addr,
                                                at=current_app.extensions["scrm.clock"]())
            if password is not None and operator.id == g.operator.id:
                session["pw"] = accounts.password_mark(operator)  # a new own password keeps this session
    except accounts.AccountError as exc:
        flash(f"未修改：{exc}")
        return redirect(url_for("console.users_page"))
    except OperationalError:  # SQLite: another account change committed first (its snapshot is stale)
        logger.info("console account change lost a race with another; not applied")
        flash("未修改：另一项账号修改刚刚完成，请刷新后重试")
        return redirect(url_for("console.users_page"))
    others_password = password is not None and operator.id != g.operator.id
    flash(f"已修改 {name}" + ("（密码已重设，其原有登录已失效）" if others_password else ""))
    return redirect(url_for("console.users_page"))


def _field(key: str, limit: int) -> str:
    return (request.form.get(key) or "").strip()[:limit]
