"""customer groups: customer_groups, group_members, group_broadcasts, group_broadcast_runs, group_sops

客户群 as WeCom has them (groupchat/list + groupchat/get), their members linked to customers, and
broadcasts whose audience is groups (sent with add_msg_template chat_type=group).

Revision ID: 0017
Revises: 0011
Create Date: 2026-12-06 06:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        'customer_groups',
        sa.Column('id', ID, nullable=False),
        sa.Column('chat_id', sa.String(length=128), nullable=False),
        sa.Column('name', sa.String(length=255), nullable=False),
        sa.Column('owner_userid', sa.String(length=64), nullable=False),
        sa.Column('notice', sa.Text(), nullable=False),
        sa.Column('status', sa.SmallInteger(), nullable=False),
        sa.Column('wecom_created_at', sa.DateTime(), nullable=True),
        sa.Column('member_version', sa.String(length=64), nullable=False),
        sa.Column('tier', sa.String(length=32), nullable=True),
        sa.Column('tags', sa.JSON(), nullable=False),
        sa.Column('welcome_template_id', sa.String(length=128), nullable=True),
        sa.Column('welcome_text', sa.Text(), nullable=True),
        sa.Column('join_config_id', sa.String(length=128), nullable=True),
        sa.Column('join_state', sa.String(length=30), nullable=True),
        sa.Column('join_qr_code', sa.Text(), nullable=True),
        sa.Column('dismissed_at', sa.DateTime(), nullable=True),
        sa.Column('synced_at', sa.DateTime(), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('updated_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_customer_groups')),
        sa.UniqueConstraint('chat_id', name=op.f('uq_customer_groups_chat_id')),
    )
    op.create_index('ix_customer_groups_owner_userid', 'customer_groups', ['owner_userid'], unique=False)
    op.create_table(
        'group_members',
        sa.Column('id', ID, nullable=False),
        sa.Column('group_id', ID, nullable=False),
        sa.Column('member_id', sa.String(length=128), nullable=False),
        sa.Column('member_type', sa.SmallInteger(), nullable=False),
        sa.Column('customer_id', ID, nullable=True),
        sa.Column('is_admin', sa.Boolean(), nullable=False),
        sa.Column('name', sa.String(length=255), nullable=False),
        sa.Column('group_nickname', sa.String(length=255), nullable=False),
        sa.Column('join_time', sa.DateTime(), nullable=True),
        sa.Column('join_scene', sa.SmallInteger(), nullable=True),
        sa.Column('invitor_userid', sa.String(length=64), nullable=True),
        sa.Column('state', sa.String(length=30), nullable=True),
        sa.Column('left_at', sa.DateTime(), nullable=True),
        sa.Column('quit_scene', sa.SmallInteger(), nullable=True),
        sa.ForeignKeyConstraint(['customer_id'], ['customers.id'], name=op.f('fk_group_members_customer_id_customers'),
                                ondelete='SET NULL'),
        sa.ForeignKeyConstraint(['group_id'], ['customer_groups.id'],
                                name=op.f('fk_group_members_group_id_customer_groups'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_group_members')),
        sa.UniqueConstraint('group_id', 'member_id', name=op.f('uq_group_members_group_id_member_id')),
    )
    op.create_index('ix_group_members_customer_id', 'group_members', ['customer_id'], unique=False)
    op.create_table(
        'group_broadcasts',
        sa.Column('id', ID, nullable=False),
        sa.Column('name', sa.String(length=100), nullable=False),
        sa.Column('audience', sa.JSON(), nullable=False),
        sa.Column('templates', sa.JSON(), nullable=False),
        sa.Column('send_at', sa.DateTime(), nullable=True),
        sa.Column('cron', sa.String(length=100), nullable=True),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('next_run_at', sa.DateTime(), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('updated_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_group_broadcasts')),
        sa.UniqueConstraint('name', name=op.f('uq_group_broadcasts_name')),
    )
    op.create_index('ix_group_broadcasts_status_next_run_at', 'group_broadcasts', ['status', 'next_run_at'],
                    unique=False)
    op.create_table(
        'group_broadcast_runs',
        sa.Column('id', ID, nullable=False),
        sa.Column('broadcast_id', ID, nullable=False),
        sa.Column('run_at', sa.DateTime(), nullable=False),
        sa.Column('send_after', sa.DateTime(), nullable=False),
        sa.Column('audience', ID, nullable=False),
        sa.Column('to_send', ID, nullable=False),
        sa.Column('skipped', sa.JSON(), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['broadcast_id'], ['group_broadcasts.id'],
                                name=op.f('fk_group_broadcast_runs_broadcast_id_group_broadcasts'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_group_broadcast_runs')),
        sa.UniqueConstraint('broadcast_id', 'run_at', name=op.f('uq_group_broadcast_runs_broadcast_id_run_at')),
    )
    op.create_table(
        'group_sops',
        sa.Column('id', ID, nullable=False),
        sa.Column('name', sa.String(length=100), nullable=False),
        sa.Column('audience', sa.JSON(), nullable=False),
        sa.Column('steps', sa.JSON(), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('updated_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_group_sops')),
        sa.UniqueConstraint('name', name=op.f('uq_group_sops_name')),
    )


def downgrade() -> None:
    op.drop_table('group_sops')
    op.drop_table('group_broadcast_runs')
    op.drop_index('ix_group_broadcasts_status_next_run_at', table_name='group_broadcasts')
    op.drop_table('group_broadcasts')
    op.drop_index('ix_group_members_customer_id', table_name='group_members')
    op.drop_table('group_members')
    op.drop_index('ix_customer_groups_owner_userid', table_name='customer_groups')
    op.drop_table('customer_groups')
