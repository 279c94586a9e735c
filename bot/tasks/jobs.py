"""The functions RQ runs, by id. Each claims its row in the database first (a conditional UPDATE), so
a job run twice, or racing an in-process worker, finds the row taken or done and does nothing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bot.inbox.processor import InboxProcessor


@dataclass(frozen=True)
class TaskRuntime:
    processor: InboxProcessor

    @property
    def sender(self) -> Any:
        return self.processor.sender


_runtime: TaskRuntime | None = None


def install(runtime: TaskRuntime) -> None:
    """Called once by ``scrm worker`` before its RQ worker starts (jobs run in that process)."""
    global _runtime
    _runtime = runtime


def runtime() -> TaskRuntime:
    if _runtime is None:
        raise RuntimeError("bot.tasks.jobs.install() was not called: run jobs with `scrm worker`")
    return _runtime


def handle_inbox_event(event_id: int) -> str | None:
    """Handle one stored callback (and send what its handlers queued); None if another worker has it."""
    return runtime().processor.process(event_id)


def send_outbox_message(outbox_id: int) -> str | None:
    """Send one outbox row; None if it is not pending (sent, taken, or cancelled)."""
    sender = runtime().sender
    return sender.send_one(outbox_id) if sender is not None else None
