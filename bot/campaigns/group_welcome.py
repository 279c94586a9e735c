"""入群欢迎语 and 群活码 for customer groups.

A group's welcome is rendered from ``templates/messages/group_welcome/`` for the group's tier (the
tier an operator gave it, else the tier most of its customers are in) and stored in WeCom as a
group welcome template (add, or edit when the group has one). WeCom has no API that binds a template
to a chat: with ``notify`` the owner is prompted in the client to apply it, and WeCom then sends it to
each joiner, with ``%NICKNAME%`` replaced by their nickname.

A join way (「加入群聊」, scene 2 = QR code) with a ``state`` lets a tier's group be offered to that
tier: ``tier_group`` gives the code of the group kept for a tier, which the 1:1 welcome of that
tier's customers can carry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.contacts.groups import group_tier_key, tier_mix
from bot.core.config import Settings
from bot.models import CustomerGroup
from bot.outbox.messages import TIER_NAMES, MessageTemplates, Rendered
from bot.wecom.groups import MAX_STATE, MAX_WELCOME_TEXT_BYTES
from segments.rfm import SEGMENT_NAMES

NICKNAME = "%NICKNAME%"


class GroupWelcomeError(ValueError):
    """The welcome or join way cannot be made as asked; the message says why."""


def tier_label(tier: str | None) -> str:
    return TIER_NAMES.get(tier or "", "") or SEGMENT_NAMES.get(tier or "", "") or (tier or "")


def render_welcome(session: Session, settings: Settings, group: CustomerGroup,
                   templates: MessageTemplates | None = None) -> Rendered:
    """The welcome text for this group: group_welcome/default.<tier>.j2 → default.j2."""
    templates = templates or MessageTemplates.from_settings(settings)
    tier = group_tier_key(group, tier_mix(session, [group.id])[group.id])
    rendered = templates.render("group_welcome", "default", [tier], brand=settings.app.brand_name,
                                group={"name": group.name or "客户群", "tier": tier or "",
                                       "tier_name": tier_label(tier)})
    if len(rendered.text.encode("utf-8")) > MAX_WELCOME_TEXT_BYTES:
        raise GroupWelcomeError(f"{rendered.template} renders to more than {MAX_WELCOME_TEXT_BYTES} bytes")
    return rendered


@dataclass
class WelcomeResult:
    template_id: str
    template: str
    text: str
    created: bool


def push_welcome(session: Session, settings: Settings, api: Any, group: CustomerGroup,
                 notify: bool = True) -> WelcomeResult:
    """Store the group's welcome in WeCom (add once, edit after) and remember its template_id."""
    rendered = render_welcome(session, settings, group)
    if group.welcome_template_id:
        api.edit_welcome_template(group.welcome_template_id, rendered.text)
        created = False
    else:
        group.welcome_template_id = str(api.add_welcome_template(rendered.text, notify=notify)["template_id"])
        created = True
    group.welcome_text = rendered.text
    session.flush()
    return WelcomeResult(group.welcome_template_id, rendered.template, rendered.text, created)


def remove_welcome(session: Session, api: Any, group: CustomerGroup) -> bool:
    if not group.welcome_template_id:
        return False
    api.del_welcome_template(group.welcome_template_id)
    group.welcome_template_id, group.welcome_text = None, None
    session.flush()
    return True


def make_join_way(session: Session, api: Any, group: CustomerGroup, state: str, remark: str = "") -> CustomerGroup:
    """A QR-code join way for this group with ``state`` (≤ 30 characters), created or overwritten,
    its QR code read back with get_join_way."""
    state = state.strip()
    if not state or len(state) > MAX_STATE:
        raise GroupWelcomeError(f"a join way's state is 1–{MAX_STATE} characters")
    if group.dismissed_at is not None:
        raise GroupWelcomeError("the group is dismissed")
    clash = session.scalar(select(CustomerGroup.chat_id).where(CustomerGroup.join_state == state,
                                                               CustomerGroup.id != group.id))
    if clash:
        raise GroupWelcomeError(f"state {state!r} is already the join way of group {clash}")
    if group.join_config_id:
        api.update_join_way(group.join_config_id, [group.chat_id], state=state, remark=remark, auto_create_room=0)
    else:
        group.join_config_id = str(api.add_join_way([group.chat_id], state=state, remark=remark,
                                                    auto_create_room=0)["config_id"])
    way = api.get_join_way(group.join_config_id).get("join_way") or {}
    group.join_state, group.join_qr_code = state, str(way.get("qr_code") or "") or None
    session.flush()
    return group


def tier_group(session: Session, tiers: list[str | None]) -> dict[str, str] | None:
    """The group kept for the first of these tiers that has one with a join code (name + QR URL)."""
    for tier in tiers:
        if not tier:
            continue
        group = session.scalar(select(CustomerGroup).where(
            CustomerGroup.tier == tier, CustomerGroup.dismissed_at.is_(None),
            CustomerGroup.join_qr_code.is_not(None)).order_by(CustomerGroup.id).limit(1))
        if group is not None:
            return {"name": group.name, "qr_code": group.join_qr_code or "", "tier": tier}
    return None
