"""What goes out: every word rendered from ``templates/messages`` (``messages``), the contact policy
(opt-out, quiet hours, caps), and the outbox — every outbound message is a row before it is sent
(DESIGN.md §6) — with its senders and the mass-message flow."""

from bot.outbox.queue import enqueue, kf_msgid
from bot.outbox.sender import IMMEDIATE_CHANNELS, OutboxSender

__all__ = ["IMMEDIATE_CHANNELS", "OutboxSender", "enqueue", "kf_msgid"]
