"""no tier indexes on PostgreSQL

The four indexes over customer_tiers' tier columns cost PostgreSQL more than they give: a first
re-tier of 1M customers built them in 3.0 s of its 10.3 s (5.98 s without them), and every update of
a tier column added a new entry to each index instead of updating the row in place (an incremental
re-tier's UPDATE of 273k rows: 1.52 s → 1.00 s). Without them PostgreSQL scans the narrow rows in
parallel: a count per tier 0.06 s → 0.10–0.17 s, a rare tier's customers 0.002 s → 0.08 s. SQLite,
which reads a table slower than an index (a count per tier 0.12 s → 1.18 s), keeps them.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-23 18:20:00
"""

from __future__ import annotations

from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

INDEXES = (("value_tier_rfm_segment", ["value_tier", "rfm_segment"]), ("rfm_segment", ["rfm_segment"]),
           ("stage", ["stage"]), ("activity", ["activity"]))


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for suffix, _ in INDEXES:
            op.drop_index(f'ix_customer_tiers_{suffix}', table_name='customer_tiers')


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for suffix, columns in INDEXES:
            op.create_index(f'ix_customer_tiers_{suffix}', 'customer_tiers', columns, unique=False)
