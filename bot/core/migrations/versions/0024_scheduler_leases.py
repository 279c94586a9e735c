"""scheduler_leases: without Redis, one lease row names the process that runs the scheduler, so a
second `scrm scheduler` or `scrm serve` stands by instead of running every job a second time.

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-07 19:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0024'
down_revision = '0023'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'scheduler_leases',
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('holder', sa.String(length=64), nullable=False),
        sa.Column('expires_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('name', name=op.f('pk_scheduler_leases')),
    )


def downgrade() -> None:
    op.drop_table('scheduler_leases')
