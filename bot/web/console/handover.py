"""Console pages for channels (渠道活码: the report as charts and a table, and the codes with their rules;
bot/web/console/channels.py has the forms that change them) and hand-overs (在职/离职继承: each batch's
outcomes and a dry-run plan). :func:`register` puts them on the console blueprint, so its guard
(sign-in, CSRF, roles) applies."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from flask import Blueprint, current_app, render_template, request
from sqlalchemy import select
from wechatpy.exceptions import WeChatClientException

from bot.contacts.channels import channel_report
from bot.contacts.transfer import Plan, TransferError, batch_status, parse_routes, plan_departed, plan_onjob
from bot.models import Channel
from bot.outbox.messages import TIER_NAMES
from segments.policy import STAGE_PATHS, TierPolicy

DAYS = 30
FIELD_MAX = 200
TIERS = ("high", "mid", "low")


def channels_page(form: Any = None, error: str = "", edit: str | None = None) -> Any:
    """The report, the codes and the create form, or with ``edit`` (a channel's key, also from the query) the
    form that changes that channel; ``form`` and ``error`` show a refused form again (400)."""
    settings, now = current_app.extensions["scrm.settings"], current_app.extensions["scrm.clock"]()
    edit = edit if edit is not None else (request.args.get("edit") or None)
    with current_app.extensions["scrm.db"].sessions() as s:
        reports = channel_report(s, settings, now)
    today = now.astimezone(settings.tz).date()
    days = [(today - timedelta(days=DAYS - 1 - i)).isoformat() for i in range(DAYS)]
    shown = [r for r in reports if r.adds][:8]
    adds = {"days": [d[5:] for d in days],
            "series": [{"name": r.name, "data": [r.adds_per_day.get(d, 0) for d in days]} for r in shown]}
    mix = {"days": [r.name for r in shown],
           "series": [{"name": TIER_NAMES[t], "data": [r.value_tiers.get(t, 0) for r in shown]} for t in TIERS]
           + [{"name": "未分层", "data": [max(0, r.customers - sum(r.value_tiers.values())) for r in shown]}]}
    with current_app.extensions["scrm.db"].sessions() as s:
        codes = list(s.scalars(select(Channel).where(Channel.status != "deleted").order_by(Channel.state)))
    editing = next((c for c in codes if c.state == edit), None)
    if edit is not None and editing is None and not error:
        error = f"no channel {edit[:40]!r} (it may have been deleted)"
    if editing is not None and form is None:
        form = channel_form(editing, settings.tz)
    return render_template("console/channels.html", reports=reports, adds=adds, mix=mix, days=DAYS, codes=codes,
                           stages=STAGE_PATHS[settings.tiers.stage_path], form=form or {}, error=error,
                           edit=editing, refused_as="未修改" if edit is not None else "未创建",
                           wecom_ready=contact_api() is not None), 400 if error else 200


def channel_form(row: Channel, tz: Any) -> dict[str, str]:
    """A channel as the form shows it (what the operator would type to make it)."""
    return {"state": row.state, "name": row.name or "", "members": "、".join(row.members or []),
            "tags": "、".join(row.tags or []), "stage": row.stage or "", "welcome": row.welcome or "default",
            "expires": row.expires_at.astimezone(tz).date().isoformat() if row.expires_at else "",
            "cost": f"{row.cost_fen // 100}.{row.cost_fen % 100:02d}" if row.cost_fen is not None else "",
            "verify": "" if row.skip_verify else "1"}


def contact_api() -> Any:
    """The WeCom 「联系我」 API of the service's clients, or None when WeCom is not configured."""
    clients = current_app.extensions["scrm.processor"].clients
    return clients.contact.contact_way if clients is not None else None


TRANSFER_FIELDS = ("kind", "from", "to", "rule", "members", "nogroups")


def transfer_args(source: Any) -> dict[str, str]:
    """The plan's fields from a query or a form: ``kind`` onjob (在职继承: ``from``) or departed (离职继承:
    optional ``members``, ``nogroups`` to leave their groups alone); ``to`` and ``rule`` for both."""
    args = {k: (source.get(k) or "").strip() for k in TRANSFER_FIELDS}
    args["kind"] = "departed" if args["kind"] == "departed" else "onjob"
    return args


def plan_from_args(session: Any, args: dict[str, str]) -> Plan:
    """The plan the fields describe. A departed member's customers are listed by WeCom (get_unassigned_list),
    so that plan asks WeCom, and reads only; TransferError says what is wrong, WeCom's refusal included."""
    rest = [u.strip() for u in re.split(r"[,，、]", args["to"]) if u.strip()]
    policy = TierPolicy.of(current_app.extensions["scrm.settings"])
    routes = parse_routes(session, [t for t in args["rule"].split(";") if t.strip()], policy.value_tiers,
                          policy.stages)
    if args["kind"] == "onjob":
        if not args["from"]:
            raise TransferError("name the member who hands customers over (交出成员)")
        return plan_onjob(session, args["from"], rest, routes)
    clients = current_app.extensions["scrm.processor"].clients
    if clients is None:
        raise TransferError("WeCom is not configured (wecom.corp_id and a secret): departed members' customers "
                            "are listed by WeCom")
    only = [u.strip() for u in re.split(r"[,，、]", args["members"]) if u.strip()]
    try:
        return plan_departed(session, clients.contact.transfer, rest, routes, only or None,
                             with_groups=args["nogroups"] != "1")
    except OSError as exc:  # requests' timeouts and connection errors
        raise TransferError(f"no answer from WeCom ({type(exc).__name__}); try again") from None
    except WeChatClientException as exc:
        raise TransferError(f"WeCom refused: {exc.errcode} {exc.errmsg}") from None


def transfers_page() -> str:
    """Batches with their outcomes; with ``to`` in the query, the dry-run plan too."""
    plan, error = None, ""
    args = transfer_args(request.args)
    if any(len(v) > FIELD_MAX for v in args.values()):
        error = f"交出成员、接替成员、离职成员与规则各最多 {FIELD_MAX} 个字符"
    elif args["from"] or args["to"]:
        try:
            with current_app.extensions["scrm.db"].sessions() as s:
                plan = plan_from_args(s, args)
        except TransferError as exc:
            error = str(exc)
    with current_app.extensions["scrm.db"].sessions() as s:
        batches = batch_status(s, limit=20)
    return render_template("console/transfers.html", batches=batches, plan=plan, error=error, args=args)


def register(bp: Blueprint) -> None:
    bp.add_url_rule("/channels", view_func=channels_page, methods=["GET"])
    bp.add_url_rule("/transfers", view_func=transfers_page, methods=["GET"])
