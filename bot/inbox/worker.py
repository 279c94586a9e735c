"""The in-process worker: a daemon thread that drains the inbox, woken by the webhook."""

from __future__ import annotations

import logging
import threading
from typing import Any

from bot.inbox.processor import InboxProcessor

logger = logging.getLogger(__name__)


class InboxWorker:
    def __init__(self, processor: InboxProcessor, poll_seconds: float, sender: Any = None) -> None:
        self.processor = processor
        self.sender = sender
        self.poll_seconds = poll_seconds
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="scrm-inbox-worker", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return bool(self._thread and self._thread.is_alive())

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                while self.processor.run_once() and not self._stop.is_set():
                    pass
                if self.sender is not None:
                    self.sender.send_due()  # conversational messages left pending (deferred or interrupted)
            except Exception:  # noqa: BLE001 - a database hiccup must not kill the worker
                logger.exception("inbox worker round failed; retrying after %.1fs", self.poll_seconds)
            self._wake.wait(self.poll_seconds)
            self._wake.clear()
