"""Broadcasts to customer groups (客户群群发): a filter over groups, one text per group tier, a
schedule, a preview, and a run that writes one outbox row per group (channel ``group_message``,
recipient the chat_id, sender the group's owner, who confirms in the client). The contact policy
for groups: quiet hours defer, a dismissed or ownerless group is skipped, and WeCom's per-group
quota (as many group mass messages per month as the month has days, or the corp's 7/week or 1/day:
``outbox.mass_message_rule``) skips a group that has used it, with the reason kept on the row."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from jinja2 import TemplateSyntaxError, UndefinedError, meta
from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from bot.campaigns.broadcasts import (
    BroadcastError,
    add_named,
    check_send_time,
    next_cron_time,
    tier_key_names,
)
from bot.campaigns.group_welcome import tier_label
from bot.contacts.groups import TierMix, group_tier_key, tier_mix
from bot.core.config import Settings
from bot.core.db import row_id
from bot.models import CustomerGroup, GroupBroadcast, GroupBroadcastRun, OutboxMessage, utcnow
from bot.outbox.messages import MessageTemplates, refusal
from bot.outbox.policy import COUNTED_STATUSES, ContactPolicy
from bot.outbox.queue import fit_text

logger = logging.getLogger(__name__)
CHANNEL, TRIGGER = "group_message", "group_campaign"
AUDIENCE_KEYS = {"names", "owners", "tags", "tiers", "mix", "min_members"}
GROUP_VARS = {"brand", "group"}
MAX_TEXT_BYTES = 4000


# ---------------------------------------------------------------- audience


@dataclass(frozen=True)
class GroupAudience:
    """Which groups: name contains any of ``names``; owner in ``owners``; any of the group's own
    ``tags``; the group's tier in ``tiers``; ``mix`` = {"tier": t, "min_share": 0–1}: at least that
    share of its known customers in value tier or RFM segment t; ``min_members`` present members."""

    names: tuple[str, ...] = ()
    owners: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    tiers: tuple[str, ...] = ()
    mix_tier: str = ""
    mix_share: float = 0.0
    min_members: int = 0

    @classmethod
    def parse(cls, raw: Any, tier_keys: set[str]) -> GroupAudience:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise BroadcastError("the group audience must be a JSON object")
        unknown = sorted(set(raw) - AUDIENCE_KEYS)
        if unknown:
            raise BroadcastError(f"unknown audience key(s) {unknown}; use {sorted(AUDIENCE_KEYS)}")
        lists = {k: _strings(raw.get(k), k) for k in ("names", "owners", "tags", "tiers")}
        bad = sorted(set(lists["tiers"]) - tier_keys)
        if bad:
            raise BroadcastError(f"unknown tier(s) {bad}")
        mix = raw.get("mix") or {}
        if not isinstance(mix, dict) or set(mix) - {"tier", "min_share"}:
            raise BroadcastError('mix must look like {"tier": "high", "min_share": 0.5}')
        mix_tier = str(mix.get("tier") or "")
        if mix and mix_tier not in tier_keys:
            raise BroadcastError(f"mix.tier must be a value tier or RFM segment, got {mix_tier!r}")
        try:
            share = float(mix.get("min_share", 0.5 if mix else 0))
            least = int(raw.get("min_members") or 0)
        except (TypeError, ValueError):
            raise BroadcastError("mix.min_share is a number 0–1 and min_members a whole number") from None
        if not 0 <= share <= 1 or least < 0 or isinstance(raw.get("min_members"), bool):
            raise BroadcastError("mix.min_share is 0–1 and min_members ≥ 0")
        return cls(lists["names"], lists["owners"], lists["tags"], lists["tiers"], mix_tier, share, least)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: list(getattr(self, k)) for k in ("names", "owners", "tags", "tiers")
                               if getattr(self, k)}
        if self.mix_tier:
            out["mix"] = {"tier": self.mix_tier, "min_share": self.mix_share}
        if self.min_members:
            out["min_members"] = self.min_members
        return out

    def describe(self) -> str:
        parts = [f"{k}={','.join(v)}" for k, v in self.to_dict().items() if isinstance(v, list)]
        if self.mix_tier:
            parts.append(f"{tier_label(self.mix_tier)} ≥ {self.mix_share:.0%}")
        if self.min_members:
            parts.append(f"≥{self.min_members} members")
        return "; ".join(parts) or "all groups"

    def select_groups(self, session: Session) -> list[tuple[CustomerGroup, TierMix]]:
        """The live groups that match, with their tier mix, in chat_id order."""
        query = select(CustomerGroup).where(CustomerGroup.dismissed_at.is_(None))
        if self.names:
            query = query.where(or_(*[CustomerGroup.name.contains(n, autoescape=True) for n in self.names]))
        if self.owners:
            query = query.where(CustomerGroup.owner_userid.in_(self.owners))
        groups = session.scalars(query.order_by(CustomerGroup.chat_id)).all()
        mixes = tier_mix(session, [g.id for g in groups])
        found = []
        for group in groups:
            mix = mixes[group.id]
            if self.tags and not set(self.tags) & set(group.tags or []):
                continue
            if self.tiers and group_tier_key(group, mix) not in self.tiers:
                continue
            if self.mix_tier and _share(mix, self.mix_tier) < self.mix_share:
                continue
            if mix.members < self.min_members:
                continue
            found.append((group, mix))
        return found


def _share(mix: TierMix, tier: str) -> float:
    if not mix.customers:
        return 0.0
    return max(mix.value_tiers.get(tier, 0), mix.rfm_segments.get(tier, 0)) / mix.customers


def _strings(value: Any, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise BroadcastError(f"{key} must be a list of non-empty strings")
    return tuple(v.strip() for v in value)


# ---------------------------------------------------------------- content


def check_templates(sources: Any, settings: Settings) -> dict[str, Any]:
    """Compile each text now: bad syntax, an unknown variable or key, or a text over 4000 bytes
    is refused at creation, not when the owner would send it."""
    if not isinstance(sources, dict) or "default" not in sources:
        raise BroadcastError("content needs a default template (for groups no tier template matches)")
    unknown = sorted(set(sources) - tier_key_names(settings) - {"default"})
    if unknown:
        raise BroadcastError(f"template for unknown tier(s) {unknown}; use a value tier, an RFM segment or default")
    env = MessageTemplates.from_settings(settings).env
    compiled = {}
    for key, source in sources.items():
        if not str(source).strip():
            raise BroadcastError(f"template {key!r} is empty")
        try:
            names = set(meta.find_undeclared_variables(env.parse(str(source))))
            compiled[key] = env.from_string(str(source))
        except TemplateSyntaxError as exc:
            raise BroadcastError(f"template {key!r}: syntax error on line {exc.lineno}: {exc.message}") from None
        if names - GROUP_VARS:
            raise BroadcastError(f"template {key!r} uses unknown variable(s) {sorted(names - GROUP_VARS)}; "
                                 f"available: {sorted(GROUP_VARS)}")
        try:
            text = _render(compiled[key], settings, "样例群", key if key != "default" else None)
        except UndefinedError as exc:
            raise BroadcastError(f"template {key!r}: {exc.message}") from None
        except Exception as exc:  # noqa: BLE001 - the sandbox's refusals, a filter's bad argument
            raise BroadcastError(f"template {key!r} refused: {refusal(exc)}") from None
        if len(text.encode("utf-8")) > MAX_TEXT_BYTES:
            raise BroadcastError(f"template {key!r} renders to more than {MAX_TEXT_BYTES} bytes (WeCom's text limit)")
    return compiled


def _render(template: Any, settings: Settings, name: str, tier: str | None) -> str:
    return template.render(brand=settings.app.brand_name,
                           group={"name": name, "tier": tier or "", "tier_name": tier_label(tier)}).strip()


def _text_for(compiled: dict[str, Any], settings: Settings, group: CustomerGroup, mix: TierMix) -> tuple[str, str]:
    """(template key, text) as it is sent: within WeCom's limit; a template that fails on this group's name
    is a BroadcastError naming it."""
    tier = group_tier_key(group, mix)
    key = tier if tier in compiled else "default"
    try:
        text = _render(compiled[key], settings, group.name or "客户群", tier)
    except Exception as exc:  # noqa: BLE001 - arithmetic, the sandbox's bounds: refused, named
        raise BroadcastError(f"template {key!r} refused for group {group.name or group.chat_id!r}: "
                             f"{refusal(exc)}") from None
    return key, fit_text(CHANNEL, text, f"group_broadcast:{key}")


# ---------------------------------------------------------------- create / find / cancel


@dataclass(frozen=True)
class GroupBroadcastSpec:
    name: str
    audience: dict[str, Any]
    templates: dict[str, str]
    send_at: datetime | None = None
    cron: str | None = None


def validate(settings: Settings, spec: GroupBroadcastSpec) -> tuple[GroupAudience, dict[str, Any]]:
    if not spec.name.strip() or len(spec.name) > 100:
        raise BroadcastError("a broadcast needs a name of 1–100 characters")
    return GroupAudience.parse(spec.audience, tier_key_names(settings)), check_templates(spec.templates, settings)


def create(session: Session, settings: Settings, spec: GroupBroadcastSpec, now: datetime | None = None
           ) -> GroupBroadcast:
    now = now or utcnow()
    audience, _ = validate(settings, spec)
    if (spec.send_at is None) == (spec.cron is None):
        raise BroadcastError("give either a send time (once) or a cron expression (repeating)")
    if session.scalar(select(GroupBroadcast.id).where(GroupBroadcast.name == spec.name)) is not None:
        raise BroadcastError(f"a group broadcast named {spec.name!r} exists already")
    if spec.send_at is not None:
        check_send_time(spec.send_at, settings, now)
    next_run = spec.send_at or next_cron_time(str(spec.cron), settings, now)
    broadcast = GroupBroadcast(name=spec.name, audience=audience.to_dict(), templates=dict(spec.templates),
                               send_at=spec.send_at, cron=spec.cron, status="scheduled", next_run_at=next_run)
    return add_named(session, broadcast, f"a group broadcast named {spec.name!r} exists already")


def find(session: Session, name_or_id: str) -> GroupBroadcast:
    found = session.scalar(select(GroupBroadcast).where(GroupBroadcast.name == name_or_id))
    if found is None and (number := row_id(name_or_id)) is not None:
        found = session.get(GroupBroadcast, number)
    if found is None:
        raise BroadcastError(f"no group broadcast {name_or_id!r} (see `scrm groups broadcast list`)")
    return found


def unsent(session: Session, broadcast: GroupBroadcast) -> int:
    """Group messages of its runs not yet handed to WeCom (a cancel would still stop them)."""
    refs = [run_ref(i) for i in session.scalars(select(GroupBroadcastRun.id).where(
        GroupBroadcastRun.broadcast_id == broadcast.id))]
    if not refs:
        return 0
    return session.scalar(select(func.count()).select_from(OutboxMessage).where(
        OutboxMessage.trigger_ref.in_(refs), OutboxMessage.channel == CHANNEL, OutboxMessage.status == "pending")) or 0


def cancel(session: Session, broadcast: GroupBroadcast, now: datetime | None = None) -> int:
    """Stop future runs; rows not yet handed to WeCom are skipped. Returns how many."""
    now = now or utcnow()
    broadcast.status, broadcast.next_run_at = "cancelled", None
    refs = [run_ref(i) for i in session.scalars(select(GroupBroadcastRun.id).where(
        GroupBroadcastRun.broadcast_id == broadcast.id))]
    if not refs:
        return 0
    due = (OutboxMessage.trigger_ref.in_(refs), OutboxMessage.channel == CHANNEL, OutboxMessage.status == "pending")
    count = session.scalar(select(func.count()).select_from(OutboxMessage).where(*due)) or 0
    session.execute(update(OutboxMessage).where(*due).values(status="skipped", reason="broadcast cancelled",
                                                             updated_at=now))
    return count


def run_ref(run_id: int) -> str:
    return f"group_broadcast_run:{run_id}"


# ---------------------------------------------------------------- policy, preview, plan


def skip_reasons(session: Session, policy: ContactPolicy, groups: list[CustomerGroup], at: datetime
                 ) -> dict[int, str]:
    """Why each group (by id) must not get a group mass message at ``at``."""
    reasons = {g.id: NO_OWNER for g in groups if not g.owner_userid}
    allowed, used = group_quota(session, policy, [g.chat_id for g in groups], at)
    for group in groups:
        if used[group.chat_id] >= allowed:
            reasons.setdefault(group.id, cap_reason(policy, allowed))
    return reasons


NO_OWNER = "the group has no owner to send it"


def cap_reason(policy: ContactPolicy, allowed: int) -> str:
    return f"WeCom per-group cap ({policy.mass_rule}: {allowed} per period) reached"


def group_quota(session: Session, policy: ContactPolicy, chats: list[str], at: datetime) -> tuple[int, Counter[str]]:
    """How many group mass messages WeCom allows per group in the period around ``at``, and how many
    each of these groups has in it already (planned or sent)."""
    since, allowed = policy.mass_period(at)
    used: Counter[str] = Counter()
    for start in range(0, len(chats), 1000):
        used.update(dict(session.execute(
            select(OutboxMessage.recipient, func.count()).where(
                OutboxMessage.channel == CHANNEL, OutboxMessage.recipient.in_(chats[start:start + 1000]),
                OutboxMessage.status.in_(COUNTED_STATUSES), OutboxMessage.scheduled_at >= since)
            .group_by(OutboxMessage.recipient)).all()))
    return allowed, used


@dataclass
class GroupPreview:
    groups: int = 0
    to_send: int = 0
    send_after: datetime | None = None
    deferred: bool = False
    owners: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    rows: list[dict[str, Any]] = field(default_factory=list)  # per group: chat, name, owner, tier, template, text


def preview(session: Session, settings: Settings, spec: GroupBroadcastSpec, at: datetime | None = None
            ) -> GroupPreview:
    """What a run at ``at`` would send, group by group (texts rendered), and what it skips. Writes nothing."""
    at = at or spec.send_at or utcnow()
    audience, compiled = validate(settings, spec)
    policy = ContactPolicy.from_settings(settings)
    send_after = policy.next_allowed(at)
    chosen = audience.select_groups(session)
    reasons = skip_reasons(session, policy, [g for g, _ in chosen], send_after)
    result = GroupPreview(groups=len(chosen), send_after=send_after, deferred=send_after != at)
    for group, mix in chosen:
        key, text = _text_for(compiled, settings, group, mix)
        why = reasons.get(group.id)
        if why:
            result.skipped[why] += 1
        else:
            result.to_send += 1
            result.owners[group.owner_userid] += 1
        result.rows.append({"chat_id": group.chat_id, "name": group.name, "owner": group.owner_userid,
                            "tier": group_tier_key(group, mix) or "", "template": key, "text": text,
                            "skipped": why or ""})
    return result


def spec_of(broadcast: GroupBroadcast) -> GroupBroadcastSpec:
    return GroupBroadcastSpec(broadcast.name, broadcast.audience, broadcast.templates, broadcast.send_at,
                              broadcast.cron)


def plan_run(session: Session, settings: Settings, broadcast: GroupBroadcast, run_at: datetime,
             now: datetime | None = None) -> GroupBroadcastRun:
    """Write this run's outbox rows, one per group (once: the same run time returns the first run)."""
    now = now or utcnow()
    existing = session.scalar(select(GroupBroadcastRun).where(GroupBroadcastRun.broadcast_id == broadcast.id,
                                                              GroupBroadcastRun.run_at == run_at))
    if existing is not None:
        return existing
    shown = preview(session, settings, spec_of(broadcast), max(run_at, now))
    run = GroupBroadcastRun(broadcast_id=broadcast.id, run_at=run_at, send_after=shown.send_after or now,
                            audience=shown.groups, to_send=shown.to_send, skipped=dict(shown.skipped))
    session.add(run)
    session.flush()
    for row in shown.rows:
        session.add(OutboxMessage(
            dedupe_key=f"{TRIGGER}:{run.id}:{row['chat_id']}", channel=CHANNEL, recipient=row["chat_id"],
            sender_userid=row["owner"] or None, trigger_kind=TRIGGER, trigger_ref=run_ref(run.id),
            content={"text": row["text"], "template": f"group_broadcast:{row['template']}", "group": row["name"]},
            status="skipped" if row["skipped"] else "pending", reason=row["skipped"] or None,
            scheduled_at=run.send_after, created_at=now, updated_at=now))
    session.flush()
    return run


def dispatch_due(session: Session, settings: Settings, now: datetime | None = None) -> list[GroupBroadcastRun]:
    """Plan every group broadcast whose time has come; move cron ones to their next time."""
    now = now or utcnow()
    runs = []
    due = session.scalars(select(GroupBroadcast).where(GroupBroadcast.status == "scheduled",
                                                       GroupBroadcast.next_run_at <= now)
                          .order_by(GroupBroadcast.next_run_at)).all()
    for broadcast in due:
        assert broadcast.next_run_at is not None
        try:
            with session.begin_nested():
                runs.append(plan_run(session, settings, broadcast, broadcast.next_run_at, now))
        except BroadcastError as exc:
            logger.error("group broadcast %r cannot run any more: %s", broadcast.name, exc)
            broadcast.status, broadcast.next_run_at = "failed", None
            continue
        except Exception:  # noqa: BLE001 - one broadcast's fault must not hold up the others; tried again next tick
            logger.exception("group broadcast %r not planned this time", broadcast.name)
            continue
        if broadcast.cron:
            broadcast.next_run_at = next_cron_time(broadcast.cron, settings, max(now, broadcast.next_run_at))
        else:
            broadcast.status, broadcast.next_run_at = "done", None
    session.flush()
    return runs


# ---------------------------------------------------------------- results


def results(session: Session, broadcast: GroupBroadcast, latest: int | None = None) -> list[dict[str, Any]]:
    """Per run (the ``latest`` ones only, if given), oldest first: its groups by outbox status (pending,
    submitted, confirmed, failed, skipped) and the reasons of those not sent."""
    out = []
    query = select(GroupBroadcastRun).where(GroupBroadcastRun.broadcast_id == broadcast.id)
    if latest is not None:
        query = query.order_by(GroupBroadcastRun.run_at.desc()).limit(latest)
    runs = sorted(session.scalars(query), key=lambda r: r.run_at)
    for run in runs:
        mine = OutboxMessage.trigger_ref == run_ref(run.id)
        statuses = dict(session.execute(select(OutboxMessage.status, func.count()).where(mine)
                                        .group_by(OutboxMessage.status)).all())
        reasons = dict(session.execute(select(OutboxMessage.reason, func.count()).where(
            mine, OutboxMessage.status.in_(("failed", "skipped"))).group_by(OutboxMessage.reason)).all())
        out.append({"run": run.id, "run_at": run.run_at, "send_after": run.send_after, "groups": run.audience,
                    "statuses": statuses, "reasons": reasons})
    return out


def broadcast_rows(session: Session) -> list[dict[str, Any]]:
    totals: dict[int, Counter[str]] = {}
    for run in session.scalars(select(GroupBroadcastRun)):
        totals.setdefault(run.broadcast_id, Counter()).update(
            {"runs": 1, "to_send": run.to_send, "skipped": sum(run.skipped.values())})
    return [{"id": b.id, "name": b.name, "status": b.status,
             "cron": b.cron, "send_at": b.send_at, "schedule": b.cron or (b.send_at.isoformat() if b.send_at else ""),
             "next_run_at": b.next_run_at,
             "audience": describe_audience(b.audience), **totals.get(b.id, Counter())}
            for b in session.scalars(select(GroupBroadcast).order_by(GroupBroadcast.id))]


def describe_audience(stored: dict[str, Any]) -> str:
    """A stored audience in words (its tiers are taken as known: the config may have changed since)."""
    tiers = set(stored.get("tiers", [])) | ({stored["mix"]["tier"]} if stored.get("mix") else set())
    return GroupAudience.parse(stored, tiers).describe()
