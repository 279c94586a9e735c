"""Every outbound message is an outbox row before it is sent (DESIGN.md §6)."""

from bot.outbox.queue import enqueue, kf_msgid
from bot.outbox.sender import IMMEDIATE_CHANNELS, OutboxSender

__all__ = ["IMMEDIATE_CHANNELS", "OutboxSender", "enqueue", "kf_msgid"]
