"""``scrm worker`` with Redis: an RQ worker that runs jobs in its own process, and a sweep thread.

The sweep re-enqueues due rows that have no live job (lost jobs, failed events whose back-off has
passed, sends deferred past quiet hours, a killed worker's claims once their lease ran out). While
Redis is unreachable it degrades to processing the inbox and the due sends in-process, as
``scrm worker`` does without Redis; the database claims keep anything from running twice when the
RQ worker comes back."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import Any

from rq import SimpleWorker
from rq.timeouts import TimerDeathPenalty

from bot.inbox.processor import InboxProcessor
from bot.tasks.jobs import TaskRuntime, install
from bot.tasks.queue import TaskQueue

logger = logging.getLogger(__name__)


class ThreadWorker(SimpleWorker):
    """One of a process's extra RQ workers, on a thread: job time-outs by timer (RQ's default uses SIGALRM,
    which only the main thread may set) and no signal handlers (the main thread's worker takes SIGTERM,
    then stops these)."""

    death_penalty_class = TimerDeathPenalty

    def _install_signal_handlers(self) -> None:
        return None


class QueueWorker:
    def __init__(self, processor: InboxProcessor, tasks: TaskQueue, sweep_seconds: float, threads: int = 1) -> None:
        self.processor, self.tasks, self.sweep_seconds, self.threads = processor, tasks, sweep_seconds, threads
        self._stop = threading.Event()
        self.degraded = False
        install(TaskRuntime(processor))

    def sweep_once(self) -> dict[str, int]:
        """One sweep round: re-enqueue what lost its job, or, with Redis down, do the work here."""
        sender: Any = self.processor.sender
        if not self.tasks.reachable():
            if not self.degraded:
                logger.warning("Redis unreachable: processing the inbox in-process until it is back")
            self.degraded = True
            done: Counter[str] = Counter(self.processor.run_once())
            if sender is not None:
                done.update(sender.send_due())
            return dict(done)
        if self.degraded:
            logger.warning("Redis reachable again: back to the RQ queue")
        self.degraded = False
        due_sends: list[int] = []
        if sender is not None:
            sender.recover_stale()
            due_sends = sender.due_ids()
        # A due row whose job started longer ago than a lease: the worker running it died (a live one
        # claims the row at once and renews the claim).
        return self.tasks.sweep(self.processor.due_ids(), due_sends,
                                dead_after_seconds=self.processor.settings.worker.lease_seconds)

    def _sweep_loop(self) -> None:
        while not self._stop.wait(self.sweep_seconds):
            try:
                self.sweep_once()
            except Exception:  # noqa: BLE001 - a database or Redis hiccup must not end the sweep
                logger.exception("task sweep failed; trying again in %.1fs", self.sweep_seconds)

    def rq_worker(self, kind: type[SimpleWorker] = SimpleWorker) -> SimpleWorker:
        # SimpleWorker: jobs run in this process (no fork per job), with its database pool and WeCom clients.
        return kind([self.tasks.queue], connection=self.tasks.connection)

    def _work(self, burst: bool) -> None:
        """``worker.threads`` RQ workers in this process: one job at a time each. A single SimpleWorker took
        one job at a time, so a burst of adds waited in line (150 ms WeCom calls: 18 of 120 welcomes past
        their 20 s window with two `scrm worker` processes)."""
        extra = [self.rq_worker(ThreadWorker) for _ in range(self.threads - 1)]
        threads = [threading.Thread(target=worker.work, kwargs={"burst": burst, "logging_level": "WARNING"},
                                    name=f"scrm-rq-{n + 1}", daemon=True) for n, worker in enumerate(extra)]
        for thread in threads:
            thread.start()
        try:
            self.rq_worker().work(burst=burst, logging_level="WARNING")
        finally:
            for worker in extra:  # each stops after its job; one waiting for a job is cut off at exit
                worker._stop_requested = True
            for thread in threads:
                thread.join(self.processor.settings.worker.lease_seconds if burst else 1.0)

    def run(self, burst: bool = False) -> None:
        """Sweep once, then run the RQ worker in the foreground (``burst``: until the queue is empty).
        While Redis does not answer, the sweep does the work in-process; the RQ worker starts once it
        does (RQ's worker cannot even be made without Redis)."""
        self.sweep_once()
        while self.degraded and not burst:
            if self._stop.wait(self.sweep_seconds):
                return
            self.sweep_once()
        if self.degraded:  # a burst with Redis away: the in-process round was the work
            return
        sweeper = threading.Thread(target=self._sweep_loop, name="scrm-task-sweep", daemon=True)
        sweeper.start()
        try:
            self._work(burst)
        finally:
            self._stop.set()
            sweeper.join(5)
