"""incremental re-tier bookkeeping: dirty marks, run statistics, partial indexes of buyers

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 01:38:57.091983
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('tier_dirty',
    sa.Column('customer_id', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.PrimaryKeyConstraint('customer_id', name=op.f('pk_tier_dirty'))
    )
    op.create_table('tier_runs',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('as_of', sa.Date(), nullable=False),
    sa.Column('policy_digest', sa.String(length=64), nullable=False),
    sa.Column('full', sa.Boolean(), nullable=False),
    sa.Column('stats', sa.JSON(), nullable=False),
    sa.Column('max_interaction_id', sa.BigInteger(), nullable=False),
    sa.Column('recomputed', sa.BigInteger(), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=False),
    sa.Column('seconds', sa.Double(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tier_runs'))
    )
    with op.batch_alter_table('customer_aggregates', schema=None) as batch_op:
        batch_op.create_index('ix_customer_aggregates_buyers_last_order_day', ['last_order_day'], unique=False, sqlite_where=sa.text('order_count > 0'), postgresql_where=sa.text('order_count > 0'))
        batch_op.create_index('ix_customer_aggregates_buyers_order_count', ['order_count'], unique=False, sqlite_where=sa.text('order_count > 0'), postgresql_where=sa.text('order_count > 0'))
        batch_op.create_index('ix_customer_aggregates_buyers_paid_amount_fen', ['paid_amount_fen'], unique=False, sqlite_where=sa.text('order_count > 0'), postgresql_where=sa.text('order_count > 0'))



def downgrade() -> None:
    with op.batch_alter_table('customer_aggregates', schema=None) as batch_op:
        batch_op.drop_index('ix_customer_aggregates_buyers_paid_amount_fen', sqlite_where=sa.text('order_count > 0'), postgresql_where=sa.text('order_count > 0'))
        batch_op.drop_index('ix_customer_aggregates_buyers_order_count', sqlite_where=sa.text('order_count > 0'), postgresql_where=sa.text('order_count > 0'))
        batch_op.drop_index('ix_customer_aggregates_buyers_last_order_day', sqlite_where=sa.text('order_count > 0'), postgresql_where=sa.text('order_count > 0'))

    op.drop_table('tier_runs')
    op.drop_table('tier_dirty')
