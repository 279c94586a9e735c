"""broadcasts, coupons, mass reminders

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 23:04:37.006726
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('broadcasts',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('audience', sa.JSON(), nullable=False),
    sa.Column('templates', sa.JSON(), nullable=False),
    sa.Column('send_at', sa.DateTime(), nullable=True),
    sa.Column('cron', sa.String(length=100), nullable=True),
    sa.Column('holdout_percent', sa.SmallInteger(), nullable=False),
    sa.Column('coupon', sa.String(length=64), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('next_run_at', sa.DateTime(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_broadcasts')),
    sa.UniqueConstraint('name', name=op.f('uq_broadcasts_name'))
    )
    with op.batch_alter_table('broadcasts', schema=None) as batch_op:
        batch_op.create_index('ix_broadcasts_status_next_run_at', ['status', 'next_run_at'], unique=False)

    op.create_table('mass_reminders',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('msgid', sa.String(length=128), nullable=False),
    sa.Column('reminded_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_mass_reminders'))
    )
    with op.batch_alter_table('mass_reminders', schema=None) as batch_op:
        batch_op.create_index('ix_mass_reminders_msgid_reminded_at', ['msgid', 'reminded_at'], unique=False)

    op.create_table('broadcast_runs',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('broadcast_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('run_at', sa.DateTime(), nullable=False),
    sa.Column('send_after', sa.DateTime(), nullable=False),
    sa.Column('audience', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('to_send', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('held_out', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('skipped', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['broadcast_id'], ['broadcasts.id'], name=op.f('fk_broadcast_runs_broadcast_id_broadcasts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_broadcast_runs')),
    sa.UniqueConstraint('broadcast_id', 'run_at', name=op.f('uq_broadcast_runs_broadcast_id_run_at'))
    )
    op.create_table('coupons',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('code', sa.String(length=32), nullable=False),
    sa.Column('definition', sa.String(length=64), nullable=False),
    sa.Column('title', sa.String(length=100), nullable=False),
    sa.Column('customer_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('issue_ref', sa.String(length=128), nullable=False),
    sa.Column('value_fen', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('percent_off', sa.SmallInteger(), nullable=False),
    sa.Column('min_spend_fen', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('issued_at', sa.DateTime(), nullable=False),
    sa.Column('expires_at', sa.DateTime(), nullable=False),
    sa.Column('redeemed_at', sa.DateTime(), nullable=True),
    sa.Column('order_id', sa.String(length=128), nullable=True),
    sa.Column('redeem_note', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['customer_id'], ['customers.id'], name=op.f('fk_coupons_customer_id_customers'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_coupons')),
    sa.UniqueConstraint('code', name=op.f('uq_coupons_code')),
    sa.UniqueConstraint('definition', 'customer_id', 'issue_ref', name=op.f('uq_coupons_definition_customer_id_issue_ref'))
    )
    with op.batch_alter_table('coupons', schema=None) as batch_op:
        batch_op.create_index('ix_coupons_customer_id_status', ['customer_id', 'status'], unique=False)
        batch_op.create_index('ix_coupons_status_expires_at', ['status', 'expires_at'], unique=False)

    with op.batch_alter_table('outbox_messages', schema=None) as batch_op:
        batch_op.create_index('ix_outbox_messages_trigger_ref_status', ['trigger_ref', 'status'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('outbox_messages', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_messages_trigger_ref_status')

    with op.batch_alter_table('coupons', schema=None) as batch_op:
        batch_op.drop_index('ix_coupons_status_expires_at')
        batch_op.drop_index('ix_coupons_customer_id_status')

    op.drop_table('coupons')
    op.drop_table('broadcast_runs')
    with op.batch_alter_table('mass_reminders', schema=None) as batch_op:
        batch_op.drop_index('ix_mass_reminders_msgid_reminded_at')

    op.drop_table('mass_reminders')
    with op.batch_alter_table('broadcasts', schema=None) as batch_op:
        batch_op.drop_index('ix_broadcasts_status_next_run_at')

    op.drop_table('broadcasts')
