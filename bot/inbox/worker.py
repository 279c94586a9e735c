"""The in-process worker: daemon threads that drain the inbox, woken by the webhook. Several threads, so
that a burst of adds (each a few WeCom calls before its welcome) is welcomed within the 20 s a welcome
code lives; every event is claimed in the database, so no two threads (or processes) handle one."""

from __future__ import annotations

import logging
import threading
from typing import Any

from bot.inbox.processor import InboxProcessor

logger = logging.getLogger(__name__)


class InboxWorker:
    def __init__(self, processor: InboxProcessor, poll_seconds: float, sender: Any = None, threads: int = 1) -> None:
        self.processor = processor
        self.sender = sender
        self.poll_seconds = poll_seconds
        self.threads = threads
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        if self.running:
            return
        self._stop.clear()
        self._threads = [threading.Thread(target=self._run, args=(i,), name=f"scrm-inbox-worker-{i}", daemon=True)
                         for i in range(self.threads)]
        for thread in self._threads:
            thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout)

    @property
    def running(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def _run(self, index: int) -> None:
        while not self._stop.is_set():
            try:
                while self.processor.run_once() and not self._stop.is_set():
                    pass
                if self.sender is not None and index == 0:
                    self.sender.send_due()  # conversational messages left pending (deferred or interrupted)
            except Exception:  # noqa: BLE001 - a database hiccup must not kill the worker
                logger.exception("inbox worker round failed; retrying after %.1fs", self.poll_seconds)
            self._wake.wait(self.poll_seconds)
            self._wake.clear()
