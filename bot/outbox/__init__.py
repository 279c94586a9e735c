"""What goes out: every word rendered from ``templates/messages`` (``messages``), the contact policy
(opt-out, quiet hours, caps), and the outbox — every outbound message is a row before it is sent
(DESIGN.md §6) — with its senders and the mass-message flow."""

from __future__ import annotations

from typing import Any

__all__ = ["IMMEDIATE_CHANNELS", "OutboxSender", "enqueue", "kf_msgid"]


def __getattr__(name: str) -> Any:
    # Imported on first use: reading the settings imports bot.outbox.policy, which must not load the
    # sender (requests, wechatpy) into every command.
    if name in ("enqueue", "kf_msgid"):
        from bot.outbox import queue

        return getattr(queue, name)
    if name in ("IMMEDIATE_CHANNELS", "OutboxSender"):
        from bot.outbox import sender

        return getattr(sender, name)
    raise AttributeError(f"module 'bot.outbox' has no attribute {name!r}")
