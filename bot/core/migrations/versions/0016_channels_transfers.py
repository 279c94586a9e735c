"""channels and hand-overs: channels, transfers, group_transfers

渠道活码 as first-class rows (the 「联系我」 config_id and QR code, the rules applied to the
customers a channel brings, its cost) and 在职/离职继承: one row per customer or group chat
handed from one member to another, with WeCom's outcome.

Revision ID: 0016
Revises: 0011
Create Date: 2026-12-06 06:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0016'
down_revision = '0014'
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _ident(length: int) -> sa.String:
    return sa.String(length=length).with_variant(sa.String(length=length, collation="C"), "postgresql")


def upgrade() -> None:
    op.create_table(
        'channels',
        sa.Column('id', ID, nullable=False),
        sa.Column('state', sa.String(length=30), nullable=False),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('members', sa.JSON(), nullable=False),
        sa.Column('tags', sa.JSON(), nullable=False),
        sa.Column('stage', sa.String(length=32), nullable=True),
        sa.Column('welcome', sa.String(length=64), nullable=False),
        sa.Column('skip_verify', sa.Boolean(), nullable=False),
        sa.Column('expires_at', sa.DateTime(), nullable=True),
        sa.Column('config_id', sa.String(length=64), nullable=True),
        sa.Column('qr_code', sa.Text(), nullable=True),
        sa.Column('cost_fen', ID, nullable=True),
        sa.Column('source', sa.String(length=16), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('updated_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_channels')),
        sa.UniqueConstraint('config_id', name=op.f('uq_channels_config_id')),
        sa.UniqueConstraint('state', name=op.f('uq_channels_state')),
    )
    op.create_table(
        'transfers',
        sa.Column('id', ID, nullable=False),
        sa.Column('batch', sa.String(length=32), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('customer_id', ID, nullable=True),
        sa.Column('external_userid', _ident(128), nullable=False),
        sa.Column('handover_userid', sa.String(length=64), nullable=False),
        sa.Column('takeover_userid', sa.String(length=64), nullable=False),
        sa.Column('why', sa.String(length=128), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('errcode', ID, nullable=True),
        sa.Column('result_status', sa.SmallInteger(), nullable=True),
        sa.Column('fail_reason', sa.String(length=64), nullable=True),
        sa.Column('takeover_at', sa.DateTime(), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('settled_at', sa.DateTime(), nullable=True),
        sa.Column('updated_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['customer_id'], ['customers.id'], name=op.f('fk_transfers_customer_id_customers'),
                                ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_transfers')),
    )
    op.create_index('ix_transfers_batch', 'transfers', ['batch'], unique=False)
    op.create_index('ix_transfers_external_userid_takeover_userid', 'transfers',
                    ['external_userid', 'takeover_userid'], unique=False)
    op.create_index('ix_transfers_status', 'transfers', ['status'], unique=False)
    op.create_table(
        'group_transfers',
        sa.Column('id', ID, nullable=False),
        sa.Column('batch', sa.String(length=32), nullable=False),
        sa.Column('chat_id', _ident(128), nullable=False),
        sa.Column('handover_userid', sa.String(length=64), nullable=False),
        sa.Column('takeover_userid', sa.String(length=64), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('errcode', ID, nullable=True),
        sa.Column('errmsg', sa.String(length=255), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_group_transfers')),
    )
    op.create_index('ix_group_transfers_batch', 'group_transfers', ['batch'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_group_transfers_batch', table_name='group_transfers')
    op.drop_table('group_transfers')
    op.drop_index('ix_transfers_status', table_name='transfers')
    op.drop_index('ix_transfers_external_userid_takeover_userid', table_name='transfers')
    op.drop_index('ix_transfers_batch', table_name='transfers')
    op.drop_table('transfers')
    op.drop_table('channels')
