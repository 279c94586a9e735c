"""Console pages for channels (渠道活码: the report as charts and a table) and hand-overs (在职/离职继承:
each batch's outcomes and a dry-run plan). :func:`register` puts them on the console blueprint, so
its guard (sign-in, CSRF, roles) applies."""

from __future__ import annotations

from datetime import timedelta

from flask import Blueprint, current_app, render_template, request

from bot.contacts.channels import channel_report
from bot.contacts.transfer import Route, TransferError, batch_status, plan_onjob
from bot.outbox.messages import TIER_NAMES

DAYS = 30
TIERS = ("high", "mid", "low")


def channels_page() -> str:
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
    return render_template("console/channels.html", reports=reports, adds=adds, mix=mix, days=DAYS)


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
