"""console figures: the dashboard's last computed tier figures, kept across restarts

The dashboard's tier figures take a scan of the whole tier table (1–9 s at 1M customers on SQLite).
They are stored in one row, with what they were computed from, so that a restarted or second web
process shows them at once and recomputes them in the background only when they are outdated.

Revision ID: 0018
Revises: 0011
Create Date: 2026-12-06 06:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0018'
down_revision = '0017'
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        'console_figures',
        sa.Column('id', ID, nullable=False),
        sa.Column('key', sa.String(length=100), nullable=False),
        sa.Column('computed_at', sa.DateTime(), nullable=False),
        sa.Column('figures', sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_console_figures')),
    )


def downgrade() -> None:
    op.drop_table('console_figures')
