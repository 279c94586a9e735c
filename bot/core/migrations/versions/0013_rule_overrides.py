"""rule overrides: operators' console edits of auto-tag rules, reply rules and channel mappings

One row per edited rule list (``tags.rules``, ``kf.reply_rules``, ``contacts.channels``): the value
replaces the config file's, which stays the default seed; ``revision`` tells running processes to reload.

Revision ID: 0013
Revises: 0011
Create Date: 2026-12-06 06:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'rule_overrides',
        sa.Column('key', sa.String(length=40), nullable=False),
        sa.Column('value', sa.JSON(), nullable=False),
        sa.Column('revision', sa.Integer(), nullable=False),
        sa.Column('updated_by', sa.String(length=64), nullable=False),
        sa.Column('updated_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('key', name=op.f('pk_rule_overrides')),
    )


def downgrade() -> None:
    op.drop_table('rule_overrides')
