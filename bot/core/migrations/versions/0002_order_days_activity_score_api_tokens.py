"""order days, activity score, api tokens

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 20:25:00.770402
"""

from __future__ import annotations

import os
from datetime import UTC
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('api_tokens',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('token_sha256', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('last_used_at', sa.DateTime(), nullable=True),
    sa.Column('revoked_at', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_tokens')),
    sa.UniqueConstraint('name', name=op.f('uq_api_tokens_name')),
    sa.UniqueConstraint('token_sha256', name=op.f('uq_api_tokens_token_sha256'))
    )
    with op.batch_alter_table('customer_aggregates', schema=None) as batch_op:
        batch_op.add_column(sa.Column('first_order_day', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True))
        batch_op.add_column(sa.Column('last_order_day', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True))

    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('activity_score', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True))

    with op.batch_alter_table('interactions', schema=None) as batch_op:
        batch_op.create_index('ix_interactions_occurred_at', ['occurred_at'], unique=False)

    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.add_column(sa.Column('paid_day', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True))
    _backfill_days()
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.alter_column('paid_day', existing_type=sa.BigInteger().with_variant(sa.Integer(), 'sqlite'),
                              nullable=False)


def _backfill_days() -> None:
    """Existing orders get the local day of paid_at in the configured time zone, and aggregates
    their first/last paid-order days."""
    bind = op.get_bind()
    tz = ZoneInfo(os.environ.get("SCRM_APP_TIMEZONE", "Asia/Shanghai"))
    orders = sa.table("orders", sa.column("id"), sa.column("paid_at", sa.DateTime()), sa.column("paid_day"))
    rows = bind.execute(sa.select(orders.c.id, orders.c.paid_at)).all()
    for start in range(0, len(rows), 5000):
        chunk = [{"oid": r.id, "day": r.paid_at.replace(tzinfo=UTC).astimezone(tz).date().toordinal()}
                 for r in rows[start:start + 5000]]
        bind.execute(orders.update().where(orders.c.id == sa.bindparam("oid")).values(paid_day=sa.bindparam("day")),
                     chunk)
    for column, fn in (("first_order_day", "min"), ("last_order_day", "max")):
        bind.execute(sa.text(
            f"UPDATE customer_aggregates SET {column} = (SELECT {fn}(o.paid_day) FROM orders o "
            "WHERE o.customer_id = customer_aggregates.customer_id AND o.status = 'paid')"))



def downgrade() -> None:
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_column('paid_day')

    with op.batch_alter_table('interactions', schema=None) as batch_op:
        batch_op.drop_index('ix_interactions_occurred_at')

    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.drop_column('activity_score')

    with op.batch_alter_table('customer_aggregates', schema=None) as batch_op:
        batch_op.drop_column('last_order_day')
        batch_op.drop_column('first_order_day')

    op.drop_table('api_tokens')
