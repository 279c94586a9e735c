"""``scrm backup`` / ``scrm restore`` on PostgreSQL: pg_dump and pg_restore, run when they are on PATH and
printed otherwise. The password goes to them in PGPASSWORD, never on a command line others can read."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from bot.core.backup import BackupError, schema_revisions


@dataclass(frozen=True)
class PgCommand:
    argv: list[str]
    env: dict[str, str]  # added to the environment (the password)

    def shown(self) -> str:
        """The command as a user may type it (the password left to PGPASSWORD or ~/.pgpass)."""
        return shlex.join(self.argv)


def libpq_url(url: str) -> tuple[str, dict[str, str]]:
    """A libpq connection URL without the password, and the environment that carries it."""
    parsed = make_url(url)
    env = {"PGPASSWORD": str(parsed.password)} if parsed.password else {}
    plain = parsed.set(drivername="postgresql", password=None).render_as_string(hide_password=False)
    return plain, env


def dump_command(url: str, dest: Path) -> PgCommand:
    plain, env = libpq_url(url)
    return PgCommand(["pg_dump", "--format=custom", "--no-owner", f"--file={dest}", f"--dbname={plain}"], env)


def restore_command(url: str, backup: Path) -> PgCommand:
    plain, env = libpq_url(url)
    return PgCommand(["pg_restore", "--clean", "--if-exists", "--no-owner", "--single-transaction",
                      "--exit-on-error", f"--dbname={plain}", str(backup)], env)


def available(tool: str) -> bool:
    return shutil.which(tool) is not None


def run(command: PgCommand) -> None:
    """Run a pg_dump / pg_restore; its last error line becomes a :class:`BackupError`."""
    done = subprocess.run(command.argv, env={**os.environ, **command.env}, capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise BackupError(f"{command.argv[0]} failed: {lines[-1] if lines else f'exit status {done.returncode}'}")


_COPY_REVISION = re.compile(r"^COPY public\.alembic_version .*?FROM stdin;\n(.*?)\n\\\.$", re.MULTILINE | re.DOTALL)


def check_dump(backup: Path) -> str:
    """The schema revision inside a pg_dump archive of a scrm database, or :class:`BackupError` saying why
    the file is not one (pg_restore must be on PATH: it alone reads the archive format)."""
    if not backup.is_file():
        raise BackupError(f"{backup}: no such file")
    listing = subprocess.run(["pg_restore", "--list", str(backup)], capture_output=True, text=True, check=False)
    if listing.returncode != 0:
        raise BackupError(f"{backup} is not a pg_dump archive (pg_restore --list: "
                          f"{(listing.stderr.strip().splitlines() or ['unreadable'])[-1]}); nothing was changed")
    if not re.search(r"TABLE DATA public alembic_version ", listing.stdout) \
            or not re.search(r"TABLE public customers ", listing.stdout):
        raise BackupError(f"{backup} is a pg_dump archive but not of a scrm database; nothing was changed")
    data = subprocess.run(["pg_restore", "--data-only", "--table=alembic_version", "--file=-", str(backup)],
                          capture_output=True, text=True, check=False)
    found = _COPY_REVISION.search(data.stdout)
    revision = found.group(1).strip() if found else ""
    known = schema_revisions()
    if revision not in known:
        raise BackupError(f"{backup} is at schema revision {revision or 'none'}, which this version of scrm does "
                          f"not know (it knows {known[0]}…{known[-1]}): restore it with the version that made it")
    return revision


def other_sessions(engine: object) -> int:
    """Connections to this PostgreSQL database other than ours: a running service, or someone's psql."""
    from sqlalchemy import Engine, text

    assert isinstance(engine, Engine)
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                     "AND pid <> pg_backend_pid() AND backend_type = 'client backend'")).scalar_one())
