"""The system page's figures: the inbox by status and its failed / dead / unhandled events, the outbox's
skipped and failed messages by reason over the last days, and the scheduled jobs' next runs."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bot.core.config import Settings
from bot.core.db import Database
from bot.models import InboxEvent, OutboxMessage
from bot.web.console.words import reason_kind

NEEDS_A_LOOK = ("failed", "dead", "unhandled")
OUTBOX_DAYS = 7
EVENTS_SHOWN = 50


@dataclass
class SystemFigures:
    inbox: dict[str, int]
    events: list[InboxEvent]
    outbox: list[tuple[str, str, int]]  # status, reason, messages
    jobs: list[list[str]]


def system_figures(session: Session, settings: Settings, db: Database, now: datetime) -> SystemFigures:
    inbox = dict(session.execute(select(InboxEvent.status, func.count()).group_by(InboxEvent.status)).all())
    events = list(session.scalars(select(InboxEvent).where(InboxEvent.status.in_(NEEDS_A_LOOK))
                                  .order_by(InboxEvent.id.desc()).limit(EVENTS_SHOWN)))
    # Counted by reason_kind: a reason naming its message's deadline or attempt is one cause, one row.
    counted: Counter[tuple[str, str]] = Counter()
    for status, reason, n in session.execute(
            select(OutboxMessage.status, OutboxMessage.reason, func.count())
            .where(OutboxMessage.status.in_(("skipped", "failed")),
                   OutboxMessage.scheduled_at >= now - timedelta(days=OUTBOX_DAYS))
            .group_by(OutboxMessage.status, OutboxMessage.reason)):
        counted[(status, reason_kind(reason) or "-")] += int(n)
    outbox = [(status, reason, n) for (status, reason), n in counted.most_common()]
    return SystemFigures(inbox, events, outbox, _jobs(settings, db))


def _jobs(settings: Settings, db: Database) -> list[list[str]]:
    from bot.schedule.scheduler import job_table

    try:
        return job_table(settings, db)
    except Exception as exc:  # noqa: BLE001 - the page still shows the inbox and outbox
        return [["-", "-", "-", f"the job list could not be read: {type(exc).__name__}"]]


def last_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[-1][:200] if lines else ""


def event_state(event: InboxEvent) -> dict[str, Any]:
    return {"status": event.status, "attempts": event.attempts, "kind": event.kind}
