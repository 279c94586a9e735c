"""no indexes on the tier columns

The four indexes over customer_tiers' tier columns cost more than they give. A first re-tier of 1M
customers built them in 1.4 s of 4.9 s on SQLite and 3.0 s of 10.3 s on PostgreSQL (5.98 s without
them), and every update of a tier column had to change them: an incremental re-tier's writes of 273k
rows took SQLite 0.93 s in four statements (one per set of changed indexed columns) against 0.30 s,
and PostgreSQL 1.52 s against 1.00 s (in-place, HOT, updates). Without them both databases scan the
narrow tier rows: a count per tier 0.03–0.07 s → 0.14–0.30 s on SQLite (0.06 s → 0.10–0.17 s on
PostgreSQL), a rare tier's customers 0.000 s → 0.04 s (0.002 s → 0.08 s).

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
    for suffix, _ in INDEXES:
        op.drop_index(f'ix_customer_tiers_{suffix}', table_name='customer_tiers')


def downgrade() -> None:
    for suffix, columns in INDEXES:
        op.create_index(f'ix_customer_tiers_{suffix}', 'customer_tiers', columns, unique=False)
