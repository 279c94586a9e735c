"""change_external_chat: customer groups (客户群) created, changed and dismissed. A member change that
follows the stored member version is applied as it comes; anything else re-reads the group with
groupchat/get, so a lost or out-of-order callback heals here or at the next ``scrm groups sync``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from wechatpy.exceptions import WeChatClientException

from bot.contacts.groups import (
    MEMBER_UPDATES,
    apply_member_change,
    dismiss_group,
    from_epoch,
    record_changes,
    upsert_group,
)
from bot.inbox.dispatcher import HandlerContext, on
from bot.models import CustomerGroup, utcnow
from bot.wecom.groups import group_chat

EVENT = "change_external_chat"
GONE = frozenset({40050, 90501})  # invalid chat_id; 该群不是客户群


@on("event", EVENT, "create")
def group_created(event: Any, ctx: HandlerContext) -> None:
    """A customer group was created: read it whole."""
    _reread(ctx, _chat_id(ctx))


@on("event", EVENT, "update")
def group_updated(event: Any, ctx: HandlerContext) -> None:
    """Members joined or left, or the owner, name or notice changed."""
    chat_id = _chat_id(ctx)
    group = ctx.session.scalar(select(CustomerGroup).where(CustomerGroup.chat_id == chat_id))
    if group is not None and group.dismissed_at is not None:
        ctx.log.info("update for group %s after it was dismissed; nothing to change", group.id)
        return
    if group is not None and ctx.fields.get("UpdateDetail") in MEMBER_UPDATES:
        changes = apply_member_change(ctx.session, group, ctx.fields, _event_time(ctx))
        if changes is not None:
            record_changes(ctx.session, group, changes, ctx.tag_rules, ctx.settings.tags.push_to_wecom)
            return
        ctx.log.info("group %s: member version %s, callback follows %s; reading the group again",
                     group.id, group.member_version or "-", ctx.fields.get("LastMemVer") or "-")
    _reread(ctx, chat_id)


@on("event", EVENT, "dismiss")
def group_dismissed(event: Any, ctx: HandlerContext) -> None:
    """The owner dissolved the group; it is kept with its history."""
    group = ctx.session.scalar(select(CustomerGroup).where(CustomerGroup.chat_id == _chat_id(ctx)))
    if group is None:
        ctx.log.info("dismissed group was never seen here; nothing to keep")
        return
    dismiss_group(ctx.session, group, _event_time(ctx))


def _reread(ctx: HandlerContext, chat_id: str) -> None:
    if ctx.clients is None:
        ctx.log.warning("group event without a WeCom client; `scrm groups sync` will read it")
        return
    try:
        chat = group_chat(ctx.clients.contact).get(chat_id).get("group_chat") or {}
    except WeChatClientException as exc:
        if exc.errcode not in GONE:
            raise
        # Dismissed (or no longer a customer group) before this event was handled: a retry cannot help.
        ctx.log.info("group event: the group is no longer readable in WeCom (%s); kept as it was", exc.errcode)
        return
    group, changes = upsert_group(ctx.session, chat, _event_time(ctx))
    record_changes(ctx.session, group, changes, ctx.tag_rules, ctx.settings.tags.push_to_wecom)


def _chat_id(ctx: HandlerContext) -> str:
    chat_id = str(ctx.fields.get("ChatId") or "")
    if not chat_id or len(chat_id) > 128:
        raise ValueError("change_external_chat event without a valid ChatId")
    return chat_id


def _event_time(ctx: HandlerContext) -> datetime:
    return from_epoch(ctx.fields.get("CreateTime")) or utcnow()
