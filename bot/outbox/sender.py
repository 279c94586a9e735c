"""Sends outbox rows through the WeCom channel each names, recording the outcome on the row.

pending → sending → sent | failed | skipped. A row is claimed with a conditional UPDATE and the
claim committed before WeCom is called, so two senders never send one row. A call that gets no
answer (or a row a crash left "sending") is sent again only on channels where a resend cannot
duplicate — the kf ``msgid`` and the welcome / event codes are single-use on WeCom's side — while
the message's window lasts and for at most ``outbox.resend_attempts`` attempts; WeCom refusing
such a resend as "already used" means the unanswered attempt delivered it. Other channels are
never repeated blindly: their outcome is unknown, and the row says so.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import requests
from sqlalchemy import and_, case, or_, select, update
from wechatpy.exceptions import WeChatClientException

from bot.core.config import Settings
from bot.core.db import Database
from bot.core.lease import LeaseKeeper
from bot.models import OutboxMessage, utcnow

logger = logging.getLogger(__name__)

# Conversational channels, sent as soon as the row is committed.
IMMEDIATE_CHANNELS = ("welcome", "kf", "kf_event", "app_message")
RESENDABLE = frozenset({"welcome", "kf", "kf_event"})
WELCOME_BUSY = 41096  # another app is sending this customer's welcome right now: may retry
RATE_LIMITED = 45009  # over the API's per-minute limit: WeCom blocks it for a minute, then it may be sent
# Refused for the frequency limit this many times (an hour's block is sixty): give the row up.
RATE_LIMITED_ATTEMPTS = 10
# App messages one member may get: WeCom drops the rest without an error (WECOM.md §9).
MEMBER_PACE = ((timedelta(minutes=1), 30), (timedelta(hours=1), 1000))
EXPLAINED = {  # WeCom's global error codes (developer.work.weixin.qq.com/document/path/90313)
    41050: "the welcome code has expired (it works for 20 seconds after the add)",
    41051: "the welcome was already sent (the code works once) or the customer has started chatting with the member",
    41096: "another app is sending this welcome right now",
    95018: "the kf session does not allow sending (outside the 48-hour window or taken by a servicer)",
    95001: "the kf send limit is reached (5 messages after the customer's last message)",
    95002: "the kf send time limit has passed (48 hours after the customer's last message)",
    95000: "the kf account does not exist",
}
# WeCom's answer to a resend of something it already has: a used welcome code is 41051 (send_welcome_msg's
# page, WECOM.md §4; 41050 is an expired code, which says nothing of an earlier attempt). For a kf msgid or
# a kf event code WeCom's code is unconfirmed: an invalid-parameter answer (40058) that names it.
ALREADY_USED = {"welcome": frozenset({41051}), "kf_event": frozenset({40058}), "kf": frozenset({40058})}
ALREADY_USED_NAMES = {"kf": "msgid", "kf_event": "code"}
# Marks a row whose last attempt got no answer: WeCom may have it already (see ALREADY_USED).
UNANSWERED = "no answer from WeCom"


class OutboxSender:
    def __init__(self, db: Database, clients: Any, settings: Settings,
                 clock: Callable[[], datetime] = utcnow, sleep: Callable[[float], None] = time.sleep) -> None:
        self.db, self.clients, self.settings = db, clients, settings
        self.clock, self.sleep = clock, sleep

    # ------------------------------------------------------------ batches

    def send_due(self, channels: Iterable[str] = IMMEDIATE_CHANNELS, limit: int = 100) -> Counter[str]:
        self.recover_stale()
        return self.send(self.due_ids(channels, limit))

    def due_ids(self, channels: Iterable[str] = IMMEDIATE_CHANNELS, limit: int = 100) -> list[int]:
        """Pending rows of these channels whose time has come, oldest first."""
        with self.db.begin() as session:
            return list(session.scalars(
                select(OutboxMessage.id).where(OutboxMessage.status == "pending",
                                               OutboxMessage.channel.in_(list(channels)),
                                               OutboxMessage.scheduled_at <= self.clock())
                .order_by(OutboxMessage.scheduled_at, OutboxMessage.id).limit(limit)))

    def send(self, ids: Iterable[int]) -> Counter[str]:
        outcome: Counter[str] = Counter()
        for outbox_id in ids:
            status = self.send_one(outbox_id)
            if status:
                outcome[status] += 1
        return outcome

    def recover_stale(self, lease_seconds: float | None = None) -> int:
        stale = self.clock() - timedelta(seconds=lease_seconds or self.settings.worker.lease_seconds)
        with self.db.begin() as session:
            # Mass messages are not this sender's: bot.outbox.mass looks their outcome up in WeCom.
            rows = session.scalars(select(OutboxMessage).where(OutboxMessage.status == "sending",
                                                               OutboxMessage.channel != "mass_message",
                                                               OutboxMessage.updated_at < stale)).all()
            for row in rows:
                if row.channel in RESENDABLE and row.attempts < self.settings.outbox.resend_attempts:
                    row.status = "pending"
                    row.reason = f"{UNANSWERED}: interrupted while sending (attempt {row.attempts}); resending"
                elif row.channel in RESENDABLE:
                    row.status = "failed"
                    row.reason = (f"interrupted while sending; outcome unknown after {row.attempts} attempts, "
                                  "not resent again")
                else:
                    row.status = "failed"
                    row.reason = "interrupted while sending; outcome unknown, not resent"
            return len(rows)

    # ------------------------------------------------------------ one row

    def send_one(self, outbox_id: int) -> str | None:
        claim = self._claim(outbox_id)
        if claim is None:
            return None
        row, claimed_at = claim
        if row.expires_at is not None and self.clock() > row.expires_at and _after_unanswered(row):
            return self._finish(outbox_id, "failed", f"{UNANSWERED} on attempt {row.attempts - 1}; the "
                                                     f"{row.channel} window closed at {row.expires_at:%H:%M:%S} UTC "
                                                     "before the resend, outcome unknown")
        if row.expires_at is not None and self.clock() > row.expires_at:
            return self._finish(outbox_id, "skipped", f"{row.channel} window passed before sending "
                                                      f"(deadline {row.expires_at:%H:%M:%S} UTC)")
        if self.clients is None:
            return self._finish(outbox_id, "failed", "WeCom is not configured (wecom.corp_id / secret)")
        if row.channel == "app_message":
            free_at = self._member_free_at(row.recipient, row.id)
            if free_at is not None:
                return self._defer(outbox_id, free_at, "the member had 30 app messages this minute or 1,000 "
                                                       "this hour (WeCom drops more)")
        try:
            # Renewed while WeCom takes its time, so recover_stale only resumes a dead sender's rows.
            with LeaseKeeper(partial(self._renew, outbox_id), claimed_at, self.clock,
                             self.settings.worker.lease_seconds, f"outbox {outbox_id}"):
                answer = self._call(row)
        except WeChatClientException as exc:
            if exc.errcode == WELCOME_BUSY and row.channel == "welcome" and row.attempts < 2:
                self.sleep(1.0)
                self._release(outbox_id)
                return self.send_one(outbox_id)
            if exc.errcode == RATE_LIMITED:
                return self._after_rate_limit(row, float(getattr(exc, "retry_after", 60.0)))
            if _delivered_by_unanswered_attempt(row, exc):
                logger.info("outbox %d (%s): WeCom already has it from the unanswered attempt", outbox_id, row.channel)
                return self._finish(outbox_id, "sent", f"WeCom {exc.errcode} on the resend: the attempt that got no "
                                                       "answer delivered it", wecom_msgid=row.content.get("msgid"))
            explained = EXPLAINED.get(exc.errcode, exc.errmsg)
            if _after_unanswered(row):
                explained += " (after an unanswered attempt, which may have delivered it)"
            logger.warning("outbox %d (%s) refused by WeCom: %s %s", outbox_id, row.channel, exc.errcode, explained)
            return self._finish(outbox_id, "failed", f"WeCom {exc.errcode}: {explained}")
        except requests.RequestException as exc:
            return self._unanswered(row, type(exc).__name__)
        return self._finish(outbox_id, "sent", None, wecom_msgid=str(answer.get("msgid") or row.content.get("msgid")
                                                                      or "") or None)

    def _member_free_at(self, recipient: str, this_id: int) -> datetime | None:
        """When the member may get another app message, or None if now: the n-th latest send to them
        inside a span holding n already, plus that span. Sends under way in another sender (claimed,
        not yet answered) count too, stamped with their claim."""
        now = self.clock()
        sent_or_claimed = case((OutboxMessage.status == "sending", OutboxMessage.updated_at),
                               else_=OutboxMessage.sent_at)
        with self.db.sessions() as session:
            for span, limit in MEMBER_PACE:
                nth = session.scalar(
                    select(sent_or_claimed)
                    .where(OutboxMessage.channel == "app_message", OutboxMessage.recipient == recipient,
                           OutboxMessage.id != this_id,
                           or_(OutboxMessage.sent_at > now - span,
                               and_(OutboxMessage.status == "sending", OutboxMessage.updated_at > now - span)))
                    .order_by(sent_or_claimed.desc()).offset(limit - 1).limit(1))
                if nth is not None:
                    return _aware(nth) + span
        return None

    def _defer(self, outbox_id: int, until: datetime, why: str) -> str:
        with self.db.begin() as session:
            session.execute(update(OutboxMessage).where(OutboxMessage.id == outbox_id).values(
                status="pending", scheduled_at=until, reason=f"{why}; sending at {until:%H:%M:%S} UTC"))
        return "deferred"

    def _after_rate_limit(self, row: OutboxMessage, seconds: float) -> str:
        """WeCom refused the call for its frequency limit, so nothing was delivered: the row waits out the
        block (WeCom lifts a minute-limit block after 60 s) and is sent then, if its window still lasts."""
        retry_at = self.clock() + timedelta(seconds=seconds)
        refused = f"WeCom 45009: over the API's per-minute limit (attempt {row.attempts})"
        if _after_unanswered(row):  # kept first: a later "already used" then still means delivered
            refused = f"{UNANSWERED} on an earlier attempt; {refused}"
        if row.expires_at is not None and retry_at > row.expires_at:
            return self._finish(row.id, "failed", f"{refused}; the {row.channel} window closes at "
                                                  f"{row.expires_at:%H:%M:%S} UTC, before WeCom lifts the block")
        if row.attempts >= RATE_LIMITED_ATTEMPTS:
            return self._finish(row.id, "failed", f"{refused}; given up")
        logger.warning("outbox %d (%s): WeCom 45009, sent again at %s UTC", row.id, row.channel, f"{retry_at:%H:%M:%S}")
        return self._defer(row.id, retry_at, refused)

    def _unanswered(self, row: OutboxMessage, error: str) -> str | None:
        """No answer (timeout, connection lost): resend a single-use message while its window lasts
        and attempts remain; anything else keeps an unknown outcome rather than risk a duplicate."""
        limit = self.settings.outbox.resend_attempts
        logger.error("outbox %d (%s): no answer from WeCom (%s), attempt %d", row.id, row.channel, error, row.attempts)
        if row.channel not in RESENDABLE:
            return self._finish(row.id, "failed", f"{UNANSWERED} ({error}); outcome unknown, not resent")
        if row.attempts >= limit:
            return self._finish(row.id, "failed", f"{UNANSWERED} ({error}) in {row.attempts} attempts; "
                                                  "outcome unknown, not resent again")
        if row.expires_at is not None and self.clock() > row.expires_at:
            return self._finish(row.id, "failed", f"{UNANSWERED} ({error}); the {row.channel} window closed at "
                                                  f"{row.expires_at:%H:%M:%S} UTC, so it was not resent")
        self._release(row.id, f"{UNANSWERED} ({error}) on attempt {row.attempts} of {limit}; resending")
        return self.send_one(row.id)

    def _call(self, row: OutboxMessage) -> dict[str, Any]:
        content, text = row.content, {"content": row.content["text"]}
        if row.channel == "welcome":
            return self.clients.contact.external_contact.send_welcome_msg(
                {"welcome_code": content["welcome_code"], "text": text})
        if row.channel == "kf":
            return self.clients.kf.kf.send_msg(row.recipient, content["open_kfid"], "text", {"text": text},
                                               msgid=content.get("msgid"))
        if row.channel == "kf_event":
            return self.clients.kf.kf.send_msg_on_event(content["code"], "text", {"text": text},
                                                        msgid=content.get("msgid"))
        if row.channel == "app_message":
            agent_id = self.settings.wecom.agent_id
            if not agent_id:
                raise WeChatClientException(40056, "wecom.agent_id is not set; app messages cannot be sent")
            # WeCom drops a repeat of the same text to the same member within 30 minutes: a resend after
            # a busy or unanswered call cannot reach the member twice.
            return self.clients.app.message.send(agent_id, row.recipient, msg={
                "msgtype": "text", "text": {"content": content["text"]}, "enable_duplicate_check": 1,
                "duplicate_check_interval": 1800})
        raise WeChatClientException(-2, f"channel {row.channel} is not sent by this sender")

    def _claim(self, outbox_id: int) -> tuple[OutboxMessage, datetime] | None:
        """The claimed row and the claim's time stamp (its lease token)."""
        now = self.clock()
        with self.db.begin() as session:
            claimed = session.execute(
                update(OutboxMessage).where(OutboxMessage.id == outbox_id, OutboxMessage.status == "pending")
                .values(status="sending", attempts=OutboxMessage.attempts + 1, updated_at=now)
            ).rowcount
            row = session.get(OutboxMessage, outbox_id) if claimed == 1 else None
            return (row, now) if row is not None else None

    def _renew(self, outbox_id: int, held: datetime, new: datetime) -> bool:
        with self.db.begin() as session:
            return session.execute(
                update(OutboxMessage).where(OutboxMessage.id == outbox_id, OutboxMessage.status == "sending",
                                            OutboxMessage.updated_at == held).values(updated_at=new)
            ).rowcount == 1

    def _release(self, outbox_id: int, reason: str | None = None) -> None:
        values: dict[str, Any] = {"status": "pending"}
        if reason is not None:
            values["reason"] = reason
        with self.db.begin() as session:
            session.execute(update(OutboxMessage).where(OutboxMessage.id == outbox_id).values(**values))

    def _finish(self, outbox_id: int, status: str, reason: str | None, wecom_msgid: str | None = None) -> str:
        with self.db.begin() as session:
            values: dict[str, Any] = {"status": status, "reason": reason, "updated_at": self.clock()}
            if status == "sent":
                values.update(sent_at=self.clock(), wecom_msgid=wecom_msgid)
            session.execute(update(OutboxMessage).where(OutboxMessage.id == outbox_id).values(**values))
        return status


def _after_unanswered(row: OutboxMessage) -> bool:
    return row.attempts > 1 and (row.reason or "").startswith(UNANSWERED)


def _delivered_by_unanswered_attempt(row: OutboxMessage, exc: WeChatClientException) -> bool:
    """A single-use message refused as already used right after an attempt that got no answer."""
    if not _after_unanswered(row) or exc.errcode not in ALREADY_USED.get(row.channel, frozenset()):
        return False
    named = ALREADY_USED_NAMES.get(row.channel)
    return named is None or named in str(exc.errmsg).lower()


def _aware(moment: datetime) -> datetime:
    """SQLite hands back naive UTC datetimes from an expression."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
