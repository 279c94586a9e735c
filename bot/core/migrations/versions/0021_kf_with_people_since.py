"""kf_conversations.with_people_since: when the session went to the waiting pool or a servicer (kf
service_state 2/3), during which WeCom lets the API send nothing; cleared when the servicer ends it.
An index of app messages by member and send time, for WeCom's per-member pace (30 a minute).

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-07 03:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0021'
down_revision = '0020'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("kf_conversations") as batch:
        batch.add_column(sa.Column("with_people_since", sa.DateTime(), nullable=True))
    where = sa.text("channel = 'app_message'")
    op.create_index("ix_outbox_messages_app_message_recipient_sent_at", "outbox_messages", ["recipient", "sent_at"],
                    sqlite_where=where, postgresql_where=where)


def downgrade() -> None:
    op.drop_index("ix_outbox_messages_app_message_recipient_sent_at", table_name="outbox_messages")
    with op.batch_alter_table("kf_conversations") as batch:
        batch.drop_column("with_people_since")
