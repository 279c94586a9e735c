"""Migrations build the schema from empty, match the models, and go back down cleanly."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from bot.core.db import downgrade_schema, make_engine, upgrade_schema
from bot.models import Base
from tests.support import PG_URL


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_engine(request, tmp_path):
    if request.param == "postgresql":
        if not PG_URL:
            pytest.skip("SCRM_TEST_DATABASE_URL not set (CI sets it)")
        engine = make_engine(PG_URL)
        with engine.begin() as conn:  # a private schema, so the shared test schema is untouched
            conn.execute(text("DROP SCHEMA IF EXISTS migration_check CASCADE"))
            conn.execute(text("CREATE SCHEMA migration_check"))
        engine.dispose()
        engine = make_engine(PG_URL)
        from sqlalchemy import event

        @event.listens_for(engine, "connect")
        def use_schema(dbapi_connection, _record):
            with dbapi_connection.cursor() as cursor:
                cursor.execute("SET search_path TO migration_check")
            dbapi_connection.commit()

        yield engine
        engine.dispose()
        cleanup = make_engine(PG_URL)
        with cleanup.begin() as conn:
            conn.execute(text("DROP SCHEMA IF EXISTS migration_check CASCADE"))
        cleanup.dispose()
    else:
        engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
        yield engine
        engine.dispose()


def test_upgrade_from_empty_matches_models_and_downgrades(empty_engine):
    assert inspect(empty_engine).get_table_names() == []
    upgrade_schema(empty_engine)
    tables = set(inspect(empty_engine).get_table_names())
    assert set(Base.metadata.tables) <= tables
    with empty_engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []
    assert reflected_collations(empty_engine) == declared_collations(empty_engine)  # not compared above
    upgrade_schema(empty_engine)  # idempotent
    downgrade_schema(empty_engine)
    assert set(inspect(empty_engine).get_table_names()) <= {"alembic_version"}


def declared_collations(engine) -> dict[tuple[str, str], str]:
    """Columns the models give a collation on this engine's dialect (e.g. byte order for ids)."""
    return {(table.name, column.name): collation for table in Base.metadata.tables.values()
            for column in table.columns
            if (collation := getattr(column.type.dialect_impl(engine.dialect), "collation", None))}


def reflected_collations(engine) -> dict[tuple[str, str], str]:
    inspector = inspect(engine)
    return {(table, column["name"]): collation for table in Base.metadata.tables
            for column in inspector.get_columns(table) if (collation := getattr(column["type"], "collation", None))}


def test_audience_and_retier_indexes_exist(empty_engine):
    upgrade_schema(empty_engine)
    inspector = inspect(empty_engine)
    assert inspector.get_indexes("customer_tiers") == []  # the narrow tier rows are scanned (migration 0009)
    tag_indexes = {tuple(ix["column_names"]) for ix in inspector.get_indexes("customer_tags")}
    assert ("tag_id", "removed_at", "customer_id") in tag_indexes
    inbox_indexes = {tuple(ix["column_names"]) for ix in inspector.get_indexes("inbox_events")}
    assert ("status", "next_attempt_at") in inbox_indexes
    downgrade_schema(empty_engine, "0008")
    assert {("value_tier", "rfm_segment"), ("rfm_segment",), ("stage",), ("activity",)} <= {
        tuple(ix["column_names"]) for ix in inspect(empty_engine).get_indexes("customer_tiers")}


def test_tiers_move_to_their_own_table_and_back(empty_engine):
    upgrade_schema(empty_engine, "0007")
    with empty_engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO customers (id, external_userid, name, contact_type, gender, opted_out, created_at, "
            "updated_at, value_tier, rfm_segment, r_score, score, stage, engagement, activity, activity_score, "
            "tiered_at) VALUES "
            "(1, 'wm_tiered', 'a', 1, 0, false, '2026-01-01', '2026-01-01', 'high', 'important_value', 5, 100, "
            "'repeat', 'active', 'mid', 7, '2026-02-01'), "
            "(2, 'wm_plain', 'b', 1, 0, false, '2026-01-01', '2026-01-01', NULL, NULL, NULL, NULL, NULL, NULL, NULL, "
            "NULL, NULL)"))
    upgrade_schema(empty_engine)
    assert "value_tier" not in {c["name"] for c in inspect(empty_engine).get_columns("customers")}
    with empty_engine.connect() as conn:
        rows = conn.execute(text("SELECT customer_id, value_tier, rfm_segment, r_score, f_score, score, stage, "
                                 "engagement, activity, activity_score FROM customer_tiers")).all()
    assert [tuple(r) for r in rows] == [(1, "high", "important_value", 5, None, 100, "repeat", "active", "mid", 7)]
    downgrade_schema(empty_engine, "0007")
    with empty_engine.connect() as conn:
        back = conn.execute(text("SELECT id, value_tier, stage, activity_score FROM customers ORDER BY id")).all()
    assert [tuple(r) for r in back] == [(1, "high", "repeat", 7), (2, None, None, None)]
    assert "customer_tiers" not in inspect(empty_engine).get_table_names()


def test_purchase_days_are_filled_from_the_orders(empty_engine):
    """Migration 0014: each aggregate's distinct paid days and its first paid day's money, from its orders."""
    upgrade_schema(empty_engine, "0011")
    with empty_engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO customers (id, external_userid, name, contact_type, gender, opted_out, created_at, "
            "updated_at) VALUES (1, 'wm_a', 'a', 1, 0, false, '2026-01-01', '2026-01-01'), "
            "(2, 'wm_b', 'b', 1, 0, false, '2026-01-01', '2026-01-01')"))
        conn.execute(text(
            "INSERT INTO orders (order_id, customer_id, amount_fen, paid_at, paid_day, status, created_at, "
            "updated_at) VALUES ('o1', 1, 1000, '2026-01-02', 739618, 'paid', '2026-01-02', '2026-01-02'), "
            "('o2', 1, 500, '2026-01-02', 739618, 'paid', '2026-01-02', '2026-01-02'), "
            "('o3', 1, 700, '2026-01-01', 739617, 'refunded', '2026-01-02', '2026-01-02'), "
            "('o4', 1, 300, '2026-01-09', 739625, 'paid', '2026-01-09', '2026-01-09'), "
            "('o5', 2, 900, '2026-01-03', 739619, 'refunded', '2026-01-03', '2026-01-03')"))
        conn.execute(text(
            "INSERT INTO customer_aggregates (customer_id, order_count, paid_amount_fen, refund_count, "
            "refunded_amount_fen, updated_at) VALUES (1, 3, 1800, 1, 700, '2026-01-09'), "
            "(2, 0, 0, 1, 900, '2026-01-03')"))
    upgrade_schema(empty_engine)
    with empty_engine.connect() as conn:
        rows = conn.execute(text("SELECT customer_id, paid_days, first_day_fen FROM customer_aggregates "
                                 "ORDER BY customer_id")).all()
    assert [tuple(r) for r in rows] == [(1, 2, 1500), (2, 0, 0)]


def test_a_current_schema_is_recognised_without_alembic(tmp_path):
    """Every command upgrades the database first; one already at the head skips Alembic altogether."""
    from alembic.script import ScriptDirectory

    from bot.core.db import alembic_config, head_revision, make_engine, schema_is_current, upgrade_schema

    engine = make_engine(f"sqlite:///{tmp_path / 'scrm.db'}")
    try:
        assert head_revision() == ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
        assert not schema_is_current(engine)  # no version table yet
        upgrade_schema(engine, "0008")
        assert not schema_is_current(engine)
        upgrade_schema(engine)
        assert schema_is_current(engine)
    finally:
        engine.dispose()
