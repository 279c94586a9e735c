"""api_tokens.read_customers: whether a token may read customers through /api/v1/customers. Tokens made
before it was granted (for posting orders and redeeming coupons) may not: a shop's till has no need
to read the customer base.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-07 04:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0022'
down_revision = '0021'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("read_customers", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("read_customers")
