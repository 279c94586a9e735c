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
        self.pending: datetime | None = None  # the stamp a renewal is writing, until it is known to have
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
            self.pending = new
            try:
                kept = self.renew(self.token, new)
            except Exception:  # noqa: BLE001 - a failed renewal is retried; the lease covers two more tries
                self.pending = None
                logger.exception("%s: lease renewal failed; trying again in %.1fs", self.what, self.interval)
                continue
            if not kept:
                self.lost, self.pending = True, None
                logger.warning("%s: claim taken over by another worker (lease expired)", self.what)
                return
            self.token = new
            self.pending = None

    def stamps(self) -> list[datetime]:
        """The stamps the claimed row may carry while the claim is ours: the held one, and one a renewal is
        writing right now (read first: the renewal sets it before and clears it after the held one moves)."""
        if self.lost:
            return []
        pending = self.pending
        return [stamp for stamp in (pending, self.token) if stamp is not None]
