"""Scheduled work for hand-overs: WeCom settles each transfer up to 24 hours after it started
(or when the customer refuses), so waiting customers are asked about until every one is settled."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from bot.schedule.jobs import runtime

logger = logging.getLogger(__name__)


def transfer_results() -> dict[str, int]:
    """Poll transfer_result / resigned/transfer_result for the pairs with customers still waiting."""
    from sqlalchemy import select

    from bot.contacts.transfer import poll_results
    from bot.models import Transfer

    rt = runtime()
    if rt.clients is None:
        return {}
    with rt.db.begin() as session:
        if session.scalar(select(Transfer.id).where(Transfer.status == "waiting").limit(1)) is None:
            return {}
        changed = poll_results(session, rt.clients.contact.transfer, datetime.now(UTC))
    if changed:
        logger.info("hand-over outcomes recorded: %s", dict(changed))
    return dict(changed)
