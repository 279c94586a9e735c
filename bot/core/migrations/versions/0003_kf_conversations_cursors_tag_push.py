"""kf conversations, sync cursors, customer-tag push state, outbox deadlines

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 22:22:19.940337
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('sync_cursors',
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('cursor', sa.Text(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_sync_cursors'))
    )
    op.create_table('kf_conversations',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('open_kfid', sa.String(length=64), nullable=False),
    sa.Column('external_userid', sa.String(length=128), nullable=False),
    sa.Column('customer_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('last_customer_message_at', sa.DateTime(), nullable=True),
    sa.Column('sent_since_customer_message', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('last_servicer_message_at', sa.DateTime(), nullable=True),
    sa.Column('last_reply_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['customer_id'], ['customers.id'], name=op.f('fk_kf_conversations_customer_id_customers'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_kf_conversations')),
    sa.UniqueConstraint('open_kfid', 'external_userid', name=op.f('uq_kf_conversations_open_kfid_external_userid'))
    )
    with op.batch_alter_table('kf_conversations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_kf_conversations_customer_id'), ['customer_id'], unique=False)

    with op.batch_alter_table('customer_tags', schema=None) as batch_op:
        batch_op.add_column(sa.Column('push_state', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('push_error', sa.Text(), nullable=True))
        batch_op.create_index(batch_op.f('ix_customer_tags_push_state'), ['push_state'], unique=False)

    with op.batch_alter_table('outbox_messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('expires_at', sa.DateTime(), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('outbox_messages', schema=None) as batch_op:
        batch_op.drop_column('expires_at')

    with op.batch_alter_table('customer_tags', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_customer_tags_push_state'))
        batch_op.drop_column('push_error')
        batch_op.drop_column('push_state')

    with op.batch_alter_table('kf_conversations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_kf_conversations_customer_id'))

    op.drop_table('kf_conversations')
    op.drop_table('sync_cursors')
