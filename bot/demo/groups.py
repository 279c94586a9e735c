"""Demo scene for customer groups: the brand's members create a VIP group and a 打卡群 in WeCom (the
sandbox), customers join and leave through real change_external_chat callbacks, and the bot shows
each group's tier mix, the VIP group's welcome and join code, and a broadcast to both groups."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import requests
from sqlalchemy import func, select

from bot.core.times import zone_name
from bot.demo.run import DemoRun, wait_for_inbox
from bot.models import Customer, CustomerGroup, CustomerTier, utcnow
from segments.rfm import SEGMENT_NAMES

VIP_GROUP, CHECKIN_GROUP = "小满咖啡会员群", "每日打卡群"


def _post(run: DemoRun, path: str, payload: dict[str, Any]) -> dict[str, Any]:
    response = requests.post(f"{run.sandbox.url}/_sandbox/{path}", json=payload, timeout=60)
    response.raise_for_status()
    return response.json()


def _tiered(run: DemoRun, segments: tuple[str, ...], limit: int) -> list[str]:
    """Customers in these RFM segments, highest score first (a group may hold any member's customers)."""
    with run.app.extensions["scrm.db"].sessions() as session:
        return list(session.scalars(
            select(Customer.external_userid).join(CustomerTier, CustomerTier.customer_id == Customer.id)
            .where(CustomerTier.rfm_segment.in_(segments))
            .order_by(CustomerTier.score.desc().nulls_last(), Customer.id).limit(limit)))


def run_group_scene(run: DemoRun) -> list[list[str]]:
    """Returns rows of (scene, what happened). The groups' owner is the member with most customers."""
    from bot.campaigns import group_broadcasts as gb
    from bot.campaigns.group_welcome import make_join_way, push_welcome
    from bot.contacts.groups import tier_mix
    from bot.outbox.group_mass import submit_group_messages
    from bot.outbox.policy import ContactPolicy
    from bot.wecom.groups import group_chat

    rows: list[list[str]] = []
    with run.app.extensions["scrm.db"].sessions() as session:
        owner = session.scalar(select(Customer.owner_userid).where(Customer.owner_userid.is_not(None))
                               .group_by(Customer.owner_userid).order_by(func.count().desc(), Customer.owner_userid)
                               .limit(1)) or ""
    vip_members = _tiered(run, ("important_value",), 8) + _tiered(run, ("important_develop",), 2)
    low_members = _tiered(run, ("general_retain", "general_develop"), 12)
    vip = _post(run, "groups", {"owner": owner, "name": VIP_GROUP, "members": vip_members[:-1],
                                "notice": "会员日每月 18 号"})["chat_id"]
    checkin = _post(run, "groups", {"owner": owner, "name": CHECKIN_GROUP,
                                    "members": [*low_members[:-1], "wmDEMOWECHATFRIEND01"]})["chat_id"]
    _post(run, f"groups/{vip}/join", {"members": vip_members[-1:], "scene": 3})
    _post(run, f"groups/{checkin}/leave", {"members": low_members[:1]})
    wait_for_inbox(run)
    settings, db = run.app.extensions["scrm.settings"], run.app.extensions["scrm.db"]
    with db.sessions() as session:
        groups = session.scalars(select(CustomerGroup).order_by(CustomerGroup.id)).all()
        mixes = tier_mix(session, [g.id for g in groups])
        for group in groups:
            mix = mixes[group.id]
            segments = "、".join(f"{SEGMENT_NAMES.get(k, k)} {n}" for k, n in
                                sorted(mix.rfm_segments.items(), key=lambda p: (-p[1], p[0])))
            tiers = "、".join(f"{k} {n}" for k, n in sorted(mix.value_tiers.items(), key=lambda p: (-p[1], p[0])))
            rows.append([f"group {group.name}", f"{mix.members} members, {mix.customers} known customers: "
                                                f"{segments}; value tiers {tiers}"])
    contact = run.app.extensions["scrm.processor"].clients.contact
    api = group_chat(contact)
    with db.begin() as session:
        group = session.scalar(select(CustomerGroup).where(CustomerGroup.chat_id == vip))
        group.tier = "important_value"
        welcome = push_welcome(session, settings, api, group)
        make_join_way(session, api, group, "vip_group")
        rows.append([f"{VIP_GROUP} welcome ({welcome.template})", welcome.text])
        rows.append([f"{VIP_GROUP} join code (state vip_group)", group.join_qr_code or "-"])
    now = utcnow()
    spec = gb.GroupBroadcastSpec("demo 群发：新品试饮", {"names": [VIP_GROUP, CHECKIN_GROUP]},
                                 {"default": "{{ brand }}新品试饮周开始啦，群里接龙报名～",
                                  "important_value": "{{ group.name }}会员优先：新品试饮名额已为您预留。"},
                                 send_at=now + timedelta(minutes=1))
    with db.begin() as session:
        broadcast = gb.create(session, settings, spec, now)
        run_ = gb.plan_run(session, settings, broadcast, spec.send_at or now, now)
    sent = submit_group_messages(db, contact, ContactPolicy.from_settings(settings),
                                 now=run_.send_after + timedelta(seconds=1))
    outcome = f"{sent['submitted']} submitted to {owner} to confirm in WeCom" if sent else \
        f"sent from {run_.send_after.astimezone(settings.tz):%H:%M} {zone_name(settings.tz)} (after quiet hours)"
    rows.append(["broadcast to both groups", f"{run_.to_send} group message(s) planned; {outcome}"])
    return [[scene, " ".join(text.split())] for scene, text in rows]
