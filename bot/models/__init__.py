"""All models, importable from one place (Alembic's autogenerate reads ``Base.metadata``)."""

from bot.models.api import ApiToken
from bot.models.base import Base, UTCDateTime, utcnow
from bot.models.campaigns import BROADCAST_STATUSES, COUPON_STATUSES, Broadcast, BroadcastRun, Coupon, MassReminder
from bot.models.console import (
    OPERATOR_ROLES,
    AuditEntry,
    ConsoleFigures,
    LoginFailure,
    Operator,
    RuleOverride,
    SchedulerLease,
)
from bot.models.customers import ADD_WAY_ASSIGNED, Customer, CustomerAggregate, CustomerTier, Follow, Staff
from bot.models.events import (
    INBOX_STATUSES,
    InboxEvent,
    Interaction,
    KfConversation,
    OutboxMessage,
    SyncCursor,
    TierChange,
)
from bot.models.groups import (
    GROUP_STATUSES,
    MEMBER_EXTERNAL,
    MEMBER_STAFF,
    CustomerGroup,
    GroupBroadcast,
    GroupBroadcastRun,
    GroupMember,
    GroupSop,
)
from bot.models.handover import (
    CHANNEL_STATUSES,
    SETTLED_TRANSFER_STATUSES,
    TRANSFER_KINDS,
    TRANSFER_STATUSES,
    Channel,
    GroupTransfer,
    Transfer,
)
from bot.models.orders import Order
from bot.models.predictions import CHURN_RISKS, CustomerPrediction, PredictionRun
from bot.models.tags import CustomerTag, Tag, TagAlias, TagGroup
from bot.models.tiering import TierDirty, TierRun

__all__ = [
    "ADD_WAY_ASSIGNED",
    "CHANNEL_STATUSES",
    "SETTLED_TRANSFER_STATUSES",
    "TRANSFER_KINDS",
    "TRANSFER_STATUSES",
    "Channel",
    "GroupTransfer",
    "Transfer",
    "CHURN_RISKS",
    "BROADCAST_STATUSES",
    "COUPON_STATUSES",
    "INBOX_STATUSES",
    "Broadcast",
    "BroadcastRun",
    "Coupon",
    "MassReminder",
    "ApiToken",
    "AuditEntry",
    "ConsoleFigures",
    "SchedulerLease",
    "LoginFailure",
    "OPERATOR_ROLES",
    "Operator",
    "RuleOverride",
    "Base",
    "Customer",
    "CustomerGroup",
    "GROUP_STATUSES",
    "GroupBroadcast",
    "GroupBroadcastRun",
    "GroupMember",
    "GroupSop",
    "MEMBER_EXTERNAL",
    "MEMBER_STAFF",
    "CustomerAggregate",
    "CustomerPrediction",
    "CustomerTag",
    "CustomerTier",
    "Follow",
    "InboxEvent",
    "Interaction",
    "KfConversation",
    "Order",
    "OutboxMessage",
    "PredictionRun",
    "Staff",
    "SyncCursor",
    "Tag",
    "TierDirty",
    "TierRun",
    "TagAlias",
    "TagGroup",
    "TierChange",
    "UTCDateTime",
    "utcnow",
]
