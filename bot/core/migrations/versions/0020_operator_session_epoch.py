"""operators.session_epoch: bumped when an admin disables an operator, so that enabling them again does
not bring back the sessions (cookies) they had; the console's session mark covers it with the password.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-06 22:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0020'
down_revision = '0019'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("operators") as batch:
        batch.add_column(sa.Column("session_epoch", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False,
                                   server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("operators") as batch:
        batch.drop_column("session_epoch")
