"""客户朋友圈 interactions. WeCom sends no callback for likes or comments, so they are polled:
get_moment_list over the last ``moments.lookback_days`` (one ≤30-day window), then, for each
moment and each member who posted it, get_moment_comments. Each like and comment becomes an
interaction once, and the moment auto-tag rules apply."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from wechatpy.exceptions import WeChatClientException

from bot.contacts.interactions import add_interaction
from bot.core.config import Settings
from bot.core.forgotten import is_forgotten
from bot.models import Customer, utcnow
from bot.tagging.rules import TagRules
from bot.tagging.system import apply_rules
from bot.wecom.api import cursor_pages

logger = logging.getLogger(__name__)
CORP_MOMENT = 0


@dataclass
class MomentPoll:
    moments: int = 0
    likes: int = 0
    comments: int = 0
    tags_added: int = 0
    errors: int = 0


def poll_moments(session: Session, contact_client: Any, settings: Settings, rules: TagRules,
                 now: datetime | None = None, progress: Callable[[int], None] | None = None) -> MomentPoll:
    end = now or utcnow()
    start = end - timedelta(days=settings.moments.lookback_days)
    result = MomentPoll()
    api = contact_client.moment
    for moment in api.gen_moment_list(int(start.timestamp()), int(end.timestamp())):
        result.moments += 1
        try:
            for userid in _posters(api, moment):
                _record(session, settings, rules, moment, userid, api.get_moment_comments(moment["moment_id"], userid),
                        result)
        except WeChatClientException as exc:
            result.errors += 1
            logger.warning("moment %s: interactions not readable (%s)", moment.get("moment_id"), exc)
        if progress:
            progress(1)
    return result


def _posters(api: Any, moment: dict[str, Any]) -> list[str]:
    """Personal moments have one poster (the creator); a corp moment is posted by every member
    who published its task, and each member's copy has its own likes and comments."""
    if int(moment.get("create_type", 1)) != CORP_MOMENT:
        return [moment["creator"]] if moment.get("creator") else []
    pages = cursor_pages(lambda cursor: api.get_moment_task(moment["moment_id"], cursor=cursor, limit=1000))
    return [t["userid"] for page in pages for t in page.get("task_list", []) if int(t.get("publish_status", 0)) == 1]


def _record(session: Session, settings: Settings, rules: TagRules, moment: dict[str, Any], userid: str,
            data: dict[str, Any], result: MomentPoll) -> None:
    moment_id = moment["moment_id"]
    for kind, items in (("moment_like", data.get("like_list") or []), ("moment_comment",
                                                                       data.get("comment_list") or [])):
        for item in items:
            external_userid = item.get("external_userid")
            if not external_userid:  # a member's like: not a customer interaction
                continue
            created = int(item.get("create_time") or 0)
            # One like per customer per moment; comments are kept each (by time).
            ref = f"{kind}:{moment_id}:{external_userid}" + (f":{created}" if kind == "moment_comment" else "")
            customer = _customer(session, external_userid)
            if customer is None:  # forgotten on request: no new data about them
                continue
            occurred = datetime.fromtimestamp(created, tz=utcnow().tzinfo) if created else utcnow()
            if add_interaction(session, customer, kind, ref, occurred, userid, {"moment_id": moment_id}):
                result.likes += kind == "moment_like"
                result.comments += kind == "moment_comment"
                result.tags_added += len(apply_rules(session, rules, customer.id, kind,
                                                     push=settings.tags.push_to_wecom))


def _customer(session: Session, external_userid: str) -> Customer | None:
    customer = session.scalar(select(Customer).where(Customer.external_userid == external_userid))
    if customer is None and is_forgotten(session, external_userid):
        return None
    if customer is None:
        customer = Customer(external_userid=external_userid, name="")
        session.add(customer)
        session.flush()
    return customer
