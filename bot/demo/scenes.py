"""Demo scenes for the event handlers: each drives one thing a brand sees in WeCom through the
sandbox and the real webhook, then reads back what the customer got."""

from __future__ import annotations

from typing import Any

import requests
from sqlalchemy import select

from bot.demo.run import OPEN_KFID, DemoRun, wait_for_inbox
from bot.models import Customer, CustomerTag, OutboxMessage, Tag, TagGroup


def _post(run: DemoRun, path: str, payload: dict[str, Any]) -> dict[str, Any]:
    response = requests.post(f"{run.sandbox.url}/_sandbox/{path}", json=payload, timeout=60)
    response.raise_for_status()
    return response.json()


def _sent(run: DemoRun) -> dict[str, Any]:
    return requests.get(f"{run.sandbox.url}/_sandbox/sent", timeout=30).json()


def _one(run: DemoRun, **where: Any) -> Customer | None:
    with run.app.extensions["scrm.db"].sessions() as session:
        query = select(Customer)
        for key, value in where.items():
            query = query.where(getattr(Customer, key) == value)
        return session.scalar(query.order_by(Customer.id).limit(1))


def _tags(run: DemoRun, external_userid: str) -> list[str]:
    with run.app.extensions["scrm.db"].sessions() as session:
        rows = session.execute(select(TagGroup.name, Tag.name).join(Tag).join(CustomerTag).join(Customer).where(
            Customer.external_userid == external_userid, CustomerTag.removed_at.is_(None)))
        return sorted(f"{g}/{n}" for g, n in rows)


def run_scenes(run: DemoRun, staff_userid: str) -> list[list[str]]:
    """Returns rows of (scene, what happened)."""
    rows: list[list[str]] = []
    added = _post(run, "contacts/add", {"userid": staff_userid, "name": "周女士", "state": "live_0618"})
    wait_for_inbox(run)
    ext = added["external_userid"]
    wecom = requests.get(f"{run.sandbox.url}/_sandbox/contacts/{ext}", timeout=30).json()["follows"]
    welcome = next((w["text"] for w in _sent(run)["welcomes"] if w["external_userid"] == ext), "(none)")
    rows.append(["new customer via live_0618", f"tags here {_tags(run, ext)}, in WeCom "
                 f"{sorted(t['tag_name'] for f in wecom for t in f['tags'])}; welcome: {welcome}"])
    vip = _one(run, rfm_segment="important_value")
    if vip is not None:
        _post(run, "contacts/add", {"userid": staff_userid, "external_userid": vip.external_userid, "name": vip.name})
        wait_for_inbox(run)
        text = next((w["text"] for w in reversed(_sent(run)["welcomes"])
                     if w["external_userid"] == vip.external_userid), "(none)")
        rows.append([f"重要价值 customer {vip.name} re-adds", f"welcome: {text}"])
    for tier in ("high", "low"):
        customer = _one(run, value_tier=tier)
        if customer is None:
            continue
        _post(run, "kf/text", {"open_kfid": OPEN_KFID, "external_userid": customer.external_userid,
                               "content": "这个多少钱？"})
        wait_for_inbox(run)
        reply = [m["text"]["content"] for m in _sent(run)["kf"] if m["touser"] == customer.external_userid]
        rows.append([f"kf「多少钱」from a {tier}-tier customer", f"reply: {reply[-1] if reply else '(none)'}"])
    _post(run, "kf/text", {"open_kfid": OPEN_KFID, "external_userid": "wmDEMOBUSY", "contents": ["多少钱"] * 6})
    wait_for_inbox(run)
    with run.app.extensions["scrm.db"].sessions() as session:
        outcomes = session.execute(select(OutboxMessage.status, OutboxMessage.reason).where(
            OutboxMessage.recipient == "wmDEMOBUSY").order_by(OutboxMessage.id)).all()
    skipped = [reason for status, reason in outcomes if status == "skipped"]
    rows.append(["6 questions in one go", f"{sum(s == 'sent' for s, _ in outcomes)} replies sent, "
                 f"{len(skipped)} not sent: {skipped[0] if skipped else '-'}"])
    _post(run, "kf/text", {"open_kfid": OPEN_KFID, "external_userid": "wmDEMOQUIT", "content": "退订"})
    wait_for_inbox(run)
    quit_ = _one(run, external_userid="wmDEMOQUIT")
    reply = [m["text"]["content"] for m in _sent(run)["kf"] if m["touser"] == "wmDEMOQUIT"]
    rows.append(["kf「退订」", f"opted out: {bool(quit_ and quit_.opted_out)}; reply: {reply[-1] if reply else '-'}"])
    rows.append(["moment likes (polled)", _moments(run, staff_userid)])
    return [[scene, " ".join(text.split())] for scene, text in rows]


def _moments(run: DemoRun, staff_userid: str) -> str:
    from bot.contacts.moments import poll_moments

    fans = [c.external_userid for c in (_one(run, value_tier=t) for t in ("high", "mid", "low")) if c]
    _post(run, "moments", {"moment_id": "momDEMO", "creator": staff_userid, "create_type": 1,
                           "likes": [{"external_userid": e} for e in fans]})
    processor = run.app.extensions["scrm.processor"]
    settings = run.app.extensions["scrm.settings"]
    with run.app.extensions["scrm.db"].begin() as session:
        first = poll_moments(session, processor.clients.contact, settings, processor.tag_rules)
    with run.app.extensions["scrm.db"].begin() as session:
        second = poll_moments(session, processor.clients.contact, settings, processor.tag_rules)
    return (f"first poll recorded {first.likes} likes (+{first.tags_added} tags), "
            f"second poll {second.likes} (each like counts once)")
