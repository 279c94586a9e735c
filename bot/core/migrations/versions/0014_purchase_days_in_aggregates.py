"""purchase days in the aggregates: customer_aggregates.paid_days, first_day_fen; prediction_runs.discount_rate

What the predictions (BG/NBD, Gamma-Gamma) need per customer besides the totals kept already: the
number of distinct local days with a paid order and the paid money of the first of them. Every order
writer keeps them from now on; existing rows are filled from their orders. A prediction run records
the yearly discount rate of its predicted values (earlier runs: none, undiscounted).

Revision ID: 0014
Revises: 0011
Create Date: 2026-12-06 06:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None

FIRST_DAY_KEY = 1 << 42  # as segments/orders.py: the smallest paid_day · 2^42 + fen is the first day's


def upgrade() -> None:
    with op.batch_alter_table('customer_aggregates', schema=None) as batch_op:
        batch_op.add_column(sa.Column('paid_days', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True))
        batch_op.add_column(sa.Column('first_day_fen', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'),
                                      nullable=True))
    _backfill()
    with op.batch_alter_table('prediction_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('discount_rate', sa.Double(), nullable=True))


def _backfill() -> None:
    """Every aggregate's purchase days from its orders: one pass grouping the paid orders by customer
    and day into a temporary table, then each aggregate looked up by its key."""
    bind = op.get_bind()
    bind.execute(sa.text(
        "CREATE TEMPORARY TABLE purchase_days_backfill AS SELECT customer_id, count(*) AS paid_days, "
        f"min(paid_day * {FIRST_DAY_KEY} + CASE WHEN fen < {FIRST_DAY_KEY} THEN fen ELSE {FIRST_DAY_KEY - 1} END) "
        f"- min(paid_day) * {FIRST_DAY_KEY} AS first_day_fen FROM (SELECT customer_id, paid_day, sum(amount_fen) AS fen "
        "FROM orders WHERE status = 'paid' GROUP BY customer_id, paid_day) AS days GROUP BY customer_id"))
    bind.execute(sa.text("CREATE UNIQUE INDEX ix_purchase_days_backfill ON purchase_days_backfill (customer_id)"))
    bind.execute(sa.text(
        "UPDATE customer_aggregates SET "
        "paid_days = coalesce((SELECT b.paid_days FROM purchase_days_backfill b "
        "WHERE b.customer_id = customer_aggregates.customer_id), 0), "
        "first_day_fen = coalesce((SELECT b.first_day_fen FROM purchase_days_backfill b "
        "WHERE b.customer_id = customer_aggregates.customer_id), 0)"))
    bind.execute(sa.text("DROP TABLE purchase_days_backfill"))


def downgrade() -> None:
    with op.batch_alter_table('prediction_runs', schema=None) as batch_op:
        batch_op.drop_column('discount_rate')
    with op.batch_alter_table('customer_aggregates', schema=None) as batch_op:
        batch_op.drop_column('first_day_fen')
        batch_op.drop_column('paid_days')
