"""All models, importable from one place (Alembic's autogenerate reads ``Base.metadata``)."""

from bot.models.api import ApiToken
from bot.models.base import Base, UTCDateTime, utcnow
from bot.models.customers import Customer, CustomerAggregate, Follow, Staff
from bot.models.events import INBOX_STATUSES, InboxEvent, Interaction, OutboxMessage, TierChange
from bot.models.orders import Order
from bot.models.tags import CustomerTag, Tag, TagAlias, TagGroup

__all__ = [
    "INBOX_STATUSES",
    "ApiToken",
    "ApiToken",
    "Base",
    "Customer",
    "CustomerAggregate",
    "CustomerTag",
    "Follow",
    "InboxEvent",
    "Interaction",
    "Order",
    "OutboxMessage",
    "Staff",
    "Tag",
    "TagAlias",
    "TagGroup",
    "TierChange",
    "UTCDateTime",
    "utcnow",
]
