"""change_external_tag: a corp tag or group was created, renamed, deleted or re-ordered in WeCom.
The event names one id only, so the whole (small) library is mirrored again."""

from __future__ import annotations

from typing import Any

from bot.inbox.dispatcher import HandlerContext, on
from bot.tagging.sync import mirror_corp_tags


@on("event", "change_external_tag")
def corp_tags_changed(event: Any, ctx: HandlerContext) -> None:
    if ctx.clients is None:
        raise RuntimeError("WeCom is not configured: cannot read the corp tag library")
    result = mirror_corp_tags(ctx.session, ctx.clients.contact)
    ctx.log.info("corp tags %s %s (%s): %s", ctx.fields.get("TagType") or "?", ctx.fields.get("Id"),
                 ctx.fields.get("ChangeType"), result)
