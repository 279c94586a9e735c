"""Enqueueing ids on the RQ queue, and the sweep that finds rows whose job was lost."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import redis
from rq import Queue
from rq.job import Job, JobStatus

logger = logging.getLogger(__name__)

INBOX_JOB = "bot.tasks.jobs.handle_inbox_event"
OUTBOX_JOB = "bot.tasks.jobs.send_outbox_message"
# A job with one of these statuses will still run: its row needs no new job.
LIVE = frozenset({JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED})


def inbox_job_id(event_id: int) -> str:
    return f"inbox-{event_id}"


def outbox_job_id(outbox_id: int) -> str:
    return f"outbox-{outbox_id}"


def connect(redis_url: str, timeout_seconds: float = 1.0) -> redis.Redis:
    """A client that gives up quickly: a webhook request must not wait on an unreachable Redis."""
    return redis.Redis.from_url(redis_url, socket_timeout=timeout_seconds, socket_connect_timeout=timeout_seconds)


class TaskQueue:
    """``scrm``'s RQ queue (named after ``redis.key_prefix``). Enqueueing never raises: when Redis is
    unreachable the row simply waits in the database for the sweep (or an in-process worker), and for
    the next few seconds callbacks do not wait on Redis's timeout again."""

    RETRY_AFTER_SECONDS = 5.0

    def __init__(self, connection: redis.Redis, key_prefix: str = "scrm", job_timeout_seconds: int = 300,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.connection = connection
        self.queue = Queue(f"{key_prefix}-tasks", connection=connection, default_timeout=job_timeout_seconds)
        self.clock = clock
        self._down_until = 0.0

    def enqueue_event(self, event_id: int, urgent: bool = False) -> bool:
        """``urgent``: at the queue's front (an event carrying a welcome code, which lives 20 s)."""
        return self._enqueue(INBOX_JOB, event_id, inbox_job_id(event_id), at_front=urgent)

    def enqueue_send(self, outbox_id: int) -> bool:
        return self._enqueue(OUTBOX_JOB, outbox_id, outbox_job_id(outbox_id))

    def _enqueue(self, function: str, row_id: int, job_id: str, at_front: bool = False) -> bool:
        if self.clock() < self._down_until:
            logger.debug("%s not queued: Redis was unreachable moments ago", job_id)
            return False
        try:
            # result_ttl=0: the outcome lives on the row; a failed job is kept a day for inspection.
            self.queue.enqueue(function, row_id, job_id=job_id, result_ttl=0, failure_ttl=86400, at_front=at_front)
        except redis.RedisError as exc:
            self._down_until = self.clock() + self.RETRY_AFTER_SECONDS
            logger.warning("%s not queued, Redis unreachable (%s); it waits in the database, and nothing is "
                           "queued for %.0fs", job_id, type(exc).__name__, self.RETRY_AFTER_SECONDS)
            return False
        return True

    def reachable(self) -> bool:
        try:
            return bool(self.connection.ping())
        except redis.RedisError:
            return False

    def without_live_job(self, job_ids: Iterable[str], dead_after_seconds: float | None = None) -> list[str]:
        """The given job ids that have no job still to run (never queued, lost, finished or failed).
        ``dead_after_seconds``: the ids are of due rows, and a job started longer ago than this is a
        killed worker's (a live job holds its row's claim and renews it, so its row is not due): RQ
        would call it started until its own clean-up, minutes later. It is deleted and counts as gone."""
        ids = list(job_ids)
        if not ids:
            return []
        jobs: list[Any] = Job.fetch_many(ids, connection=self.connection)
        now = datetime.now(UTC)
        gone = []
        for job_id, job in zip(ids, jobs, strict=True):
            status = None if job is None else job.get_status(refresh=False)
            if status is not None and status == JobStatus.STARTED and dead_after_seconds is not None \
                    and _started_before(job, now, dead_after_seconds):
                logger.warning("%s was started %s and its row is due again: its worker died; queued anew",
                               job_id, job.started_at)
                job.delete()
                status = None
            if status not in LIVE:
                gone.append(job_id)
        return gone

    def sweep(self, due_events: list[int], due_sends: list[int],
              dead_after_seconds: float | None = None) -> dict[str, int]:
        """Enqueue every due row whose job is gone: a lost job (Redis restarted without its data, an
        enqueue that failed while Redis was down), a killed worker's job (see :meth:`without_live_job`),
        or a failed event whose back-off has passed."""
        events = {inbox_job_id(i): i for i in due_events}
        sends = {outbox_job_id(i): i for i in due_sends}
        requeued = {"events": 0, "sends": 0}
        for job_id in self.without_live_job(events, dead_after_seconds):
            requeued["events"] += self.enqueue_event(events[job_id])
        for job_id in self.without_live_job(sends, dead_after_seconds):
            requeued["sends"] += self.enqueue_send(sends[job_id])
        return requeued


def _started_before(job: Any, now: datetime, seconds: float) -> bool:
    started = job.started_at
    if started is None:
        return False
    if started.tzinfo is None:
        started = started.replace(tzinfo=UTC)
    return (now - started).total_seconds() > seconds
