"""群 SOP: a sequence whose steps go to groups. Each step is a day count from the group's creation in
WeCom and a template under ``templates/messages/`` (the group's tier chooses its variant:
``group_sop/rules.high.j2`` → ``group_sop/rules.j2``). When a step falls due for a matching group it
becomes one outbox row (``group_message``, the owner sends it), under the same policy as group
broadcasts, except that a step over WeCom's per-group quota waits for the next period instead of
being skipped (a group without an owner is skipped, with the reason). A step reaches a group
once (its outbox key names SOP, step and group); steps that fell due before the SOP existed are not
sent, so a new SOP does not flood old groups."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from jinja2 import TemplateSyntaxError
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from bot.campaigns.broadcasts import BroadcastError, add_named, tier_key_names
from bot.campaigns.group_broadcasts import CHANNEL, NO_OWNER, GroupAudience, cap_reason, group_quota
from bot.campaigns.group_welcome import tier_label
from bot.contacts.groups import group_tier_key
from bot.core.config import Settings
from bot.models import GroupSop, OutboxMessage, utcnow
from bot.outbox.messages import MessageTemplates, TemplateMissing, TemplateRefused, refusal
from bot.outbox.policy import ContactPolicy
from bot.outbox.queue import fit_text

logger = logging.getLogger(__name__)
TRIGGER = "group_sop"
MAX_STEPS = 20
MAX_DAY = 365


@dataclass
class SopRun:
    planned: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    deferred: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)  # a template that failed → groups it was not planned for


def parse_steps(raw: Any, templates: MessageTemplates) -> list[dict[str, Any]]:
    """[{"day": N, "template": "group_sop/name"}], days 0–365 ascending-unique, each template found."""
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_STEPS:
        raise BroadcastError(f"an SOP has 1–{MAX_STEPS} steps")
    steps, days = [], set()
    for i, step in enumerate(raw):
        if not isinstance(step, dict) or set(step) != {"day", "template"}:
            raise BroadcastError(f"step {i + 1} needs day and template")
        day, ref = step["day"], step["template"]
        if isinstance(day, bool) or not isinstance(day, int) or not 0 <= day <= MAX_DAY or day in days:
            raise BroadcastError(f"step {i + 1}: day is a whole number 0–{MAX_DAY}, once per SOP")
        kind, _, name = str(ref).partition("/")
        if not kind or not name or "/" in name or "." in ref:
            raise BroadcastError(f"step {i + 1}: template is kind/name, e.g. group_sop/rules")
        if kind != TRIGGER:  # other kinds are written for a customer (customer.name), not for a group
            raise BroadcastError(f"step {i + 1}: a group SOP step is a {TRIGGER}/… template, not {kind}/…")
        try:
            templates.choose(kind, name)
        except (TemplateMissing, TemplateRefused) as exc:
            raise BroadcastError(f"step {i + 1}: {exc}") from None
        except TemplateSyntaxError as exc:
            raise BroadcastError(f"step {i + 1}: {refusal(exc)}") from None
        days.add(day)
        steps.append({"day": day, "template": f"{kind}/{name}"})
    return sorted(steps, key=lambda s: s["day"])


def create_sop(session: Session, settings: Settings, name: str, audience: dict[str, Any], steps: Any,
               now: datetime | None = None) -> GroupSop:
    if not name.strip() or len(name) > 100:
        raise BroadcastError("an SOP needs a name of 1–100 characters")
    if session.scalar(select(GroupSop.id).where(GroupSop.name == name)) is not None:
        raise BroadcastError(f"a group SOP named {name!r} exists already")
    parsed_audience = GroupAudience.parse(audience, tier_key_names(settings))
    sop = GroupSop(name=name, audience=parsed_audience.to_dict(),
                   steps=parse_steps(steps, MessageTemplates.from_settings(settings)), status="active",
                   created_at=now or utcnow())
    return add_named(session, sop, f"a group SOP named {name!r} exists already")


@dataclass
class StepPreview:
    day: int
    template: str
    reaches: int  # of the groups matching now, those whose day is still ahead (a new SOP does not flood old ones)
    sample_group: str
    sample: str


@dataclass
class SopPreview:
    groups: int
    owners: dict[str, int]
    steps: list[StepPreview]


def preview_sop(session: Session, settings: Settings, audience: dict[str, Any], steps: Any,
                now: datetime | None = None) -> SopPreview:
    """What an SOP created now would do with the groups there are: which match, each step with how many of
    them it will still reach and its text for the first of them. Writes nothing; BroadcastError says what is
    wrong with the audience or the steps (a template that fails on a real group's name included)."""
    now = now or utcnow()
    parsed = GroupAudience.parse(audience, tier_key_names(settings))
    templates = MessageTemplates.from_settings(settings)
    chosen = parsed.select_groups(session)
    owners: dict[str, int] = {}
    for group, _ in chosen:
        owners[group.owner_userid or ""] = owners.get(group.owner_userid or "", 0) + 1
    shown = []
    for step in parse_steps(steps, templates):
        day = int(step["day"])
        ahead = [(g, mix) for g, mix in chosen if (g.wecom_created_at or g.created_at) + timedelta(days=day)
                 >= now - timedelta(days=1)]
        group, mix = (ahead or chosen or [(None, None)])[0]
        tier = group_tier_key(group, mix) if group is not None else None
        kind, _, name = step["template"].partition("/")
        try:
            text = templates.render(kind, name, [tier], brand=settings.app.brand_name,
                                    group={"name": (group.name if group else "样例群") or "客户群", "tier": tier or "",
                                           "tier_name": tier_label(tier)}).text
        except (TemplateMissing, TemplateRefused) as exc:
            raise BroadcastError(f"day {day}: {exc}") from None
        shown.append(StepPreview(day, step["template"], len(ahead), (group.name if group else "样例群") or "客户群",
                                 fit_text(CHANNEL, text, step["template"])))
    return SopPreview(len(chosen), owners, shown)


def sop_templates(settings: Settings) -> list[str]:
    """The group SOP templates there are (``group_sop/<name>``, tier variants left out), for a form's choices."""
    env = MessageTemplates.from_settings(settings).env
    names = env.list_templates(filter_func=lambda n: n.startswith("group_sop/"))
    return sorted({n.removesuffix(".j2") for n in names if n.count(".") == 1 and n.endswith(".j2")})


def cancel_sop(session: Session, sop: GroupSop, now: datetime | None = None) -> int:
    """Stop an SOP; its steps not yet handed to WeCom are skipped. Returns how many."""
    sop.status = "cancelled"
    result = session.execute(update(OutboxMessage).where(
        OutboxMessage.trigger_kind == "group_sop", OutboxMessage.trigger_ref.like(f"group_sop:{sop.id}:%"),
        OutboxMessage.status == "pending").values(status="skipped", reason="SOP cancelled", updated_at=now or utcnow()))
    return result.rowcount


def planned_per_step(session: Session) -> dict[str, int]:
    """Group messages each SOP step planned, by its trigger ref (``group_sop:<id>:<step index>``)."""
    return dict(session.execute(select(OutboxMessage.trigger_ref, func.count()).where(
        OutboxMessage.trigger_kind == "group_sop").group_by(OutboxMessage.trigger_ref)).all())


def run_sops(session: Session, settings: Settings, now: datetime | None = None) -> SopRun:
    """Plan every step that is due for a matching group and not planned before."""
    now = now or utcnow()
    policy = ContactPolicy.from_settings(settings)
    templates = MessageTemplates.from_settings(settings)
    send_after = policy.next_allowed(now)
    result = SopRun()
    for sop in session.scalars(select(GroupSop).where(GroupSop.status == "active").order_by(GroupSop.id)):
        chosen = GroupAudience.parse(sop.audience, tier_key_names(settings)).select_groups(session)
        due: list[tuple[Any, Any, int, dict[str, Any]]] = []
        for group, mix in chosen:
            start = group.wecom_created_at or group.created_at
            for index, step in enumerate(sop.steps):
                at = start + timedelta(days=int(step["day"]))
                if sop.created_at - timedelta(days=1) <= at <= now:
                    due.append((group, mix, index, step))
        keys = {f"{TRIGGER}:{sop.id}:{i}:{g.chat_id}" for g, _, i, _ in due}
        done = set(session.scalars(select(OutboxMessage.dedupe_key).where(OutboxMessage.dedupe_key.in_(keys)))) \
            if keys else set()
        allowed, used = group_quota(session, policy, [g.chat_id for g, _, _, _ in due], send_after)
        for group, mix, index, step in due:
            key = f"{TRIGGER}:{sop.id}:{index}:{group.chat_id}"
            if key in done:
                continue
            kind, _, name = step["template"].partition("/")
            tier = group_tier_key(group, mix)
            try:
                rendered = templates.render(kind, name, [tier], brand=settings.app.brand_name,
                                            group={"name": group.name or "客户群", "tier": tier or "",
                                                   "tier_name": tier_label(tier)})
            except (TemplateMissing, TemplateRefused) as exc:  # not planned: tried again once the file is fixed
                result.refused[str(exc)] = result.refused.get(str(exc), 0) + 1
                continue
            if group.owner_userid and used[group.chat_id] >= allowed:
                # Not dropped: the step waits for the group's next quota period.
                reason = cap_reason(policy, allowed)
                result.deferred[reason] = result.deferred.get(reason, 0) + 1
                continue
            why = None if group.owner_userid else NO_OWNER
            if why is None:
                used[group.chat_id] += 1  # the next step for this group in this run counts this one
            session.add(OutboxMessage(
                dedupe_key=key, channel=CHANNEL, recipient=group.chat_id, sender_userid=group.owner_userid or None,
                trigger_kind=TRIGGER, trigger_ref=f"group_sop:{sop.id}:{index}",
                content={"text": fit_text(CHANNEL, rendered.text, rendered.template), "template": rendered.template,
                         "group": group.name},
                status="skipped" if why else "pending", reason=why, scheduled_at=send_after, created_at=now,
                updated_at=now))
            done.add(key)
            if why:
                result.skipped[why] = result.skipped.get(why, 0) + 1
            else:
                result.planned += 1
    session.flush()
    for reason, groups in result.refused.items():
        logger.error("group SOP step not planned for %d group(s): %s", groups, reason)
    return result
