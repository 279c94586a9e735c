"""``scrm backup`` / ``scrm restore`` on SQLite: SQLite's online backup API, a check that a file is a scrm
database at a schema this code knows, and whether a running service has the database open.

A backup copies the database page by page from one read transaction: writers keep writing (WAL), and the
copy is the database as it was when the backup began, never a mix. It is written beside its destination
under a temporary name, checked, switched to a single-file journal and only then renamed into place, so
an interrupted backup never leaves a half-written file under the name asked for."""

from __future__ import annotations

import os
import re
import sqlite3
import stat
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from bot.core.db import MIGRATIONS_DIR

SQLITE_HEADER = b"SQLite format 3\x00"
PAGES_PER_STEP = 1024  # 4 MB at SQLite's default page size: a progress update every few milliseconds
# Tables every scrm schema has had since its first revision: an Alembic database of another project is not ours.
SCRM_TABLES = frozenset({"customers", "orders", "inbox_events", "outbox_messages", "tier_changes"})
# The unix VFS keeps a shared lock on this byte of the "-shm" file while a connection has the database
# open in WAL mode (os_unix.c: UNIX_SHM_DMS = 120 + SQLITE_SHM_NLOCK).
_SHM_DMS_BYTE = 128
# The files SQLite keeps beside a database ("-journal" in rollback mode): a backup renamed onto one of them
# would be replayed over the live database, or replace the index a running service reads through.
SIDECARS = ("-wal", "-shm", "-journal")
_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket", stat.S_IFLNK: "a symbolic link"}

Progress = Callable[[int, int], None]  # (pages copied, pages in all)


class BackupError(RuntimeError):
    """A backup or restore that cannot be done; the message is one line fit to show as it is."""


@dataclass(frozen=True)
class Copied:
    path: Path
    size: int  # bytes
    pages: int
    revision: str
    seconds: float


def schema_revisions() -> list[str]:
    """The migrations this code knows, oldest first."""
    pattern = re.compile(r"^(down_revision|revision) = ['\"]?([^'\"\n]*)['\"]?$", re.MULTILINE)
    parents: dict[str, str | None] = {}
    for script in (MIGRATIONS_DIR / "versions").glob("*.py"):
        found = dict(m.groups() for m in pattern.finditer(script.read_text(encoding="utf-8")))
        if found.get("revision"):
            parents[found["revision"]] = found.get("down_revision") or None
    children = {parent: child for child, parent in parents.items()}
    chain, current = [], children.get(None)
    while current is not None:
        chain.append(current)
        current = children.get(current)
    return chain if len(chain) == len(parents) else sorted(parents)


def check_scrm_database(path: Path, thorough: bool = True) -> str:
    """The schema revision of the scrm database in ``path``, or :class:`BackupError` saying in one line why
    the file is not one this code can use (missing, not SQLite, damaged, another program's, newer).
    ``thorough`` reads every page (``quick_check``: about as long as the copy itself); without it only the
    header and the schema are read, for a file just copied page by page from one that was checked."""
    if not path.is_file():
        raise BackupError(f"{path}: no such file")
    with path.open("rb") as fh:
        if fh.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
            raise BackupError(f"{path} is not a SQLite database (no SQLite header); nothing was changed")
    try:
        with closing(sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)) as conn:
            verdict = conn.execute("PRAGMA quick_check(1)").fetchone()[0] if thorough else "ok"
            if verdict != "ok":
                raise BackupError(f"{path} is damaged ({verdict}); nothing was changed")
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "alembic_version" not in tables or not SCRM_TABLES <= tables:
                raise BackupError(f"{path} is a SQLite database but not a scrm database; nothing was changed")
            revisions = [row[0] for row in conn.execute("SELECT version_num FROM alembic_version")]
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{path} is not a usable SQLite database ({exc}); nothing was changed") from None
    known = schema_revisions()
    if len(revisions) != 1 or revisions[0] not in known:
        found = ", ".join(revisions) or "none"
        raise BackupError(f"{path} is at schema revision {found}, which this version of scrm does not know "
                          f"(it knows {known[0]}…{known[-1]}): restore it with the version that made it")
    return revisions[0]


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file however they are spelt (``..``, symbolic links, hard links); for a
    file not there yet, whether they would once every link in them is followed."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them is not there
        return a.resolve() == b.resolve()


def check_destination(dest: Path, database: Path | None) -> None:
    """Refuse, with :class:`BackupError` in one line, a backup DEST that must not be replaced: the SQLite
    ``database`` itself or one of its "-wal", "-shm", "-journal" files, however spelt, and anything there
    that is not a regular file (a device, a FIFO, a directory, a symbolic link: renaming over a link
    replaces the link, not the file it names). Nothing else is checked here (an existing file without
    --force is the caller's)."""
    if database is not None:
        if same_file(dest, database):
            raise BackupError(f"{dest} is the database itself; back up to another file")
        for base in {database.absolute(), database.resolve()}:
            for suffix in SIDECARS:
                if same_file(dest, base.with_name(base.name + suffix)):
                    raise BackupError(f"{dest} is the database's own {suffix} file; back up to another file")
    try:
        mode = dest.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
        raise BackupError(f"{dest} is {kind}, not a regular file; nothing was written")


def holder_of(database: Path) -> bool:
    """Whether a process has the SQLite database open (a running `scrm serve`, worker or scheduler). Asks
    about the lock SQLite itself keeps on the "-shm" file in WAL mode; False where that cannot be told (no
    such file: nobody has it open; no POSIX locks: Windows).

    Linux: read from /proc/locks, without opening the file. Opening and closing it would release every
    POSIX lock this process holds on it (POSIX ties them to the process, not the descriptor), SQLite's own
    included, had this process the database open."""
    shm = database.with_name(database.name + "-shm")
    try:
        inode = shm.stat().st_ino
    except FileNotFoundError:
        return False
    try:
        table = Path("/proc/locks").read_text(encoding="ascii", errors="replace")
    except OSError:
        return _lock_probe(shm)
    for line in table.splitlines():
        fields = line.split()
        if len(fields) < 8 or fields[1] == "->":  # "->": a waiter, not a holder
            continue
        device_inode, start, end = fields[5], fields[6], fields[7]
        if device_inode.rsplit(":", 1)[-1] == str(inode) and int(start) <= _SHM_DMS_BYTE \
                and (end == "EOF" or _SHM_DMS_BYTE <= int(end)):
            return True
    return False


def _lock_probe(shm: Path) -> bool:
    """Elsewhere: take the byte and let it go (the command calling this has not opened the database)."""
    try:
        import fcntl
    except ImportError:
        return False
    fd = os.open(shm, os.O_RDWR)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, _SHM_DMS_BYTE)
        except OSError:
            return True
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, _SHM_DMS_BYTE)
        return False
    finally:
        os.close(fd)


def backup_sqlite(source: Path, dest: Path, progress: Progress | None = None,
                  checking: Callable[[], None] | None = None) -> Copied:
    """Copy the live database ``source`` to ``dest`` (which the caller has checked it may write); ``checking``
    is called when the copy is done and its check (a read of the whole copy) begins."""
    started = time.monotonic()
    partial = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    try:
        with closing(sqlite3.connect(source, timeout=30, isolation_level=None)) as src, \
                closing(sqlite3.connect(partial, isolation_level=None)) as out:
            src.execute("BEGIN")  # one read snapshot for every step: writers go on, the copy never mixes states
            src.execute("SELECT count(*) FROM sqlite_master").fetchone()
            _copy(src, out, progress)
            src.execute("COMMIT")
            out.execute("PRAGMA journal_mode=DELETE")  # a single file: no -wal beside the backup
            pages = out.execute("PRAGMA page_count").fetchone()[0]
        if checking is not None:
            checking()
        revision = check_scrm_database(partial)
        with partial.open("rb") as fh:
            os.fsync(fh.fileno())
        check_destination(dest, source)  # again: DEST may have changed while the copy was made
        os.replace(partial, dest)
    except sqlite3.Error as exc:
        raise BackupError(f"backup of {source} failed: {exc}") from None
    finally:
        partial.unlink(missing_ok=True)
    return Copied(dest, dest.stat().st_size, pages, revision, time.monotonic() - started)


def restore_sqlite(backup: Path, target: Path, progress: Progress | None = None) -> Copied:
    """Replace the database ``target`` with ``backup`` (already checked; nobody has ``target`` open). The
    backup is copied through the backup API (which reads a "-wal" beside it, if any) into a new file beside
    the target, checked and synced; then the target's "-wal" and "-shm" are removed — replayed over the new
    file they would corrupt it — and the new file is renamed over the target. Until that rename the old
    database is there as it was; after it, the new one whole (writing the pages through the target's own
    write-ahead log instead would write each of them twice)."""
    started = time.monotonic()
    fresh = target.with_name(f".{target.name}.restoring-{os.getpid()}")
    try:
        with closing(sqlite3.connect(f"{backup.absolute().as_uri()}?mode=ro", uri=True)) as src, \
                closing(sqlite3.connect(fresh, isolation_level=None)) as out:
            _copy(src, out, progress)
            out.execute("PRAGMA journal_mode=DELETE")
            pages = out.execute("PRAGMA page_count").fetchone()[0]
        check_scrm_database(fresh, thorough=False)  # the backup was read whole before: the copy is its pages
        with fresh.open("rb") as fh:
            os.fsync(fh.fileno())
        if target.exists():
            os.chmod(fresh, stat.S_IMODE(target.stat().st_mode))
        for suffix in ("-wal", "-shm"):
            target.with_name(target.name + suffix).unlink(missing_ok=True)
        os.replace(fresh, target)
    except sqlite3.Error as exc:
        raise BackupError(f"restore into {target} failed: {exc}; the database was not changed") from None
    finally:
        fresh.unlink(missing_ok=True)
    return Copied(target, target.stat().st_size, pages, check_scrm_database(target, thorough=False),
                  time.monotonic() - started)


def _copy(src: sqlite3.Connection, out: sqlite3.Connection, progress: Progress | None) -> None:
    def step(_status: int, remaining: int, total: int) -> None:
        if progress is not None:
            progress(total - remaining, total)

    src.backup(out, pages=PAGES_PER_STEP, progress=step)
