"""Each order's local day (``paid_day``, recency in whole local days) is fixed when the order is written,
in app.timezone then. A brand that changes the zone afterwards had every earlier order counted on its old
day (an order at 02:30 UTC was on 30 November in Shanghai and stayed there in New York, where it was the
29th): the re-tier puts every order on its day in the zone now configured before it counts."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from sqlalchemy import bindparam, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from bot.models import Order, SyncCursor, utcnow
from segments.orders import rebuild_all_aggregates

logger = logging.getLogger(__name__)

ZONE_CURSOR = "orders:timezone"  # the zone every stored paid_day is a day of
BATCH = 20_000


def keep_local_days(session: Session, tz: ZoneInfo) -> int:
    """Make every order's paid_day a day in ``tz`` and record the zone; the orders moved to another day.
    The first run records the zone the days were written in (before it was recorded: the configured one)."""
    recorded = session.scalar(select(SyncCursor.cursor).where(SyncCursor.name == ZONE_CURSOR))
    if recorded == tz.key:
        return 0
    moved = 0
    if recorded is not None:
        moved = _relocalize(session, tz)
        rebuild_all_aggregates(session)
        logger.warning("app.timezone changed from %s to %s: %d orders moved to their local day in %s",
                       recorded, tz.key, moved, tz.key)
    dialect = session.get_bind().dialect.name
    upsert = (postgresql_insert if dialect == "postgresql" else sqlite_insert)(SyncCursor).values(
        name=ZONE_CURSOR, cursor=tz.key, updated_at=utcnow())
    session.execute(upsert.on_conflict_do_update(index_elements=["name"],
                                                 set_={"cursor": tz.key, "updated_at": utcnow()}))
    return moved


def _relocalize(session: Session, tz: ZoneInfo) -> int:
    if session.get_bind().dialect.name == "postgresql":
        # paid_at is naive UTC; its local date as an ordinal (date.toordinal(): 0001-01-01 is day 1)
        local_day = "((paid_at AT TIME ZONE 'UTC') AT TIME ZONE %(tz)s)::date - DATE '0001-01-01' + 1"
        return session.connection().exec_driver_sql(
            f"UPDATE orders SET paid_day = {local_day} WHERE paid_day <> {local_day}", {"tz": tz.key}).rowcount or 0
    moved, after = 0, 0
    while True:  # SQLite knows no zones: in Python, a batch at a time
        rows = session.execute(select(Order.id, Order.paid_at, Order.paid_day).where(Order.id > after)
                               .order_by(Order.id).limit(BATCH)).all()
        if not rows:
            return moved
        changed = [{"row": row_id, "day": day} for row_id, paid_at, old in rows
                   if (day := _aware(paid_at).astimezone(tz).date().toordinal()) != old]
        if changed:
            orders = Order.__table__
            session.connection().execute(update(orders).where(orders.c.id == bindparam("row"))
                                         .values(paid_day=bindparam("day")), changed)
        moved += len(changed)
        after = rows[-1][0]


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
