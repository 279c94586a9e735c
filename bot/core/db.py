"""Engine, sessions and schema migrations (Alembic, run programmatically)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from bot.core.config import DatabaseSettings

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


class Database:
    """One engine and one session factory per process."""

    def __init__(self, settings: DatabaseSettings) -> None:
        self.url = settings.url
        self.engine = make_engine(settings.url, echo=settings.echo)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._bounded: dict[tuple[int, bool], Engine] = {}

    @contextmanager
    def begin(self) -> Iterator[Session]:
        """A session inside one transaction: commits on success, rolls back on error."""
        with self.sessions() as session, session.begin():
            yield session

    @contextmanager
    def begin_bounded(self, lock_wait_seconds: float) -> Iterator[Session]:
        """Like :meth:`begin`, but a statement waits at most ``lock_wait_seconds`` for another writer's
        lock and then raises ``OperationalError``: for a request that must answer before its caller
        gives up. Elsewhere the 30 s wait rides out long imports and re-tiers.

        The bound is set once per connection of a second, small pool (SQLite's busy_timeout,
        PostgreSQL's lock_timeout and statement_timeout), not per transaction: three statements
        less on every webhook request."""
        with Session(self._bounded_engine(lock_wait_seconds, autocommit=False), expire_on_commit=False) as session, \
                session.begin():
            yield session

    @contextmanager
    def raw_statement(self, lock_wait_seconds: float) -> Iterator[Any]:
        """A DBAPI connection in autocommit mode from a bounded pool (see :meth:`begin_bounded`), for one
        statement on a hot path where SQLAlchemy's own work would cost more than the statement, and
        a transaction around it one round trip (BEGIN) or two (COMMIT) more. Driver errors come out as
        SQLAlchemy's (``OperationalError`` for a lock or a lost server), parameters hidden; a
        connection the server dropped is discarded rather than returned to the pool."""
        engine = self._bounded_engine(lock_wait_seconds, autocommit=True)
        dbapi = engine.dialect.loaded_dbapi
        raw = engine.raw_connection()
        try:
            yield raw
            raw.commit()
        except dbapi.Error as exc:
            _rollback_quietly(raw)
            if engine.dialect.is_disconnect(exc, raw.dbapi_connection, None):
                raw.invalidate(exc)  # a dropped connection is not put back; a lock timeout's is
            raise DBAPIError.instance(None, None, exc, dbapi.Error, hide_parameters=True,
                                      dialect=engine.dialect) from exc
        except BaseException:
            _rollback_quietly(raw)
            raise
        finally:
            raw.close()

    def _bounded_engine(self, lock_wait_seconds: float, autocommit: bool) -> Engine:
        key = (max(1, int(lock_wait_seconds * 1000)), autocommit)
        engine = self._bounded.get(key)
        if engine is None:
            engine = self._bounded.setdefault(key, make_engine(self.url, lock_wait_ms=key[0], autocommit=autocommit))
        return engine

    def upgrade(self) -> None:
        upgrade_schema(self.engine)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def dispose(self) -> None:
        self.engine.dispose()
        for engine in self._bounded.values():
            engine.dispose()


def _rollback_quietly(raw: Any) -> None:
    try:
        raw.rollback()
    except Exception:  # noqa: BLE001 - the connection may be gone; the original error is what matters
        pass


def make_engine(url: str, echo: bool = False, lock_wait_ms: int | None = None, autocommit: bool = False) -> Engine:
    """``lock_wait_ms``: how long each statement of this engine's connections may wait for a lock
    (default: 30 s on SQLite, no limit on PostgreSQL). ``autocommit``: every statement commits itself."""
    parsed = make_url(url)
    # hide_parameters: an error's message (and echo) would carry the statement's values: a decrypted
    # callback with the customer's message text, names, phone numbers.
    kwargs: dict[str, Any] = {"echo": echo, "future": True, "hide_parameters": True}
    if parsed.get_backend_name() == "sqlite":
        _ensure_sqlite_dir(parsed.database)
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    else:
        # The bounded pool answers callbacks: a ping per checkout would be one more round trip each, and
        # a connection the server dropped fails that request with a 503 that WeCom retries anyway.
        kwargs["pool_pre_ping"] = lock_wait_ms is None
        if lock_wait_ms is not None:
            kwargs["connect_args"] = {"options": f"-c lock_timeout={lock_wait_ms} -c statement_timeout={lock_wait_ms}"}
        if parsed.drivername == "postgresql":  # plain postgresql:// → the psycopg 3 driver we ship
            url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    if autocommit:
        kwargs["isolation_level"] = "AUTOCOMMIT"
    engine = create_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "checkin", _foreign_keys_back_on)
        if lock_wait_ms is not None:
            event.listen(engine, "connect", lambda dbapi_connection, _record: dbapi_connection.execute(
                f"PRAGMA busy_timeout={int(lock_wait_ms)}"))
    return engine


def sqlite_foreign_keys_off(session: Session) -> bool:
    """SQLite: stop checking foreign keys on this session's connection until it goes back to the pool.
    For bulk writes that take every reference from a join with the parent table inside the same write
    transaction (SQLite has one writer, so the parent row stays until commit): at 10M orders the
    per-row check of customers costs 42 s of 78. The pragma only takes effect outside a transaction;
    returns whether it did (not once the session has written)."""
    conn = session.connection()
    dbapi_connection = conn.connection.dbapi_connection
    if conn.dialect.name != "sqlite" or dbapi_connection is None or dbapi_connection.in_transaction:
        return False
    dbapi_connection.execute("PRAGMA foreign_keys=OFF")
    conn.connection.info[_FOREIGN_KEYS_OFF] = True
    return True


_FOREIGN_KEYS_OFF = "scrm_foreign_keys_off"


def _foreign_keys_back_on(dbapi_connection: Any, record: Any) -> None:
    """Pool check-in (after the transaction ended): checking foreign keys again."""
    if record.info.pop(_FOREIGN_KEYS_OFF, False) and dbapi_connection is not None:
        dbapi_connection.execute("PRAGMA foreign_keys=ON")


def _ensure_sqlite_dir(database: str | None) -> None:
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the webhook write while the worker reads; busy_timeout rides out short locks.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    # Imports and re-tiers touch every index; SQLite's 2 MB default page cache makes that disk-bound.
    # 128 MB imports as fast as 256 MB did (bench/tiering.py); temporary tables and sorts go to
    # temporary files (kept by the OS cache, outside the process): a 1M-customer re-tier peaked at
    # 818 MB with them in memory, 225 MB and a little faster without.
    cursor.execute("PRAGMA cache_size=-131072")
    cursor.execute("PRAGMA temp_store=FILE")
    # Some builds (Debian's) turn secure_delete on: every freed page is zeroed and written, so dropping
    # an import's staging tables (10M rows) cost 5.3 s. FAST zeroes freed content only on pages that
    # are written anyway; the temporary database does not follow the main one's setting.
    cursor.execute("PRAGMA secure_delete=FAST")
    cursor.execute("PRAGMA temp.secure_delete=FAST")
    cursor.close()


def alembic_config(engine: Engine) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade_schema(engine: Engine, revision: str = "head") -> None:
    command.upgrade(alembic_config(engine), revision)


def downgrade_schema(engine: Engine, revision: str = "base") -> None:
    command.downgrade(alembic_config(engine), revision)
