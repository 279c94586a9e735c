"""predicted value and churn risk: prediction_runs, customer_predictions

One row per fit of the BG/NBD and Gamma-Gamma models (segments/predict.py): parameters,
log-likelihoods, the data window, customers used and the holdout check, or why the fit was refused;
and each customer's latest predictions in a narrow table beside customer_tiers.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 04:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.create_table(
        'prediction_runs',
        sa.Column('id', ID, nullable=False),
        sa.Column('as_of', sa.Date(), nullable=False),
        sa.Column('horizon_days', ID, nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('reason', sa.Text(), nullable=True),
        sa.Column('parameters', sa.JSON(), nullable=True),
        sa.Column('bgnbd_log_likelihood', sa.Double(), nullable=True),
        sa.Column('gamma_gamma_log_likelihood', sa.Double(), nullable=True),
        sa.Column('data_from', sa.Date(), nullable=True),
        sa.Column('data_to', sa.Date(), nullable=True),
        sa.Column('customers', sa.BigInteger(), nullable=False),
        sa.Column('repeat_customers', sa.BigInteger(), nullable=False),
        sa.Column('holdout', sa.JSON(), nullable=True),
        sa.Column('seconds', sa.Double(), nullable=False),
        sa.Column('fitted_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_prediction_runs')),
    )
    op.create_table(
        'customer_predictions',
        sa.Column('customer_id', ID, nullable=False),
        sa.Column('run_id', sa.BigInteger(), nullable=False),
        sa.Column('p_alive', sa.Double(), nullable=False),
        sa.Column('churn_risk', sa.String(length=8), nullable=False),
        sa.Column('expected_purchases', sa.Double(), nullable=False),
        sa.Column('expected_spend_fen', sa.BigInteger(), nullable=False),
        sa.Column('predicted_value_fen', sa.BigInteger(), nullable=False),
        sa.Column('next_order_on', sa.Date(), nullable=True),
        sa.ForeignKeyConstraint(['customer_id'], ['customers.id'],
                                name=op.f('fk_customer_predictions_customer_id_customers'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('customer_id', name=op.f('pk_customer_predictions')),
        **({"postgresql_with": {"fillfactor": 70}} if postgres else {}),
    )


def downgrade() -> None:
    op.drop_table('customer_predictions')
    op.drop_table('prediction_runs')
