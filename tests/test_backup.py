"""`scrm backup` / `scrm restore`: a consistent copy while writes go on, restored equal; files that are not
a scrm database at a known schema refused in one line, the database left as it was."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from bot.cli import main
from bot.core import backup
from bot.core.db import make_engine, sqlite_file, upgrade_schema
from tests.support import PG_URL

NOW = datetime(2026, 12, 1, 4, 0, tzinfo=UTC)
sqlite_only = pytest.mark.skipif(bool(PG_URL), reason="SQLite's backup API")

# Each transaction adds a customer and its aggregate: a copy that mixed two moments would hold one without
# the other, or a gap in the numbers.
WRITER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
conn.execute("PRAGMA journal_mode=WAL")
i = 0
while True:
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO customers (external_userid, name, contact_type, gender, opted_out, created_at, "
                 "updated_at) VALUES (?, ?, 1, 0, 0, '2026-12-01 00:00:00', '2026-12-01 00:00:00')",
                 (f"wmWRITER{i:08d}", "写入中" * 20))
    conn.execute("INSERT INTO customer_aggregates (customer_id, order_count, paid_amount_fen, refund_count, "
                 "refunded_amount_fen, updated_at) VALUES (last_insert_rowid(), ?, ?, 0, 0, '2026-12-01 00:00:00')",
                 (i, i * 100))
    conn.execute("COMMIT")
    i += 1
    if i == 1:
        print("writing", flush=True)
"""


def scrm(database_url: str, *args: str, ok: bool = True, input: str | None = None) -> str:
    result = CliRunner(env={"SCRM_CONFIG": None, "SCRM_DATABASE_URL": database_url}).invoke(
        main, list(args), input=input, obj=lambda: NOW)
    assert (result.exit_code == 0) == ok, result.output
    return result.output


def seed(path: Path, customers: int) -> None:
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.executemany("INSERT INTO customers (external_userid, name, contact_type, gender, opted_out, created_at, "
                         "updated_at) VALUES (?, ?, 1, 0, 0, '2026-11-01 00:00:00', '2026-11-01 00:00:00')",
                         [(f"wmSEED{i:08d}", f"客户{i}" * 10) for i in range(customers)])


def dump(path: Path) -> list[str]:
    with closing(sqlite3.connect(path)) as conn:
        return list(conn.iterdump())


def digest(path: Path) -> str:
    """The database file's bytes (the "-shm" index is SQLite's scratch space, not content)."""
    files = [p for p in sorted(path.parent.glob(path.name + "*")) if not p.name.endswith("-shm")]
    return hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()


@sqlite_only
def test_a_backup_taken_while_writes_go_on_is_one_moment_and_restores_equal(database_url, tmp_path, monkeypatch):
    source = sqlite_file(database_url)
    assert source is not None
    seed(source, 20_000)
    monkeypatch.setattr(backup, "PAGES_PER_STEP", 16)  # hundreds of steps, with commits between them
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(source)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "writing"
        out = scrm(database_url, "backup", str(tmp_path / "copy.db"), "--no-progress")
        with closing(sqlite3.connect(source)) as conn, conn:
            written_meanwhile = conn.execute("SELECT count(*) FROM customers WHERE external_userid LIKE "
                                             "'wmWRITER%'").fetchone()[0]
        time.sleep(0.2)
    finally:
        writer.kill()
        writer.communicate()
    assert "backed up" in out and "schema revision" in out
    copy = tmp_path / "copy.db"
    assert not (tmp_path / "copy.db-wal").exists()  # a single file
    with closing(sqlite3.connect(copy)) as conn, conn:
        numbers = [row[0] for row in conn.execute(
            "SELECT a.order_count FROM customers c JOIN customer_aggregates a ON a.customer_id = c.id "
            "WHERE c.external_userid LIKE 'wmWRITER%' ORDER BY a.order_count")]
        writers = conn.execute("SELECT count(*) FROM customers WHERE external_userid LIKE 'wmWRITER%'").fetchone()[0]
        aggregates = conn.execute("SELECT count(*) FROM customer_aggregates").fetchone()[0]
    assert 0 < len(numbers) < written_meanwhile  # writes landed before and after the copy's moment
    assert numbers == list(range(len(numbers))) and writers == aggregates == len(numbers)
    with closing(sqlite3.connect(source)) as conn, conn:  # the copy is exactly the source as it was at that moment
        conn.execute(f"DELETE FROM customer_aggregates WHERE order_count >= {len(numbers)}")
        conn.execute(f"DELETE FROM customers WHERE external_userid >= 'wmWRITER{len(numbers):08d}'")
    assert dump(source) == dump(copy)

    elsewhere = tmp_path / "new-machine" / "scrm.db"
    elsewhere.parent.mkdir()
    out = scrm(f"sqlite:///{elsewhere}", "restore", str(copy), "--yes", "--no-progress")
    assert f"restored {copy} into {elsewhere}" in out
    assert dump(elsewhere) == dump(copy)
    with closing(sqlite3.connect(source)) as conn, conn:
        conn.execute("DELETE FROM customers WHERE id % 2 = 0")
    scrm(database_url, "restore", str(copy), "--yes", "--no-progress")  # over a database that changed since
    assert dump(source) == dump(copy)
    assert "wmSEED00000000" in scrm(database_url, "export", "customers")  # and the service's code reads it


def make_file(kind: str, tmp_path: Path, good_backup: Path) -> Path:
    path = tmp_path / f"{kind}.db"
    if kind == "text":
        path.write_text("order_id,amount\nA1,9.90\n", encoding="utf-8")
    elif kind == "truncated":
        path.write_bytes(good_backup.read_bytes()[:5000])
    elif kind == "garbage":
        path.write_bytes(backup.SQLITE_HEADER + bytes(range(256)) * 64)
    elif kind == "other_sqlite":
        with closing(sqlite3.connect(path)) as conn, conn:
            conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    elif kind == "other_alembic":
        with closing(sqlite3.connect(path)) as conn, conn:
            conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
            conn.execute("INSERT INTO alembic_version VALUES ('0011')")
    elif kind == "newer":
        shutil.copyfile(good_backup, path)
        with closing(sqlite3.connect(path)) as conn, conn:
            conn.execute("UPDATE alembic_version SET version_num = '9999'")
    elif kind == "empty":
        path.write_bytes(b"")
    return path


REFUSED = {
    "text": "is not a SQLite database (no SQLite header)",
    "truncated": "is not a usable SQLite database",
    "garbage": "is not a usable SQLite database",
    "other_sqlite": "is a SQLite database but not a scrm database",
    "other_alembic": "is a SQLite database but not a scrm database",
    "newer": "is at schema revision 9999, which this version of scrm does not know",
    "empty": "is not a SQLite database",
    "missing": "no such file",
}


@sqlite_only
@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_a_file_that_is_not_a_known_scrm_database_is_refused_in_one_line(database_url, tmp_path, kind):
    source = sqlite_file(database_url)
    assert source is not None
    seed(source, 10)
    scrm(database_url, "backup", str(tmp_path / "good.db"), "--no-progress")
    bad = make_file(kind, tmp_path, tmp_path / "good.db")
    before = digest(source)
    out = scrm(database_url, "restore", str(bad), "--yes", ok=False)
    assert out.startswith("Error: ") and out.count("\n") == 1, out
    assert REFUSED[kind] in out
    assert digest(source) == before


@sqlite_only
def test_backup_keeps_an_existing_file_unless_forced_and_names_files_in_a_directory(database_url, tmp_path):
    dest = tmp_path / "copy.db"
    dest.write_text("precious", encoding="utf-8")
    out = scrm(database_url, "backup", str(dest), ok=False)
    assert f"{dest} exists; add --force to overwrite it" in out and dest.read_text(encoding="utf-8") == "precious"
    scrm(database_url, "backup", str(dest), "--force", "--no-progress")
    assert backup.check_scrm_database(dest)
    out = scrm(database_url, "backup", str(tmp_path), "--no-progress")
    assert (tmp_path / "scrm-20261201-120000.db").is_file(), out  # 04:00 UTC in Asia/Shanghai
    out = scrm(database_url, "backup", str(tmp_path / "no" / "such" / "dir.db"), ok=False)
    assert f"no such directory: {tmp_path / 'no' / 'such'}" in out
    missing = tmp_path / "nothing-here.db"
    assert "nothing to back up" in scrm(f"sqlite:///{missing}", "backup", str(tmp_path / "x.db"), ok=False)
    assert [p.name for p in tmp_path.iterdir() if ".partial" in p.name] == []


def refused(database_url: str, *args: str) -> str:
    """The one line a refused `scrm backup … --force` prints."""
    out = scrm(database_url, "backup", *args, "--force", "--no-progress", ok=False)
    assert out.startswith("Error: ") and out.count("\n") == 1, out
    return out


@sqlite_only
@pytest.mark.parametrize("spelling", ["dotdot", "symlink", "hardlink", "-wal", "-shm", "-journal"])
def test_backup_never_replaces_the_database_or_its_own_files(database_url, tmp_path, spelling):
    source = sqlite_file(database_url)
    assert source is not None
    (tmp_path / "x").mkdir()
    with closing(sqlite3.connect(source)) as service:  # a running service: WAL, with commits in the -wal
        service.execute("PRAGMA journal_mode=WAL")
        seed(source, 10)
        own = [source.with_name(source.name + suffix) for suffix in ("-wal", "-shm")]
        before = {p: p.read_bytes() for p in (source, *own)}
        if spelling == "dotdot":
            dest = tmp_path / "x" / ".." / source.name
        elif spelling in ("symlink", "hardlink"):
            dest = tmp_path / "x" / "copy.db"
            (dest.symlink_to if spelling == "symlink" else dest.hardlink_to)(source)
        else:
            dest = source.with_name(source.name + spelling)
        out = refused(database_url, str(dest))
        what = "the database itself" if spelling[0] != "-" else f"the database's own {spelling} file"
        assert f"{dest} is {what}" in out
        assert {p: p.read_bytes() for p in (source, *own)} == before
        assert service.execute("SELECT count(*) FROM customers").fetchone()[0] == 10
    assert not source.with_name(source.name + "-journal").exists()


@pytest.mark.parametrize("url", ["sqlite", "postgresql"])
@pytest.mark.parametrize("kind", ["fifo", "directory", "symlink", "dangling symlink"])
def test_backup_refuses_a_dest_that_is_not_a_regular_file(database_url, tmp_path, url, kind):
    """PostgreSQL: refused before pg_dump would run (no server needed: nothing connects)."""
    if url == "sqlite" and PG_URL:
        pytest.skip("SQLite's backup API")
    database_url = database_url if url == "sqlite" else "postgresql://scrm@127.0.0.1:9/scrm"
    dest = tmp_path / "out"
    dest.mkdir()
    target = dest / f"scrm-20261201-120000.{'db' if url == 'sqlite' else 'dump'}"  # the name DEST/ gets
    (tmp_path / "elsewhere.db").write_text("kept", encoding="utf-8")
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "directory":
        target.mkdir()
    else:
        target.symlink_to(tmp_path / ("elsewhere.db" if kind == "symlink" else "nothing"))
    expected = {"fifo": "a FIFO", "directory": "a directory"}.get(kind, "a symbolic link")
    for given in (dest,) if kind == "directory" else (target, dest):  # a directory DEST gets a file inside
        out = refused(database_url, str(given))
        assert f"{target} is {expected}, not a regular file; nothing was written" in out
    assert (tmp_path / "elsewhere.db").read_text(encoding="utf-8") == "kept"
    assert target.is_symlink() if "symlink" in kind else not target.is_symlink()
    assert [p.name for p in dest.iterdir()] == [target.name]


@pytest.mark.parametrize("url", ["sqlite", "postgresql"])
def test_backup_to_a_directory_that_is_not_there_says_so(database_url, tmp_path, url):
    if url == "sqlite" and PG_URL:
        pytest.skip("SQLite's backup API")
    database_url = database_url if url == "sqlite" else "postgresql://scrm@127.0.0.1:9/scrm"
    missing = tmp_path / "backups"
    for dest, named in ((f"{missing}{os.sep}", missing), (str(missing / "scrm.db"), missing),
                        (str(missing / "a" / "scrm.db"), missing / "a")):
        out = refused(database_url, dest)
        assert f"no such directory: {named}" in out
    (tmp_path / "file").write_text("kept", encoding="utf-8")
    assert f"{tmp_path / 'file'} is not a directory" in refused(database_url, f"{tmp_path / 'file'}{os.sep}")
    assert {p.name for p in tmp_path.iterdir()} <= {"file", "scrm.db"}  # the database fixture's file


@sqlite_only
def test_restore_is_refused_while_a_service_has_the_database_open(database_url, tmp_path):
    source = sqlite_file(database_url)
    assert source is not None
    scrm(database_url, "backup", str(tmp_path / "copy.db"), "--no-progress")
    holder = subprocess.Popen([sys.executable, "-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
                               "c.execute('PRAGMA journal_mode=WAL'); c.execute('SELECT 1 FROM customers').fetchall(); "
                               "print('open', flush=True); sys.stdin.readline()", str(source)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        out = scrm(database_url, "restore", str(tmp_path / "copy.db"), "--yes", ok=False)
        assert "is open in a running scrm process" in out
    finally:
        holder.communicate("\n")
    assert "restored" in scrm(database_url, "restore", str(tmp_path / "copy.db"), "--yes", "--no-progress")


@sqlite_only
def test_restore_asks_first_and_upgrades_an_older_backup(database_url, tmp_path):
    older = tmp_path / "older.db"
    previous = backup.schema_revisions()[-2]
    engine = make_engine(f"sqlite:///{older}")
    upgrade_schema(engine, previous)
    engine.dispose()
    source = sqlite_file(database_url)
    assert source is not None
    before = digest(source)
    out = scrm(database_url, "restore", str(older), input="n\n", ok=False)
    assert "Replace the database at" in out and "Aborted" in out and digest(source) == before
    out = scrm(database_url, "restore", str(older), "--no-progress", input="y\n")
    assert f"schema revision {previous}" in out and f"upgraded the schema from revision {previous} to " in out
    assert backup.check_scrm_database(source) == backup.schema_revisions()[-1]


@pytest.mark.skipif(not PG_URL or not shutil.which("pg_dump"), reason="PostgreSQL with pg_dump / pg_restore")
def test_postgresql_backup_and_restore_with_pg_dump(database_url, tmp_path):
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO customers (external_userid, name, contact_type, gender, opted_out, "
                              "created_at, updated_at) VALUES ('wmBEFORE', '备份前', 1, 0, FALSE, now(), now())"))
        out = scrm(database_url, "backup", str(tmp_path / "pg.dump"))
        assert "with pg_dump --format=custom" in out
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO customers (external_userid, name, contact_type, gender, opted_out, "
                              "created_at, updated_at) VALUES ('wmAFTER', '备份后', 1, 0, FALSE, now(), now())"))
        engine.dispose()
        not_a_dump = tmp_path / "notes.db"
        not_a_dump.write_text("hello", encoding="utf-8")
        out = scrm(database_url, "restore", str(not_a_dump), "--yes", ok=False)
        assert "is not a pg_dump archive" in out and out.count("\n") == 1
        assert "restored" in scrm(database_url, "restore", str(tmp_path / "pg.dump"), "--yes")
        with engine.connect() as conn:
            names = conn.execute(text("SELECT external_userid FROM customers ORDER BY 1")).scalars().all()
        assert names == ["wmBEFORE"]
    finally:
        engine.dispose()
