"""Runs stored inbox events through the dispatcher, with retries and back-off.

Each event is claimed with a conditional UPDATE (safe with several workers), handled in its own
transaction, and marked handled / unhandled / failed (retried later) / dead (gave up). A failing
event never blocks the others.
"""

from __future__ import annotations

import logging
import traceback
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy import and_, case, or_, select, update
from sqlalchemy.exc import IntegrityError
from wechatpy.work import parse_message

from bot.core.config import Settings
from bot.core.db import Database
from bot.core.lease import LeaseKeeper
from bot.inbox.dispatcher import ClaimLost, Dispatcher, HandlerContext
from bot.inbox.xmlsafe import parse_flat_xml
from bot.models import InboxEvent, utcnow
from bot.outbox.messages import MessageTemplates
from bot.tagging.rules import TagRules

logger = logging.getLogger(__name__)
# Change types whose event carries a WelcomeCode (valid 20 s, once): handled before other due events.
WELCOME_CARRIERS = ("add_external_contact", "add_half_external_contact", "msg_audit_approved")
WELCOME_WINDOW = timedelta(seconds=20)
RUNNABLE = ("pending", "failed")
CONFLICT_RERUNS = 2


class InboxProcessor:
    def __init__(
        self,
        db: Database,
        dispatcher: Dispatcher,
        settings: Settings,
        clients: Any = None,
        clock: Callable[[], datetime] = utcnow,
        sender: Any = None,
        rules: Callable[[], Settings] | None = None,
    ) -> None:
        self.db = db
        self.dispatcher = dispatcher
        self.settings = settings
        self.clients = clients
        self.clock = clock
        self.sender = sender
        self.templates = MessageTemplates.from_settings(settings)
        self.tag_rules = TagRules.from_settings(settings)
        self._rules_pair = (self.settings, self.tag_rules)
        self.rules = rules  # the settings with the operators' current rule edits (bot.startup.RuleReloader)

    def _current_rules(self) -> tuple[Settings, TagRules]:
        """The settings with the rule lists an operator edited in the console since the last event, and
        their tag rules, as one pair: the inbox threads share this processor, and a thread must not
        take new settings with old tag rules."""
        pair = self._rules_pair  # one read of one attribute: never half of an update
        if self.rules is not None:
            settings = self.rules()
            if settings is not pair[0]:
                pair = (settings, TagRules.from_settings(settings))
                self._rules_pair = pair
                self.settings, self.tag_rules = pair
        return pair

    # ------------------------------------------------------------ batch

    def run_once(self, limit: int | None = None) -> Counter[str]:
        """Process what is due now; returns a count per resulting status."""
        outcome: Counter[str] = Counter()
        for event_id in self._due_ids(limit or self.settings.worker.batch_size):
            status = self.process(event_id)
            if status:
                outcome[status] += 1
        return outcome

    def drain(self, max_rounds: int = 1000) -> Counter[str]:
        """Process until nothing is due now (events waiting for a back-off stay waiting)."""
        total: Counter[str] = Counter()
        for _ in range(max_rounds):
            outcome = self.run_once()
            if not outcome:
                break
            total.update(outcome)
        return total

    def due_ids(self, limit: int | None = None) -> list[int]:
        """Events that may be claimed now (pending, failed past their back-off, or a dead worker's)."""
        return self._due_ids(limit or self.settings.worker.batch_size)

    def _due_ids(self, limit: int) -> list[int]:
        now = self.clock()
        with self.db.begin() as session:
            # Events that carry a welcome code first while it lives (20 s): a long kf sync or a backlog
            # ahead of them would spend it. Older ones keep their place (handlers of one customer's
            # events tolerate the reordering: see handlers/contacts.py).
            fresh = and_(InboxEvent.change_type.in_(WELCOME_CARRIERS), InboxEvent.received_at >= now - WELCOME_WINDOW)
            return list(session.scalars(
                select(InboxEvent.id).where(self._claimable(now))
                .order_by(case((fresh, 0), else_=1), InboxEvent.id).limit(limit)))

    def _claimable(self, now: datetime) -> Any:
        stale = now - timedelta(seconds=self.settings.worker.lease_seconds)
        return or_(
            and_(InboxEvent.status.in_(RUNNABLE),
                 or_(InboxEvent.next_attempt_at.is_(None), InboxEvent.next_attempt_at <= now)),
            and_(InboxEvent.status == "processing", InboxEvent.locked_at < stale),
        )

    # ------------------------------------------------------------ one event

    def process(self, event_id: int) -> str | None:
        """Claim and handle one event; returns its new status, or None if another worker has it.
        The claim is renewed while the event is handled, so only a dead worker's event is taken over."""
        claimed_at = self._claim(event_id)
        if claimed_at is None:
            return None
        with LeaseKeeper(partial(self._renew, event_id), claimed_at, self.clock,
                         self.settings.worker.lease_seconds, f"inbox event {event_id}") as lease:
            status, error = self._handle(event_id, lease)
            for _ in range(CONFLICT_RERUNS):
                if not isinstance(error, IntegrityError):
                    break
                # Another thread or process wrote the same row first (two events of one customer at once):
                # run again now, when the row is there, rather than after the back-off.
                logger.info("inbox event %d met a concurrent write; handled again at once", event_id)
                status, error = self._handle(event_id, lease)
        # Recorded after the keeper stopped: a renewal racing the final write would look like a takeover.
        if error is not None:
            return self._fail(event_id, error, lease.token)
        return self._finish(event_id, status, lease.token)

    def _handle(self, event_id: int, lease: LeaseKeeper | None = None) -> tuple[str, BaseException | None]:
        """Run the event's handlers and send what they queued: ("handled" | "unhandled", None) or
        ("failed", the error)."""
        with self.db.sessions() as session:
            row = session.get(InboxEvent, event_id)
            assert row is not None
            payload, msg_type, event, change_type = row.payload, row.msg_type, row.event, row.change_type
            received_at = row.received_at
        handlers = self.dispatcher.handlers_for(msg_type, event, change_type)
        if not handlers:
            logger.info("inbox event %d (%s/%s/%s) has no handler; kept as unhandled",
                        event_id, msg_type, event, change_type)
            return "unhandled", None
        settings, tag_rules = self._current_rules()
        # Handlers may commit part of their work (HandlerContext.checkpoint); the rest commits here.
        with self.db.sessions() as session:
            ctx = HandlerContext(session=session, settings=settings, fields={}, inbox_event_id=event_id,
                                 clients=self.clients, received_at=received_at, templates=self.templates,
                                 tag_rules=tag_rules, sender=self.sender, db=self.db,
                                 claimed=partial(_still_claimed, event_id=event_id, lease=lease))
            try:
                ctx.fields = parse_flat_xml(payload)
                message = parse_message(payload)
                for handler in handlers:
                    handler(message, ctx)
                ctx.commit()
            except ClaimLost:
                # Taken from the worker meanwhile (`scrm customer forget` marked it dead), found at the end or at
                # a handler's checkpoint: what the handler did is dropped, or it would bring back what the forget
                # erased.
                return CLAIM_LOST, None
            except Exception as exc:  # noqa: BLE001 - any handler error is recorded and retried
                ctx.drop()
                return "failed", exc
        ctx.flush_sends()
        return "handled", None

    def _claim(self, event_id: int) -> datetime | None:
        """The claim's time stamp (its token), or None if the event is not claimable."""
        now = self.clock()
        with self.db.begin() as session:
            result = session.execute(
                update(InboxEvent)
                .where(InboxEvent.id == event_id, self._claimable(now))
                .values(status="processing", locked_at=now, attempts=InboxEvent.attempts + 1)
            )
            return now if result.rowcount == 1 else None

    def _renew(self, event_id: int, held: datetime, new: datetime) -> bool:
        with self.db.begin() as session:
            return session.execute(
                update(InboxEvent)
                .where(InboxEvent.id == event_id, InboxEvent.status == "processing", InboxEvent.locked_at == held)
                .values(locked_at=new)
            ).rowcount == 1

    def _finish(self, event_id: int, status: str, held: datetime | None = None) -> str:
        """Record the outcome while the claim is still ours (still ``processing`` with our stamp); else the
        event's status as whoever took it left it (a forget's ``dead``, another worker's)."""
        with self.db.begin() as session:
            if status != CLAIM_LOST and session.execute(
                update(InboxEvent).where(InboxEvent.id == event_id, *_held(held)).values(
                    status=status, handled_at=self.clock(), locked_at=None, next_attempt_at=None, last_error=None)
            ).rowcount == 1:
                return status
            return _lost(session, event_id)

    def _fail(self, event_id: int, exc: BaseException, held: datetime | None = None) -> str:
        error = "".join(traceback.format_exception(exc)[-6:])[-4000:]
        worker = self.settings.worker
        with self.db.begin() as session:
            row = session.scalar(select(InboxEvent).where(InboxEvent.id == event_id, *_held(held)))
            if row is None:
                logger.info("inbox event %d failed after its claim was lost: %s", event_id, type(exc).__name__)
                return _lost(session, event_id)
            attempts = row.attempts
            if attempts >= worker.max_attempts:
                status, next_at = "dead", None
            else:
                delay = min(worker.backoff_base_seconds * 2 ** (attempts - 1), worker.backoff_max_seconds)
                # WeCom blocks an API for a minute after its frequency limit (client.ApiBlocked): an earlier
                # retry would be refused again.
                delay = max(delay, float(getattr(exc, "retry_after", 0) or 0))
                status, next_at = "failed", self.clock() + timedelta(seconds=delay)
            row.status, row.last_error, row.next_attempt_at, row.locked_at = status, error, next_at, None
        logger.error("inbox event %d failed (attempt %d, now %s): %s", event_id, attempts, status,
                     f"{type(exc).__name__}: {exc}")
        return status

    # ------------------------------------------------------------ operator actions

    def retry(self, event_id: int) -> InboxEvent:
        """Make a failed or dead event due now (keeps its attempt count)."""
        return self._reset(event_id, allowed=("failed", "dead", "unhandled"), reset_attempts=False)

    def replay(self, event_id: int) -> InboxEvent:
        """Run any event again from scratch, whatever its status."""
        return self._reset(event_id, allowed=None, reset_attempts=True)

    def _reset(self, event_id: int, allowed: tuple[str, ...] | None, reset_attempts: bool) -> InboxEvent:
        with self.db.begin() as session:
            row = session.get(InboxEvent, event_id)
            if row is None:
                raise LookupError(f"no inbox event {event_id}")
            if allowed is not None and row.status not in allowed:
                raise ValueError(f"inbox event {event_id} is {row.status}; retry takes {', '.join(allowed)} events")
            row.status, row.next_attempt_at, row.locked_at = "pending", None, None
            if reset_attempts:
                row.attempts = 0
            return row


CLAIM_LOST = "lost"


def _held(token: datetime | None) -> tuple[Any, ...]:
    """The event is still claimed with ``token`` (None: whatever its claim, an operator's or a test's call)."""
    return () if token is None else (InboxEvent.status == "processing", InboxEvent.locked_at == token)


def _still_claimed(session: Any, event_id: int, lease: LeaseKeeper | None = None) -> bool:
    """Whether the event is still being processed under this worker's claim, read (and on PostgreSQL locked
    until the commit) in the handler's own transaction: a forget that marks it dead either went first and is
    seen, or waits. With the ``lease``, a claim another worker took over when this one stopped renewing (a
    frozen process, the database away for a lease) is not ours: committing too would do the event twice
    (a second kf reply). Checked twice, as a renewal may move the stamp between reading it and the row."""
    for _ in range(2 if lease is not None else 1):
        query = select(InboxEvent.id).where(InboxEvent.id == event_id, InboxEvent.status == "processing")
        if lease is not None:
            stamps = lease.stamps()
            if not stamps:
                return False
            query = query.where(InboxEvent.locked_at.in_(stamps))
        if session.scalar(query.with_for_update()) is not None:
            return True
    return False


def _lost(session: Any, event_id: int) -> str:
    """The status of an event whose claim this worker lost, which it leaves as it is."""
    status = session.scalar(select(InboxEvent.status).where(InboxEvent.id == event_id))
    logger.info("inbox event %d was taken from this worker (now %s); its outcome is not recorded", event_id, status)
    return str(status)
