"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-22 19:57:25.554625
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('customers',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('external_userid', sa.String(length=128), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('contact_type', sa.SmallInteger(), nullable=False),
    sa.Column('gender', sa.SmallInteger(), nullable=False),
    sa.Column('unionid', sa.String(length=128), nullable=True),
    sa.Column('avatar', sa.Text(), nullable=True),
    sa.Column('corp_name', sa.String(length=255), nullable=True),
    sa.Column('birthday', sa.Date(), nullable=True),
    sa.Column('owner_userid', sa.String(length=64), nullable=True),
    sa.Column('opted_out', sa.Boolean(), nullable=False),
    sa.Column('opted_out_at', sa.DateTime(), nullable=True),
    sa.Column('value_tier', sa.String(length=32), nullable=True),
    sa.Column('rfm_segment', sa.String(length=32), nullable=True),
    sa.Column('r_score', sa.SmallInteger(), nullable=True),
    sa.Column('f_score', sa.SmallInteger(), nullable=True),
    sa.Column('m_score', sa.SmallInteger(), nullable=True),
    sa.Column('score', sa.SmallInteger(), nullable=True),
    sa.Column('stage', sa.String(length=32), nullable=True),
    sa.Column('engagement', sa.String(length=32), nullable=True),
    sa.Column('activity', sa.String(length=32), nullable=True),
    sa.Column('tiered_at', sa.DateTime(), nullable=True),
    sa.Column('last_interaction_at', sa.DateTime(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_customers')),
    sa.UniqueConstraint('external_userid', name=op.f('uq_customers_external_userid'))
    )
    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.create_index('ix_customers_activity', ['activity'], unique=False)
        batch_op.create_index('ix_customers_owner_userid', ['owner_userid'], unique=False)
        batch_op.create_index('ix_customers_rfm_segment', ['rfm_segment'], unique=False)
        batch_op.create_index('ix_customers_stage', ['stage'], unique=False)
        batch_op.create_index('ix_customers_value_tier_rfm_segment', ['value_tier', 'rfm_segment'], unique=False)

    op.create_table('inbox_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('dedupe_key', sa.String(length=160), nullable=False),
    sa.Column('received_at', sa.DateTime(), nullable=False),
    sa.Column('msg_type', sa.String(length=32), nullable=False),
    sa.Column('event', sa.String(length=64), nullable=True),
    sa.Column('change_type', sa.String(length=64), nullable=True),
    sa.Column('msg_id', sa.String(length=64), nullable=True),
    sa.Column('payload', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(), nullable=True),
    sa.Column('locked_at', sa.DateTime(), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('handled_at', sa.DateTime(), nullable=True),
    sa.Column('duplicates', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_inbox_events')),
    sa.UniqueConstraint('dedupe_key', name=op.f('uq_inbox_events_dedupe_key'))
    )
    with op.batch_alter_table('inbox_events', schema=None) as batch_op:
        batch_op.create_index('ix_inbox_events_status_next_attempt_at', ['status', 'next_attempt_at'], unique=False)

    op.create_table('staff',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('userid', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_staff')),
    sa.UniqueConstraint('userid', name=op.f('uq_staff_userid'))
    )
    op.create_table('tag_groups',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('wecom_group_id', sa.String(length=64), nullable=True),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('order', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('deleted', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tag_groups')),
    sa.UniqueConstraint('name', name=op.f('uq_tag_groups_name')),
    sa.UniqueConstraint('wecom_group_id', name=op.f('uq_tag_groups_wecom_group_id'))
    )
    op.create_table('customer_aggregates',
    sa.Column('customer_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('order_count', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('paid_amount_fen', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('refund_count', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('refunded_amount_fen', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('first_order_at', sa.DateTime(), nullable=True),
    sa.Column('last_order_at', sa.DateTime(), nullable=True),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['customer_id'], ['customers.id'], name=op.f('fk_customer_aggregates_customer_id_customers'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('customer_id', name=op.f('pk_customer_aggregates'))
    )
    with op.batch_alter_table('customer_aggregates', schema=None) as batch_op:
        batch_op.create_index('ix_customer_aggregates_last_order_at', ['last_order_at'], unique=False)

    op.create_table('follows',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('customer_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('staff_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('remark', sa.String(length=255), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('add_way', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('state', sa.String(length=64), nullable=True),
    sa.Column('added_at', sa.DateTime(), nullable=True),
    sa.Column('ended_at', sa.DateTime(), nullable=True),
    sa.Column('ended_reason', sa.String(length=64), nullable=True),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['customer_id'], ['customers.id'], name=op.f('fk_follows_customer_id_customers'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['staff_id'], ['staff.id'], name=op.f('fk_follows_staff_id_staff'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_follows')),
    sa.UniqueConstraint('customer_id', 'staff_id', name=op.f('uq_follows_customer_id_staff_id'))
    )
    with op.batch_alter_table('follows', schema=None) as batch_op:
        batch_op.create_index('ix_follows_staff_id_ended_at', ['staff_id', 'ended_at'], unique=False)
        batch_op.create_index('ix_follows_state', ['state'], unique=False)

    op.create_table('interactions',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('customer_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('occurred_at', sa.DateTime(), nullable=False),
    sa.Column('source_ref', sa.String(length=200), nullable=True),
    sa.Column('staff_userid', sa.String(length=64), nullable=True),
    sa.Column('detail', sa.JSON(), nullable=True),
    sa.ForeignKeyConstraint(['customer_id'], ['customers.id'], name=op.f('fk_interactions_customer_id_customers'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_interactions')),
    sa.UniqueConstraint('source_ref', name=op.f('uq_interactions_source_ref'))
    )
    with op.batch_alter_table('interactions', schema=None) as batch_op:
        batch_op.create_index('ix_interactions_customer_id_occurred_at', ['customer_id', 'occurred_at'], unique=False)

    op.create_table('orders',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('order_id', sa.String(length=128), nullable=False),
    sa.Column('customer_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('amount_fen', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('paid_at', sa.DateTime(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['customer_id'], ['customers.id'], name=op.f('fk_orders_customer_id_customers'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_orders')),
    sa.UniqueConstraint('order_id', name=op.f('uq_orders_order_id'))
    )
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.create_index('ix_orders_customer_id_paid_at', ['customer_id', 'paid_at'], unique=False)

    op.create_table('outbox_messages',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('dedupe_key', sa.String(length=200), nullable=False),
    sa.Column('channel', sa.String(length=32), nullable=False),
    sa.Column('customer_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('recipient', sa.String(length=128), nullable=False),
    sa.Column('sender_userid', sa.String(length=64), nullable=True),
    sa.Column('trigger_kind', sa.String(length=32), nullable=False),
    sa.Column('trigger_ref', sa.String(length=128), nullable=False),
    sa.Column('content', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('wecom_msgid', sa.String(length=128), nullable=True),
    sa.Column('attempts', sa.SmallInteger(), nullable=False),
    sa.Column('scheduled_at', sa.DateTime(), nullable=False),
    sa.Column('sent_at', sa.DateTime(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['customer_id'], ['customers.id'], name=op.f('fk_outbox_messages_customer_id_customers'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_outbox_messages')),
    sa.UniqueConstraint('dedupe_key', name=op.f('uq_outbox_messages_dedupe_key'))
    )
    with op.batch_alter_table('outbox_messages', schema=None) as batch_op:
        batch_op.create_index('ix_outbox_messages_customer_id_created_at', ['customer_id', 'created_at'], unique=False)
        batch_op.create_index('ix_outbox_messages_status_scheduled_at', ['status', 'scheduled_at'], unique=False)

    op.create_table('tags',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('wecom_tag_id', sa.String(length=64), nullable=True),
    sa.Column('group_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('order', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('deleted', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['group_id'], ['tag_groups.id'], name=op.f('fk_tags_group_id_tag_groups'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tags')),
    sa.UniqueConstraint('group_id', 'name', name=op.f('uq_tags_group_id_name')),
    sa.UniqueConstraint('wecom_tag_id', name=op.f('uq_tags_wecom_tag_id'))
    )
    op.create_table('tier_changes',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('customer_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('dimension', sa.String(length=32), nullable=False),
    sa.Column('from_value', sa.String(length=32), nullable=True),
    sa.Column('to_value', sa.String(length=32), nullable=True),
    sa.Column('as_of', sa.Date(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['customer_id'], ['customers.id'], name=op.f('fk_tier_changes_customer_id_customers'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tier_changes'))
    )
    with op.batch_alter_table('tier_changes', schema=None) as batch_op:
        batch_op.create_index('ix_tier_changes_customer_id_created_at', ['customer_id', 'created_at'], unique=False)
        batch_op.create_index('ix_tier_changes_dimension_to_value_as_of', ['dimension', 'to_value', 'as_of'], unique=False)

    op.create_table('customer_tags',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('customer_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('tag_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('rule', sa.String(length=64), nullable=True),
    sa.Column('added_by', sa.String(length=64), nullable=True),
    sa.Column('added_at', sa.DateTime(), nullable=False),
    sa.Column('removed_at', sa.DateTime(), nullable=True),
    sa.Column('removed_by', sa.String(length=64), nullable=True),
    sa.ForeignKeyConstraint(['customer_id'], ['customers.id'], name=op.f('fk_customer_tags_customer_id_customers'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['tag_id'], ['tags.id'], name=op.f('fk_customer_tags_tag_id_tags'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_customer_tags')),
    sa.UniqueConstraint('customer_id', 'tag_id', name=op.f('uq_customer_tags_customer_id_tag_id'))
    )
    with op.batch_alter_table('customer_tags', schema=None) as batch_op:
        batch_op.create_index('ix_customer_tags_tag_id_removed_at_customer_id', ['tag_id', 'removed_at', 'customer_id'], unique=False)

    op.create_table('tag_aliases',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('alias', sa.String(length=64), nullable=False),
    sa.Column('tag_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.ForeignKeyConstraint(['tag_id'], ['tags.id'], name=op.f('fk_tag_aliases_tag_id_tags'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tag_aliases')),
    sa.UniqueConstraint('alias', name=op.f('uq_tag_aliases_alias'))
    )
    with op.batch_alter_table('tag_aliases', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tag_aliases_tag_id'), ['tag_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('tag_aliases', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tag_aliases_tag_id'))

    op.drop_table('tag_aliases')
    with op.batch_alter_table('customer_tags', schema=None) as batch_op:
        batch_op.drop_index('ix_customer_tags_tag_id_removed_at_customer_id')

    op.drop_table('customer_tags')
    with op.batch_alter_table('tier_changes', schema=None) as batch_op:
        batch_op.drop_index('ix_tier_changes_dimension_to_value_as_of')
        batch_op.drop_index('ix_tier_changes_customer_id_created_at')

    op.drop_table('tier_changes')
    op.drop_table('tags')
    with op.batch_alter_table('outbox_messages', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_messages_status_scheduled_at')
        batch_op.drop_index('ix_outbox_messages_customer_id_created_at')

    op.drop_table('outbox_messages')
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_index('ix_orders_customer_id_paid_at')

    op.drop_table('orders')
    with op.batch_alter_table('interactions', schema=None) as batch_op:
        batch_op.drop_index('ix_interactions_customer_id_occurred_at')

    op.drop_table('interactions')
    with op.batch_alter_table('follows', schema=None) as batch_op:
        batch_op.drop_index('ix_follows_state')
        batch_op.drop_index('ix_follows_staff_id_ended_at')

    op.drop_table('follows')
    with op.batch_alter_table('customer_aggregates', schema=None) as batch_op:
        batch_op.drop_index('ix_customer_aggregates_last_order_at')

    op.drop_table('customer_aggregates')
    op.drop_table('tag_groups')
    op.drop_table('staff')
    with op.batch_alter_table('inbox_events', schema=None) as batch_op:
        batch_op.drop_index('ix_inbox_events_status_next_attempt_at')

    op.drop_table('inbox_events')
    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.drop_index('ix_customers_value_tier_rfm_segment')
        batch_op.drop_index('ix_customers_stage')
        batch_op.drop_index('ix_customers_rfm_segment')
        batch_op.drop_index('ix_customers_owner_userid')
        batch_op.drop_index('ix_customers_activity')

    op.drop_table('customers')
