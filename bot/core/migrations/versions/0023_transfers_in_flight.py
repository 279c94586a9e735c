"""transfers: one hand-over in flight per customer and member (uq_transfers_in_flight), so a second run
of the same plan is refused when it records its rows instead of asking WeCom again. Rows already in
flight twice keep the first; the later ones are what WeCom answers for them (40129, 客户正在转接中).

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-07 15:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0023'
down_revision = '0022'
branch_labels = None
depends_on = None

IN_FLIGHT = "status IN ('planned', 'waiting')"


def upgrade() -> None:
    op.execute(sa.text(
        f"UPDATE transfers SET status = 'failed', errcode = 40129, settled_at = updated_at WHERE {IN_FLIGHT} "
        "AND id > (SELECT MIN(earlier.id) FROM transfers earlier WHERE earlier.external_userid = transfers.external_userid "
        f"AND earlier.handover_userid = transfers.handover_userid AND earlier.{IN_FLIGHT})"))
    with op.batch_alter_table("transfers") as batch:
        batch.create_index("uq_transfers_in_flight", ["external_userid", "handover_userid"], unique=True,
                           sqlite_where=sa.text(IN_FLIGHT), postgresql_where=sa.text(IN_FLIGHT))


def downgrade() -> None:
    with op.batch_alter_table("transfers") as batch:
        batch.drop_index("uq_transfers_in_flight")
