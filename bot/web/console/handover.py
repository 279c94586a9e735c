"""Console pages for channels (渠道活码: the report as charts and a table, and the codes with their rules;
bot/web/console/channels.py has the forms that change them) and hand-overs (在职/离职继承: each batch's
outcomes and a dry-run plan). :func:`register` puts them on the console blueprint, so its guard
(sign-in, CSRF, roles) applies."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import Blueprint, current_app, render_template, request
from sqlalchemy import select

from bot.contacts.channels import channel_report
from bot.contacts.transfer import Route, TransferError, batch_status, plan_onjob
from bot.models import Channel
from bot.outbox.messages import TIER_NAMES
from segments.policy import STAGE_PATHS

DAYS = 30
TIERS = ("high", "mid", "low")


def channels_page(form: Any = None, error: str = "") -> Any:
    """The report, the codes and the create form; ``form`` and ``error`` show a refused form again (400)."""
    settings, now = current_app.extensions["scrm.settings"], current_app.extensions["scrm.clock"]()
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
    return render_template("console/channels.html", reports=reports, adds=adds, mix=mix, days=DAYS, codes=codes,
                           stages=STAGE_PATHS[settings.tiers.stage_path], form=form or {}, error=error,
                           wecom_ready=contact_api() is not None), 400 if error else 200


def contact_api() -> Any:
    """The WeCom 「联系我」 API of the service's clients, or None when WeCom is not configured."""
    clients = current_app.extensions["scrm.processor"].clients
    return clients.contact.contact_way if clients is not None else None


def transfers_page() -> str:
    """Batches with their outcomes; with ``from`` and ``to`` in the query, the dry-run plan too."""
    plan, error = None, ""
    args = {k: (request.args.get(k) or "").strip()[:200] for k in ("from", "to", "rule")}
    if args["from"] or args["to"]:
        try:
            rest = [u.strip() for u in args["to"].split(",") if u.strip()]
            routes = [Route.parse(t) for t in args["rule"].split(";") if t.strip()]
            with current_app.extensions["scrm.db"].sessions() as s:
                plan = plan_onjob(s, args["from"], rest, routes)
        except TransferError as exc:
            error = str(exc)
    with current_app.extensions["scrm.db"].sessions() as s:
        batches = batch_status(s, limit=20)
    return render_template("console/transfers.html", batches=batches, plan=plan, error=error, args=args)


def register(bp: Blueprint) -> None:
    bp.add_url_rule("/channels", view_func=channels_page, methods=["GET"])
    bp.add_url_rule("/transfers", view_func=transfers_page, methods=["GET"])
