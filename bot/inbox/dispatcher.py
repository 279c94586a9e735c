"""Handlers keyed by (MsgType, Event, ChangeType), registered by decorator.

A handler is ``handler(event, ctx)``: ``event`` is wechatpy's parsed message object (an
``UnknownMessage`` for types wechatpy does not know), ``ctx`` a :class:`HandlerContext`.
Handlers for the exact key run first, then those registered without a ChangeType, then those
registered for the whole MsgType; all run, in registration order, in one transaction.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from types import ModuleType
from typing import Any

from sqlalchemy.orm import Session

from bot.core.config import Settings

Key = tuple[str, str | None, str | None]
Handler = Callable[[Any, "HandlerContext"], None]
_MARK = "__scrm_handler_keys__"


class ClaimLost(Exception):  # noqa: N818 - a state, not an error of the handler's
    """The event was taken from its handler (`scrm customer forget` marked it dead): the handler's work is
    dropped, not committed, at a checkpoint as at the end."""


@dataclass
class HandlerContext:
    session: Session
    settings: Settings
    fields: dict[str, Any]
    inbox_event_id: int
    clients: Any = None  # bot.wecom.client.WeComClients, when WeCom is configured
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("handlers"))
    received_at: datetime | None = None
    templates: Any = None  # bot.outbox.messages.MessageTemplates
    tag_rules: Any = None  # bot.tagging.rules.TagRules
    sender: Any = None  # bot.outbox.OutboxSender
    send_now: list[int] = field(default_factory=list)
    db: Any = None  # bot.core.db.Database, for work done after the commit
    after_sends: list[Callable[[], None]] = field(default_factory=list)
    # Whether the event is still this handler's, read in its transaction (the processor's; None: always).
    claimed: Callable[[Session], bool] | None = None

    def send_after_commit(self, outbox_id: int | None) -> None:
        """Send this outbox row as soon as the handler's work is committed."""
        if outbox_id is not None:
            self.send_now.append(outbox_id)

    def after_commit(self, work: Callable[[], None]) -> None:
        """Run ``work`` once the handler's work is committed and its messages sent: slow calls that the
        event does not depend on (a tag push to WeCom), which must neither hold up a welcome, whose code
        lasts 20 s, nor fail the event. A failure is logged; the work must leave a trace to retry from."""
        self.after_sends.append(work)

    def checkpoint(self) -> None:
        """Commit what is done so far (e.g. one sync page and its cursor) and send its messages:
        a crash after this point resumes from here instead of redoing it. Only while the event is
        still claimed, like the commit at the end: else ClaimLost, and nothing of it is kept."""
        self.commit()
        self.flush_sends()

    def commit(self) -> None:
        """Commit the handler's work if its event is still claimed; else drop it and raise ClaimLost
        (a forget that marked the event dead went first: the work would bring back what it erased)."""
        if self.claimed is not None and not self.claimed(self.session):
            self.drop()
            raise ClaimLost(f"inbox event {self.inbox_event_id} is no longer claimed")
        self.session.commit()

    def drop(self) -> None:
        """Roll back the uncommitted work and forget the sends and work queued with it."""
        self.session.rollback()
        self.send_now.clear()
        self.after_sends.clear()

    def flush_sends(self) -> None:
        ids, self.send_now = self.send_now, []
        if ids and self.sender is not None:
            try:
                self.sender.send(ids)
            except Exception:  # noqa: BLE001 - unsent rows stay pending; the worker's sweep sends them
                self.log.exception("sending outbox rows %s failed; left for the next sweep", ids)
        work, self.after_sends = self.after_sends, []
        for item in work:
            try:
                item()
            except Exception as exc:  # noqa: BLE001 - committed already; the work's own rows say what is left
                # The type only: a transport error's text quotes the URL, access token included.
                self.log.warning("work after inbox event %d failed (%s); left for the next sync",
                                 self.inbox_event_id, type(exc).__name__)


def make_key(msg_type: str, event: str | None = None, change_type: str | None = None) -> Key:
    return (msg_type.lower(), event.lower() if event else None, change_type.lower() if change_type else None)


def on(msg_type: str, event: str | None = None, change_type: str | None = None) -> Callable[[Handler], Handler]:
    """Mark a module-level function as a handler; :meth:`Dispatcher.register_module` picks it up."""

    def mark(func: Handler) -> Handler:
        keys = getattr(func, _MARK, [])
        setattr(func, _MARK, [*keys, make_key(msg_type, event, change_type)])
        return func

    return mark


class Dispatcher:
    def __init__(self) -> None:
        self._handlers: dict[Key, list[Handler]] = defaultdict(list)

    def on(self, msg_type: str, event: str | None = None,
           change_type: str | None = None) -> Callable[[Handler], Handler]:
        def register(func: Handler) -> Handler:
            self.add(make_key(msg_type, event, change_type), func)
            return func

        return register

    def add(self, key: Key, func: Handler) -> None:
        if func not in self._handlers[key]:
            self._handlers[key].append(func)

    def register_module(self, module: ModuleType) -> None:
        for value in vars(module).values():
            for key in getattr(value, _MARK, []):
                self.add(key, value)

    def handlers_for(self, msg_type: str, event: str | None, change_type: str | None) -> list[Handler]:
        exact = make_key(msg_type, event, change_type)
        chain = [exact, (exact[0], exact[1], None), (exact[0], None, None)]
        seen: list[Handler] = []
        for key in dict.fromkeys(chain):
            for func in self._handlers.get(key, []):
                if func not in seen:
                    seen.append(func)
        return seen

    @property
    def keys(self) -> list[Key]:
        return sorted(self._handlers, key=lambda k: tuple(p or "" for p in k))
