"""Engine, sessions and schema migrations (Alembic, run programmatically)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from bot.core.config import DatabaseSettings, redact_url

if TYPE_CHECKING:  # Alembic is imported when a migration runs: most commands and jobs never need it
    from alembic.config import Config as AlembicConfig

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


class DatabaseUnavailable(RuntimeError):
    """The configured database cannot be used. The message is one line naming ``database.url``
    and the cause, fit to show a user as it is."""


class NoDatabase(DatabaseUnavailable):
    """Nothing is there yet: the command needs `scrm init` (or serve / demo) to create it."""


class Database:
    """One engine and one session factory per process."""

    def __init__(self, settings: DatabaseSettings) -> None:
        self.url = settings.url
        self.engine = make_engine(settings.url, echo=settings.echo)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._bounded: dict[tuple[int, bool], Engine] = {}
        self._idle_raw: dict[Engine, list[Any]] = {}

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
        """A DBAPI connection in autocommit mode with a bounded lock wait (see :meth:`begin_bounded`), for
        one statement on a hot path where SQLAlchemy's own work would cost more than the statement, and
        a transaction around it one round trip (BEGIN) or two (COMMIT) more. The connections stay
        checked out of the pool between statements, kept here on a stack: the pool's checkout and
        check-in cost a third of the webhook's insert. Driver errors come out as SQLAlchemy's
        (``OperationalError`` for a lock or a lost server), parameters hidden; a connection the
        server dropped is discarded rather than kept."""
        engine = self._bounded_engine(lock_wait_seconds, autocommit=True)
        dbapi = engine.dialect.loaded_dbapi
        idle = self._idle_raw.setdefault(engine, [])
        try:
            raw = idle.pop()  # list.pop and append are atomic: no lock needed between request threads
        except IndexError:
            raw = engine.raw_connection()
        try:
            yield raw
        except dbapi.Error as exc:
            _rollback_quietly(raw)
            if engine.dialect.is_disconnect(exc, raw.dbapi_connection, None):
                raw.invalidate(exc)  # a dropped connection is not kept; a lock timeout's is
            else:
                _keep(idle, raw, engine)
            raise DBAPIError.instance(None, None, exc, dbapi.Error, hide_parameters=True,
                                      dialect=engine.dialect) from exc
        except BaseException:
            _rollback_quietly(raw)
            _keep(idle, raw, engine)
            raise
        _keep(idle, raw, engine)

    def _bounded_engine(self, lock_wait_seconds: float, autocommit: bool) -> Engine:
        key = (max(1, int(lock_wait_seconds * 1000)), autocommit)
        engine = self._bounded.get(key)
        if engine is None:
            engine = self._bounded.setdefault(key, make_engine(self.url, lock_wait_ms=key[0], autocommit=autocommit))
        return engine

    def upgrade(self) -> None:
        """Migrate to the newest schema; a database already there is left alone without loading Alembic
        (0.2–0.5 s of every command's start)."""
        if not schema_is_current(self.engine):
            upgrade_schema(self.engine)

    def has_schema(self) -> bool:
        """Whether this database was ever initialised (Alembic keeps its revision in a table)."""
        return inspect(self.engine).has_table("alembic_version")

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def dispose(self) -> None:
        for idle in self._idle_raw.values():
            kept, idle[:] = list(idle), []
            for raw in kept:
                raw.close()
        self.engine.dispose()
        for engine in self._bounded.values():
            engine.dispose()


def _keep(idle: list[Any], raw: Any, engine: Engine) -> None:
    """Back on the idle stack, up to the pool's own size; a connection past it (a burst of requests)
    goes back to the pool, which closes what it does not keep."""
    if len(idle) < getattr(engine.pool, "size", lambda: 5)():
        idle.append(raw)
    else:
        raw.close()


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
    kwargs: dict[str, Any] = {"future": True, "hide_parameters": True}
    if echo:
        # Not create_engine(echo=True): that adds SQLAlchemy's own handler writing to stdout, where a
        # command's output goes (TOKEN=$(scrm token create shop) would capture SQL). At INFO the
        # statements go through this process's logging instead: stderr, secrets and personal data scrubbed.
        logging.getLogger("sqlalchemy.engine").setLevel(logging.INFO)
    if parsed.get_backend_name() == "sqlite":
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


def open_database(settings: DatabaseSettings, create: bool) -> Database:
    """The configured database at the newest schema. Only ``create`` (init, serve, demo) makes a
    missing one; otherwise a command on a mistyped URL would work on an empty database and say
    nothing. Every failure is one :class:`DatabaseUnavailable` line instead of a driver traceback."""
    setting = f"database.url {redact_url(settings.url)}"
    path = sqlite_file(settings.url)
    if path is not None:
        problem = sqlite_path_problem(path)
        if problem:
            raise DatabaseUnavailable(f"{setting}: {problem}")
        if not path.exists():
            if not create:
                raise NoDatabase(f"no database at {path} ({setting}) — run `scrm init` to create it")
            path.parent.mkdir(parents=True, exist_ok=True)
    db = Database(settings)
    try:
        if not create and not db.has_schema():
            raise NoDatabase(f"no scrm schema in the database at {setting} — run `scrm init` to create it")
        db.upgrade()
    except DBAPIError as exc:
        db.dispose()
        raise DatabaseUnavailable(f"{setting}: {_cause(exc, path)}") from None
    except BaseException as exc:
        db.dispose()
        if _alembic_refused(exc):
            raise DatabaseUnavailable(f"{setting}: its schema cannot be upgraded by this version ({exc})") from None
        raise
    return db


def _alembic_refused(exc: BaseException) -> bool:
    """Whether Alembic refused the upgrade. Alembic is imported only then: a database at the newest
    schema never loads it, and importing it for the class alone cost every command 60–85 ms."""
    import sys

    if "alembic" not in sys.modules:  # it never ran, so it raised nothing
        return False
    from alembic.util.exc import CommandError

    return isinstance(exc, CommandError)


def sqlite_file(url: str) -> Path | None:
    """The file behind a SQLite URL (absolute), or None for other databases and in-memory ones."""
    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:" \
            or database.startswith("file:"):
        return None
    return Path(database).expanduser().absolute()


def sqlite_path_problem(path: Path) -> str | None:
    """Why no database can live at ``path`` (a directory there, or a file where a folder should be)."""
    if path.is_dir():
        return f"{path} is a directory"
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else f"{parent} is a file, not a directory"
    return None


def _cause(exc: DBAPIError, path: Path | None) -> str:
    """The driver's own words on one line (psycopg's span lines; SQLAlchemy adds a background link)."""
    words = " ".join(str(exc.orig).split())
    if path is not None and "file is not a database" in words:
        return f"{path} is not a SQLite database ({words})"
    if path is None and isinstance(exc, OperationalError):
        return f"cannot connect: {words}"
    return words


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
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = engine
    return cfg


_REVISION = re.compile(r"^(down_revision|revision) = ['\"]?([^'\"\n]*)['\"]?$", re.MULTILINE)


def head_revision() -> str | None:
    """The one revision no migration revises (None if the scripts branch: Alembic decides then)."""
    revisions, revised = set(), set()
    for script in (MIGRATIONS_DIR / "versions").glob("*.py"):
        found = dict(m.groups() for m in _REVISION.finditer(script.read_text(encoding="utf-8")))
        revisions.add(found.get("revision"))
        revised.add(found.get("down_revision"))
    heads = revisions - revised - {None}
    return heads.pop() if len(heads) == 1 else None


def schema_is_current(engine: Engine) -> bool:
    """Whether the database records the head revision (a missing version table: no)."""
    head = head_revision()
    if head is None:
        return False
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return False
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [head]


def upgrade_schema(engine: Engine, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(engine), revision)


def downgrade_schema(engine: Engine, revision: str = "base") -> None:
    from alembic import command

    command.downgrade(alembic_config(engine), revision)


MAX_ROW_ID = 2**63 - 1  # a BIGINT key, on SQLite and PostgreSQL alike


def row_id(text: str) -> int | None:
    """A row id typed by a person (ASCII digits within a BIGINT), else None: "²" and "１２" are digits to
    str.isdigit but not to int(), and a number past 2⁶³ overflows the database driver."""
    text = text.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 19:
        return None
    value = int(text)
    return value if value <= MAX_ROW_ID else None


def contains_pattern(text: str) -> str:
    """A LIKE pattern (with ``escape="\\"``) for ``text`` anywhere: its own % and _ match only themselves."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
