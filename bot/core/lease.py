"""Short claims kept alive while their holder works.

A worker claims an inbox event or outbox row by stamping it with the claim time; a claim older than
the lease belongs to a crashed worker and may be taken over. Leases are short (a welcome must go out
within 20 s of the add event), so a live worker renews its stamp every third of the lease from a
background thread: a slow handler or a slow WeCom call keeps its claim, a killed process stops
renewing and its work is picked up a few seconds later.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from types import TracebackType

logger = logging.getLogger(__name__)

# renew(token held, new token) → whether the row still carried the held token (the claim is still ours).
Renew = Callable[[datetime, datetime], bool]


class LeaseKeeper:
    """``with LeaseKeeper(renew, token, clock, lease_seconds, what):`` renews the claim until the block ends."""

    def __init__(self, renew: Renew, token: datetime, clock: Callable[[], datetime], lease_seconds: float,
                 what: str) -> None:
        self.renew, self.token, self.clock, self.what = renew, token, clock, what
        self.interval = lease_seconds / 3
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"scrm-lease {what}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            new = self.clock()
            try:
                kept = self.renew(self.token, new)
            except Exception:  # noqa: BLE001 - a failed renewal is retried; the lease covers two more tries
                logger.exception("%s: lease renewal failed; trying again in %.1fs", self.what, self.interval)
                continue
            if not kept:
                self.lost = True
                logger.warning("%s: claim taken over by another worker (lease expired)", self.what)
                return
            self.token = new
