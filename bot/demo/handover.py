"""Demo scenes for channels (渠道活码) and a hand-over (在职继承): both go through the sandbox's
WeCom API and callbacks, and what is printed is what the product computed and recorded."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import requests
from sqlalchemy import func, select

from bot.contacts.channels import ChannelSpec, channel_report, create_channel
from bot.contacts.transfer import Route, batch_status, plan_onjob, poll_results, run_plan
from bot.demo.run import DemoRun, wait_for_inbox
from bot.models import CustomerTier, Follow, Staff
from bot.wecom.client import build_clients
from segments.policy import STAGE_PATHS

CHANNELS = (("live_0618", "直播间", 1_200_000), ("store_qr", "门店二维码", 500_000))
BURST = 12  # new customers scanning each code


def _post(run: DemoRun, path: str, payload: dict[str, Any]) -> dict[str, Any]:
    response = requests.post(f"{run.sandbox.url}/_sandbox/{path}", json=payload, timeout=120)
    response.raise_for_status()
    return response.json()


def run_handover_scenes(run: DemoRun) -> list[list[str]]:
    settings = run.app.extensions["scrm.settings"]
    clients = build_clients(settings)
    db = run.app.extensions["scrm.db"]
    now = datetime.now(UTC)
    with db.sessions() as session:
        staff = list(session.scalars(select(Staff.userid).order_by(Staff.id)))
    rows: list[list[str]] = []
    stages = STAGE_PATHS[settings.tiers.stage_path]
    with db.begin() as session:
        ways = {}
        for (state, name, cost), member in zip(CHANNELS, (staff[:1], staff[1:3]), strict=True):
            row = create_channel(session, clients.contact.contact_way,
                                 ChannelSpec(state=state, name=name, members=member, tags=[f"渠道/{name}"],
                                             cost_fen=cost), stages, now)
            ways[state] = row.config_id
    for state, config_id in ways.items():
        for i in range(BURST):
            _post(run, f"contact_ways/{config_id}/scan", {"name": f"{state}新客{i}"})
    wait_for_inbox(run)
    with db.sessions() as session:
        reports = channel_report(session, settings, now, states=[state for state, _, _ in CHANNELS])
    for r in reports:
        tiers = "/".join(str(r.value_tiers.get(t, 0)) for t in ("high", "mid", "low"))
        per_high = f"{r.cost_per_high_fen / 100:,.0f} 元" if r.cost_per_high_fen is not None else "-"
        rows.append([f"channel report {r.name} ({r.state})",
                     f"{r.adds} adds ({BURST} just now by QR scan), {r.deletions} deleted; 高/中/低价值 {tiers}; "
                     f"{r.orders} orders, {r.revenue_fen / 100:,.0f} 元; cost {(r.cost_fen or 0) / 100:,.0f} 元 = "
                     f"{per_high} per 高价值 customer"])
    rows.append(_handover(run, clients, staff, now))
    return [[scene, " ".join(text.split())] for scene, text in rows]


def _handover(run: DemoRun, clients: Any, staff: list[str], now: datetime) -> list[str]:
    """The member with the most customers leaves their team: 重要价值 to one senior, the rest in turn."""
    db = run.app.extensions["scrm.db"]
    with db.sessions() as session:
        counts = session.execute(select(Staff.userid, func.count()).join(Follow, Follow.staff_id == Staff.id)
                                 .where(Follow.ended_at.is_(None)).group_by(Staff.userid)
                                 .order_by(func.count().desc(), Staff.userid)).all()
        leaving = counts[0][0]
        others = [s for s in staff if s != leaving]
        route = Route("rfm", "重要价值", (others[0],))
        plan = plan_onjob(session, leaving, others[1:3], [route])
        before = dict(session.execute(select(CustomerTier.customer_id, CustomerTier.value_tier).where(
            CustomerTier.customer_id.in_([r.customer_id for r in plan.rows]))).all())
        result = run_plan(session, clients.contact.transfer, plan, now)
    refused = plan.rows[0].external_userid
    _post(run, "transfers/refuse", {"external_userid": refused})
    wait_for_inbox(run)
    _post(run, "transfers/settle", {"force": True, "callbacks": False})
    with db.begin() as session:
        poll_results(session, clients.contact.transfer, now, result.batch)
    with db.sessions() as session:
        [status] = batch_status(session, [result.batch])
        after = dict(session.execute(select(CustomerTier.customer_id, CustomerTier.value_tier).where(
            CustomerTier.customer_id.in_(list(before)))).all())
    split = "; ".join(f"{n} → {to} ({why})" for _, to, why, n in plan.summary())
    reason = status.problems[0][3] if status.problems else "-"
    return [f"hand-over: {leaving}'s {len(plan.rows)} customers",
            f"{split}; {result.calls} transfer_customer calls; after 24 h: {status.counts.get('succeeded', 0)} "
            f"taken over, {status.counts.get('refused', 0)} refused ({reason}); tiers unchanged: {before == after}"]
