"""Reactions to WeCom events, one module per event family.

Every handler module is listed here, once: :func:`register_all` is the only place handlers are
attached to a dispatcher.
"""

from __future__ import annotations

from bot.inbox.dispatcher import Dispatcher
from handlers import contacts, groups, kf, tags, transfer

MODULES = (contacts, kf, tags, transfer, groups)  # transfer after contacts: it reads the follow contacts wrote


def register_all(dispatcher: Dispatcher) -> None:
    for module in MODULES:
        dispatcher.register_module(module)
