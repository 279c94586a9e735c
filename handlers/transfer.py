"""在职/离职继承 outcomes that arrive as change_external_contact events: ``transfer_fail`` (the
customer refused, or the new member is full) and the takeover member's add (the hand-over is
done). The contact handlers keep customers and follows; these settle the ``transfers`` rows."""

from __future__ import annotations

from typing import Any

from bot.contacts.customers import from_epoch
from bot.contacts.transfer import record_failure, record_takeover
from bot.core.privacy import masked
from bot.inbox.dispatcher import HandlerContext, on
from bot.models import utcnow

EVENT = "change_external_contact"


@on("event", EVENT, "transfer_fail")
def transfer_refused(event: Any, ctx: HandlerContext) -> None:
    external_userid, takeover = _ids(ctx)
    reason = str(ctx.fields.get("FailReason") or "unknown")
    row = record_failure(ctx.session, external_userid, takeover, reason, _when(ctx))
    if row is None:
        ctx.log.info("transfer_fail for customer %s without a waiting transfer here", masked(external_userid))


@on("event", EVENT, "add_external_contact")
@on("event", EVENT, "add_half_external_contact")  # as the contact handler: either add completes a hand-over
def takeover_added(event: Any, ctx: HandlerContext) -> None:
    """Runs after the contact handler has upserted the new follow (handlers/__init__.py order)."""
    external_userid, takeover = _ids(ctx)
    record_takeover(ctx.session, external_userid, takeover, _when(ctx))


def _ids(ctx: HandlerContext) -> tuple[str, str]:
    external_userid = str(ctx.fields.get("ExternalUserID") or "")
    userid = str(ctx.fields.get("UserID") or "")
    if not external_userid or not userid:
        raise ValueError("change_external_contact event without ExternalUserID or UserID")
    return external_userid, userid


def _when(ctx: HandlerContext) -> Any:
    created = ctx.fields.get("CreateTime")
    return from_epoch(created) if created else utcnow()
