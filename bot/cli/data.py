"""``scrm backup DEST | restore SRC | customer forget REF``: copies of the database while the service runs
and back, and erasing one customer's personal data."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from bot.cli.context import CliContext, pass_cli

if TYPE_CHECKING:
    from bot.core.config import Settings


BIG_FILE = 64_000_000  # bytes: reading every page takes a second or more, so say what is going on


class _PageProgress:
    """A bar in bytes over SQLite's page copy (hidden with --no-progress)."""

    def __init__(self, what: str, enabled: bool) -> None:
        self.what, self.enabled, self.bar, self.page_size = what, enabled, None, 4096

    def __call__(self, copied: int, total: int) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total * self.page_size, unit="B", unit_scale=True, desc=self.what,
                            disable=not self.enabled)
        self.bar.update(copied * self.page_size - self.bar.n)

    def checking(self) -> None:
        if self.bar is not None:
            self.bar.set_description(f"{self.what}: copied; checking every page")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@click.command("backup")
@click.argument("dest", type=click.Path())
@click.option("--force", is_flag=True, help="Overwrite DEST if it exists.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@pass_cli
def backup_cmd(cli: CliContext, dest: str, force: bool, no_progress: bool) -> None:
    """Copy the database to DEST while the service keeps running.

    SQLite: SQLite's online backup API from one read snapshot (writers are not stopped; the copy is the
    database as it was when the backup began), checked, then renamed into place. DEST may be a directory:
    the file is then named scrm-<local time>.db (.dump on PostgreSQL). PostgreSQL: pg_dump --format=custom
    (the command is printed when pg_dump is not on PATH). An existing DEST is kept unless --force; the
    database and its -wal, -shm and -journal files, and a DEST that is not a regular file, never."""
    from bot.core.backup import BackupError, backup_sqlite, check_destination
    from bot.core.db import sqlite_file

    settings = cli.settings()
    source = sqlite_file(settings.database.url)
    stamp = f"scrm-{cli.now().astimezone(settings.tz):%Y%m%d-%H%M%S}.{'db' if source else 'dump'}"
    path = _backup_path(dest, stamp)
    try:
        if source is not None and not source.is_file():
            raise click.ClickException(f"no database at {source} — nothing to back up")
        check_destination(path, source)
        if path.exists() and not force:
            raise click.ClickException(f"{path} exists; add --force to overwrite it")
        if source is None:
            _pg_dump(settings, path)
            return
        bar = _PageProgress("backup", not no_progress)
        try:
            copied = backup_sqlite(source, path, bar, checking=bar.checking)
        finally:
            bar.close()
    except BackupError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"backed up {source} to {copied.path}: {_mb(copied.size)}, {copied.pages} pages, "
               f"schema revision {copied.revision}, in {copied.seconds:.1f}s")


def _backup_path(dest: str, stamped_name: str) -> Path:
    """The file a backup to DEST writes: DEST, or ``stamped_name`` inside DEST when DEST is a directory.
    DEST ending in a path separator must be a directory; the file's own directory must be there."""
    path = Path(dest)
    if dest.endswith(("/", os.sep)) and not path.is_dir():
        raise click.ClickException(_not_a_directory(path))
    if path.is_dir():
        path = path / stamped_name
    parent = path.absolute().parent
    if not parent.is_dir():
        raise click.ClickException(_not_a_directory(parent))
    return path


def _not_a_directory(path: Path) -> str:
    return f"{path} is not a directory" if path.exists() else f"no such directory: {path}"


@click.command("restore")
@click.argument("src", type=click.Path(path_type=Path))
@click.option("--yes", is_flag=True, help="Do not ask before replacing the database.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@pass_cli
def restore_cmd(cli: CliContext, src: Path, yes: bool, no_progress: bool) -> None:
    """Replace the configured database with the backup SRC.

    SRC must be a scrm database (a `scrm backup` file; on PostgreSQL a pg_dump archive) at a schema
    revision this version knows; an older one is upgraded afterwards. Refused while a scrm service has
    the database open (stop serve, worker and scheduler first) or, with Redis, while a scheduler holds
    its lock. Asks before replacing unless --yes."""
    from bot.core.backup import BackupError, check_scrm_database, holder_of, restore_sqlite, same_file
    from bot.core.db import sqlite_file

    settings = cli.settings()
    target = sqlite_file(settings.database.url)
    try:
        if target is None:
            _pg_restore(cli, settings, src, yes)
            return
        if not no_progress and src.is_file() and src.stat().st_size > BIG_FILE:
            click.echo(f"checking {src} (every page)…", err=True)
        revision = check_scrm_database(src)
        if same_file(src, target):
            raise click.ClickException("SRC is the configured database itself")
        if holder_of(target):
            raise click.ClickException(f"{target} is open in a running scrm process (serve, worker or scheduler): "
                                       "stop it, then restore")
        _refuse_while_scheduling(settings)
        if not yes:
            click.confirm(f"Replace the database at {target} with {src} (schema revision {revision})? "
                          "What was written since that backup is lost", abort=True)
        bar = _PageProgress("restore", not no_progress)
        try:
            copied = restore_sqlite(src, target, bar)
        finally:
            bar.close()
    except BackupError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"restored {src} into {target}: {_mb(copied.size)}, schema revision {copied.revision}, "
               f"in {copied.seconds:.1f}s")
    _report_upgrade(cli, copied.revision)


def _pg_dump(settings: Settings, dest: Path) -> None:
    from bot.core import pgdump
    from bot.core.backup import check_destination

    partial = dest.with_name(f".{dest.name}.partial")
    command = pgdump.dump_command(settings.database.url, partial)
    if not pgdump.available("pg_dump"):
        shown = pgdump.dump_command(settings.database.url, dest).shown()
        raise click.ClickException(f"pg_dump is not on PATH (Debian: apt install postgresql-client); run: {shown}")
    try:
        pgdump.run(command)
        check_destination(dest, None)  # again: DEST may have changed while pg_dump ran
        partial.replace(dest)
    finally:
        partial.unlink(missing_ok=True)
    click.echo(f"backed up the PostgreSQL database to {dest} with pg_dump --format=custom: {_mb(dest.stat().st_size)}")


def _pg_restore(cli: CliContext, settings: Settings, src: Path, yes: bool) -> None:
    from bot.core import pgdump
    from bot.core.db import make_engine

    command = pgdump.restore_command(settings.database.url, src)
    if not pgdump.available("pg_restore"):
        raise click.ClickException(f"pg_restore is not on PATH (Debian: apt install postgresql-client); "
                                   f"stop the service, then run: {command.shown()}")
    revision = pgdump.check_dump(src)
    engine = make_engine(settings.database.url)
    try:
        others = pgdump.other_sessions(engine)
    except Exception as exc:  # noqa: BLE001 - the driver's error, shown on one line
        raise click.ClickException(f"cannot connect to the database: {' '.join(str(exc).split())[:300]}") from None
    finally:
        engine.dispose()
    if others:
        raise click.ClickException(f"{others} other connection(s) to this database (a running scrm service?): "
                                   "stop them, then restore")
    _refuse_while_scheduling(settings)
    if not yes:
        click.confirm(f"Replace the PostgreSQL database's tables with {src} (schema revision {revision})? "
                      "What was written since that backup is lost", abort=True)
    pgdump.run(command)
    click.echo(f"restored {src} with pg_restore: schema revision {revision}")
    _report_upgrade(cli, revision)


def _refuse_while_scheduling(settings: Settings) -> None:
    """With Redis: a live scheduler lock means a scrm scheduler is running against this deployment."""
    if not settings.redis.url:
        return
    import redis

    client: Any = redis.Redis.from_url(settings.redis.url, socket_timeout=2, socket_connect_timeout=2)
    try:
        held = client.exists(f"{settings.redis.key_prefix}:scheduler:lock")
    except redis.RedisError:
        click.echo("note: Redis did not answer, so a running scheduler could not be ruled out", err=True)
        return
    finally:
        client.close()
    if held:
        raise click.ClickException("a scrm scheduler holds its lock in Redis (it is running): stop the "
                                   "service's processes, then restore")


def _report_upgrade(cli: CliContext, revision: str) -> None:
    from bot.core.db import head_revision

    head = head_revision()
    if head and revision != head:
        cli.db()  # opening migrates to the newest schema
        click.echo(f"upgraded the schema from revision {revision} to {head}")


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


@click.command("forget")
@click.argument("customer_ref")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--actor", default=None,
              help="Who asks, for the audit log (default: cli:<login name>).")
@click.option("--vacuum", is_flag=True,
              help="SQLite: also rebuild the file (VACUUM) so that no older copy of the data is left in free "
                   "pages; writers wait while it runs.")
@pass_cli
def forget_cmd(cli: CliContext, customer_ref: str, yes: bool, actor: str | None, vacuum: bool) -> None:
    """Erase a customer's personal data (PIPL right to deletion), keeping anonymous aggregates and tiers.

    CUSTOMER_REF is the external_userid or the id. Name, avatar, unionid, company, birthday, gender,
    follow remarks and descriptions, message texts, the text of messages sent to or about them, and the
    contact's id wherever it was stored are erased; orders' amounts and days, aggregates, tiers and
    their history, tags and predictions stay, under the customer id. The contact sync and the imports
    do not bring a forgotten contact back; a customer who adds a member again starts a new record.
    Recorded in the audit log (who, when, customer id). Running it twice changes nothing."""
    import getpass

    from bot.contacts.forget import find_customer, forget_customer

    db = cli.db()
    who = actor or f"cli:{_login_name(getpass)}"
    with db.sessions() as session:
        customer = find_customer(session, customer_ref)
        if customer is None:
            raise click.ClickException(f"no customer {customer_ref}")
        customer_id, name = customer.id, customer.name
    if not yes:
        click.confirm(f"Erase the personal data of customer {customer_id} ({name or 'no name'})? "
                      "This cannot be undone", abort=True)
    with db.begin() as session:
        _zero_freed_pages(session)
        customer = find_customer(session, customer_ref)
        assert customer is not None
        result = forget_customer(session, customer, who, cli.now())
    if result.already:
        click.echo(f"customer {customer_id} was forgotten already; nothing changed")
        return
    changed = ", ".join(f"{table} {count}" for table, count in result.rows.items() if count)
    click.echo(f"forgot customer {customer_id}: rows changed: {changed}; recorded in the audit log as {who}")
    click.echo(_purge_old_copies(db, vacuum))


def _login_name(getpass: Any) -> str:
    try:
        return str(getpass.getuser())
    except (KeyError, OSError):  # no login name in a bare container
        return "unknown"


def _zero_freed_pages(session: Any) -> None:
    """SQLite: this write zeroes the bytes it frees (old values) instead of leaving them in free space."""
    if session.connection().dialect.name == "sqlite":
        session.connection().exec_driver_sql("PRAGMA secure_delete=ON")


def _purge_old_copies(db: Any, vacuum: bool) -> str:
    """Where the old values may still be, after the rows were rewritten, and what was done about it."""
    if db.dialect != "sqlite":
        return ("PostgreSQL keeps the old row versions until vacuum reuses their space; to purge them now, in a "
                "quiet hour: VACUUM FULL customers, follows, interactions, inbox_events, outbox_messages, "
                "kf_conversations, coupons. Backups made before now still hold the data.")
    with db.engine.connect() as conn:
        if vacuum:
            conn.exec_driver_sql("VACUUM")
        busy = conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
    if busy:
        return ("the write-ahead log could not be emptied while the service reads (it will be at its next "
                "checkpoint); backups made before now still hold the data")
    done = "rebuilt the file and emptied" if vacuum else "emptied"
    return f"{done} the write-ahead log; backups made before now still hold the data"
