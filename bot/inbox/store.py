"""Storing decrypted callbacks exactly once."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session

from bot.models import InboxEvent, utcnow


@dataclass(frozen=True)
class StoreResult:
    event_id: int
    duplicate: bool
    requeued: bool = False


# Events whose handler re-reads the current state from WeCom. Two real edits in one second are
# byte-identical callbacks, so a repeat of one already handled is run again: harmless for a
# retry (the re-read finds nothing new), and it picks up the second edit.
RESYNC_ON_REPEAT = frozenset({("event", "change_external_contact", "edit_external_contact"),
                              ("event", "change_external_tag", None),
                              ("event", "change_external_chat", "update")})


def dedupe_key(fields: dict[str, Any]) -> str:
    """The identity of a callback across WeCom's retries.

    Messages carry MsgId. Events do not, and CreateTime alone collides (many events share a second;
    change_external_contact's FromUserName is always ``sys``), so an event's key is a digest of all
    of its fields — event type, change type, every id and CreateTime among them. A retry resends
    the same plaintext and so gets the same key; two real events differ in at least one field.
    """
    msg_id = fields.get("MsgId")
    if msg_id:
        scope = f"{fields.get('ToUserName', '')}|{fields.get('AgentID', '')}"
        return f"msgid:{str(msg_id)[:64]}:{_digest(scope)[:16]}"
    canonical = json.dumps(fields, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return f"event:{_digest(canonical)}"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def insert_new_event(dbapi_connection: Any, dialect: Dialect, fields: dict[str, Any], payload: str) -> int | None:
    """The webhook's hot path: INSERT … ON CONFLICT DO NOTHING [RETURNING id] on a DBAPI connection in
    autocommit mode. The id of the new row, or None when the key is stored already (then
    :func:`store_event` records the duplicate). Through a Session the same insert cost several times
    the database's own work on every callback.

    On SQLite the statement has no RETURNING: with it, the autocommit transaction (and the database's
    one write lock) ends only at the step after the row, which the request thread runs once it has the
    GIL back, so every other writer waited out a GIL hand-over too. Without it the insert commits in
    one step; the row count and last rowid say what happened (both per connection).

    On PostgreSQL the statement is prepared once per connection and run through libpq directly
    (:func:`_insert_prepared`)."""
    sql, names, processors = _compiled_insert(dialect)
    values = _row_values(fields, payload)
    bound = {name: (processors[name](values[name]) if processors.get(name) else values[name]) for name in names}
    if dialect.name == "postgresql":
        return _insert_prepared(dbapi_connection, [bound[name] for name in names])
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(sql, tuple(bound[n] for n in names) if dialect.positional else bound)
        if dialect.name == "sqlite":
            return int(cursor.lastrowid) if cursor.rowcount == 1 else None
        row = cursor.fetchone()
    finally:
        cursor.close()
    return int(row[0]) if row else None


_PREPARED = b"scrm_inbox_insert"
_PREPARED_FLAG = "scrm_inbox_insert_prepared"


def _insert_prepared(dbapi_connection: Any, values: list[Any]) -> int | None:
    """PostgreSQL: the insert as a statement prepared on this connection, run by libpq (which lets go of
    the GIL while it waits). psycopg's cursor (a generator-driven wait, the query's placeholders
    converted, each value dumped by type) cost 60–80 µs of a request's CPU more than the statement's
    own round trip; this costs a third of that. Values go as text, typed by the table's columns. A
    statement the server no longer knows (``DISCARD ALL``, a pooler that moved the session) is prepared
    again, and one it already has is used. Behind PgBouncer in transaction mode, prepared statements need
    its ``max_prepared_statements`` (1.21+), as psycopg's own prepared statements do."""
    from psycopg import DataError, errors, pq

    connection = dbapi_connection.dbapi_connection
    pgconn = connection.pgconn
    encoding = connection.info.encoding
    params = [None if value is None else _as_text(value).encode(encoding) for value in values]
    if any(param is not None and b"\x00" in param for param in params):
        raise DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes")
    for attempt in (1, 2):
        if not dbapi_connection.info.get(_PREPARED_FLAG):
            prepared = pgconn.prepare(_PREPARED, _prepared_sql())
            if prepared.status != pq.ExecStatus.COMMAND_OK:
                refused = errors.error_from_result(prepared, encoding=encoding)
                if not isinstance(refused, errors.DuplicatePreparedStatement):
                    raise refused
            dbapi_connection.info[_PREPARED_FLAG] = True
        result = pgconn.exec_prepared(_PREPARED, params)
        if result.status == pq.ExecStatus.TUPLES_OK:
            return int(result.get_value(0, 0)) if result.ntuples else None
        error = errors.error_from_result(result, encoding=encoding)
        if attempt == 1 and isinstance(error, errors.InvalidSqlStatementName):
            dbapi_connection.info.pop(_PREPARED_FLAG, None)
            continue
        raise error
    raise AssertionError("unreachable")


def _as_text(value: Any) -> str:
    return value.isoformat(" ") if isinstance(value, datetime) else str(value)


@lru_cache(maxsize=1)
def _prepared_sql() -> bytes:
    """The hot insert in PostgreSQL's own placeholders ($1 …), columns in :func:`_compiled_insert`'s order."""
    from sqlalchemy.dialects.postgresql import psycopg as pg_psycopg

    sql, names, _ = _compiled_insert(pg_psycopg.dialect())
    for number, name in enumerate(names, start=1):
        sql = sql.replace(f"%({name})s", f"${number}")
    return sql.encode()


_COMPILED: dict[tuple[str, str, str], tuple[str, tuple[str, ...], dict[str, Any]]] = {}


def _compiled_insert(dialect: Dialect) -> tuple[str, tuple[str, ...], dict[str, Any]]:
    """The SQL in the driver's parameter style, the parameter names in order, and each column type's
    conversion (SQLite stores datetimes as SQLAlchemy's text, not the driver's)."""
    key = (dialect.name, dialect.driver, dialect.paramstyle)
    if key not in _COMPILED:
        _COMPILED[key] = _compile_insert(dialect)
    return _COMPILED[key]


def _compile_insert(dialect: Dialect) -> tuple[str, tuple[str, ...], dict[str, Any]]:
    columns = list(_row_values({}, "").keys())
    statement = _insert_statement(dialect.name, returning=dialect.name != "sqlite")
    compiled = statement.compile(dialect=dialect, column_keys=columns)
    names = tuple(compiled.positiontup or compiled.binds.keys()) if dialect.positional else tuple(compiled.binds)
    table = InboxEvent.__table__
    processors = {name: table.c[name].type.bind_processor(dialect) for name in names}
    return str(compiled), names, processors


def _row_values(fields: dict[str, Any], payload: str) -> dict[str, Any]:
    return {
        "dedupe_key": dedupe_key(fields),
        "received_at": utcnow(),
        # Authentic but odd (no MsgType, e.g. a suite's InfoType envelope): kept, and left unhandled.
        "msg_type": str(fields.get("MsgType") or "unknown").lower()[:32],
        "event": _optional_lower(fields.get("Event") or fields.get("InfoType"), 64),
        "change_type": _optional_lower(fields.get("ChangeType"), 64),
        "msg_id": str(fields["MsgId"])[:64] if fields.get("MsgId") else None,
        "payload": payload,
        "status": "pending",
        "attempts": 0,
        "duplicates": 0,
    }


def store_event(session: Session, fields: dict[str, Any], payload: str) -> StoreResult:
    """Insert the event unless its key is already stored; count a duplicate delivery instead."""
    values = _row_values(fields, payload)
    key = values["dedupe_key"]
    stmt = _insert_statement(session.get_bind().dialect.name)
    inserted = session.connection().execute(stmt, values).scalar_one_or_none()
    if inserted is not None:
        return StoreResult(inserted, duplicate=False)
    session.execute(
        update(InboxEvent).where(InboxEvent.dedupe_key == key).values(duplicates=InboxEvent.duplicates + 1)
    )
    existing = session.execute(select(InboxEvent.id).where(InboxEvent.dedupe_key == key)).scalar_one()
    requeued = False
    if (values["msg_type"], values["event"], values["change_type"]) in RESYNC_ON_REPEAT or (
            values["msg_type"], values["event"], None) in RESYNC_ON_REPEAT:
        requeued = session.execute(
            update(InboxEvent).where(InboxEvent.id == existing, InboxEvent.status == "handled")
            .values(status="pending", next_attempt_at=None)).rowcount == 1
    return StoreResult(existing, duplicate=True, requeued=requeued)


@lru_cache(maxsize=8)
def _insert_statement(dialect: str, returning: bool = True) -> Any:
    """INSERT … ON CONFLICT (dedupe_key) DO NOTHING [RETURNING id], built once (SQLite and PostgreSQL)."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    table = InboxEvent.__table__
    statement = insert(table).on_conflict_do_nothing(index_elements=["dedupe_key"])
    return statement.returning(table.c.id) if returning else statement


def _optional_lower(value: Any, limit: int) -> str | None:
    if value is None or value == "":
        return None
    return str(value).lower()[:limit]
