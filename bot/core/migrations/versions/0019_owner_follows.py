"""customers.owner_follows: whether the customer's owner still follows them, kept by the database

A push goes out through the owner's live follow; a customer without one is skipped. Asking that per
customer takes two index lookups (the owner's staff row, then the follow), which for a 350k audience
is most of a broadcast preview (0.7 s on SQLite, 1.1 s on PostgreSQL at 1M customers). With the answer
kept on the customer row, the preview finds the few customers a push could skip through two small
partial indexes (opted out; no owner follow) and counts everyone else from the tier table alone.

Triggers keep it, so that every writer of follows, owners and staff (contact sync, callbacks,
hand-over, imports, erasure, a loader writing rows directly) leaves it right:
- follows inserted, deleted, or updated in customer_id, staff_id or ended_at: their customer;
- customers inserted, or updated in owner_userid: that customer;
- staff updated in userid, or deleted: the customers that staff owns (by old or new userid).
A trigger writes only a value that changes. Existing rows are filled here.

A later migration that rebuilds customers, follows or staff on SQLite (batch "move and copy") drops
these triggers with the old table: it must create them again (``create_triggers``).

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-06 18:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0019'
down_revision = '0018'
branch_labels = None
depends_on = None

# Written as two lookups by unique keys (the owner's staff id by userid, then the follow by customer and
# staff), which any planner answers by index whatever its statistics say.
OWNER_FOLLOWS = ("EXISTS (SELECT 1 FROM follows f WHERE f.customer_id = customers.id AND f.staff_id = "
                 "(SELECT s.id FROM staff s WHERE s.userid = customers.owner_userid) AND f.ended_at IS NULL)")


def refresh(where: str) -> str:
    """Set owner_follows on the customers ``where`` selects, writing only those whose value changes."""
    return f"UPDATE customers SET owner_follows = {OWNER_FOLLOWS} WHERE {where} AND owner_follows <> {OWNER_FOLLOWS}"


# (table, events, SQL statements with NEW./OLD. references); each becomes one trigger.
TRIGGERS = [
    ("follows", "INSERT", [refresh("id = NEW.customer_id")]),
    ("follows", "UPDATE OF customer_id, staff_id, ended_at",
     [refresh("id = OLD.customer_id"), refresh("id = NEW.customer_id")]),
    ("follows", "DELETE", [refresh("id = OLD.customer_id")]),
    ("customers", "INSERT", [refresh("id = NEW.id")]),
    ("customers", "UPDATE OF owner_userid", [refresh("id = NEW.id")]),
    ("staff", "UPDATE OF userid", [refresh("owner_userid IN (OLD.userid, NEW.userid)")]),
    ("staff", "DELETE", [refresh("owner_userid = OLD.userid")]),
]


def trigger_name(table: str, events: str) -> str:
    return f"{table}_{events.split()[0].lower()}_owner_follows"


def create_triggers() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    for table, events, statements in TRIGGERS:
        name = trigger_name(table, events)
        body = "; ".join(statements) + ";"
        if postgresql:
            # PL/pgSQL keeps a plan per statement for the session; one made while a table was small (a
            # first load) would scan it row by row for every later row. Each statement here touches one
            # customer (or one member's) by an index, so the function plans with index scans only.
            op.execute(f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql SET enable_seqscan = off AS $$ "
                       f"BEGIN {body} RETURN NULL; END $$")
            op.execute(f"CREATE TRIGGER {name} AFTER {events} ON {table} FOR EACH ROW EXECUTE FUNCTION {name}()")
        else:
            op.execute(f"CREATE TRIGGER {name} AFTER {events} ON {table} FOR EACH ROW BEGIN {body} END")


def drop_triggers() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    for table, events, _ in TRIGGERS:
        name = trigger_name(table, events)
        op.execute(f"DROP TRIGGER IF EXISTS {name}" + (f" ON {table}" if postgresql else ""))
        if postgresql:
            op.execute(f"DROP FUNCTION IF EXISTS {name}()")


def upgrade() -> None:
    op.add_column('customers', sa.Column('owner_follows', sa.Boolean(), server_default=sa.false(), nullable=False))
    op.execute(f"UPDATE customers SET owner_follows = {OWNER_FOLLOWS}")
    postgresql = op.get_bind().dialect.name == "postgresql"
    op.create_index('ix_customers_opted_out', 'customers', ['id'], unique=False,
                    sqlite_where=sa.text('opted_out = 1'), postgresql_where=sa.text('opted_out'))
    op.create_index('ix_customers_no_owner_follow', 'customers', ['id'], unique=False,
                    sqlite_where=sa.text('owner_follows = 0'), postgresql_where=sa.text('NOT owner_follows'))
    create_triggers()
    if postgresql:
        op.execute("ANALYZE customers")


def downgrade() -> None:
    drop_triggers()
    op.drop_index('ix_customers_no_owner_follow', table_name='customers')
    op.drop_index('ix_customers_opted_out', table_name='customers')
    # Not a batch "move and copy" on SQLite: dropping the old customers table would cascade to its children.
    op.execute("ALTER TABLE customers DROP COLUMN owner_follows")
