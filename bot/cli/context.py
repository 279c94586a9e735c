"""What every command needs: settings (loaded once, errors shown plainly) and the database."""

from __future__ import annotations

import gc
from collections.abc import Mapping
from datetime import date, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import click

from bot.core.clock import Clock, system_clock

if TYPE_CHECKING:
    from bot.core.config import Settings
    from bot.core.db import Database

# Every command module imports this one, and `scrm --help` imports every command module: what a
# command needs beyond click is imported inside it, so no command pays for another's libraries.

DEMO_DATABASE = "scrm-demo.db"


class CliContext:
    def __init__(self, config_file: str | None, log_level: str = "WARNING", verbose: bool = False,
                 clock: Clock = system_clock) -> None:
        """``log_level``: used when app.log_level is empty (its default); ``verbose``: at least INFO;
        ``clock``: what the commands take as now (tests pass their own)."""
        self.config_file = config_file
        self.log_level = log_level
        self.verbose = verbose
        self.clock = clock
        self._settings: Settings | None = None
        self._db: Database | None = None

    def now(self) -> datetime:
        return self.clock()

    def today(self) -> date:
        """Today in app.timezone."""
        return self.clock().astimezone(self.settings().tz).date()

    def settings(self, overrides: Mapping[str, Mapping[str, Any]] | None = None) -> Settings:
        from bot.core.config import ConfigError, install_secret_redaction
        from bot.startup import load_settings

        if self._settings is None or overrides:
            try:
                self._settings = load_settings(self.config_file, overrides)
            except ConfigError as exc:
                raise click.ClickException(f"configuration error: {exc}") from None
            install_secret_redaction(self._settings, self._log_level(self._settings))
        return self._settings

    def rule_settings(self) -> Settings:
        """The settings with the rule lists operators edited in the console (auto-tag rules, reply rules,
        channel mappings) in place of the config file's."""
        from bot.startup import settings_with_overrides, stored_rule_overrides

        with self.db().sessions() as session:
            return settings_with_overrides(self.settings(), stored_rule_overrides(session))

    def _log_level(self, settings: Settings) -> str:
        level = (settings.app.log_level or self.log_level).upper()
        return "INFO" if self.verbose and level in ("WARNING", "ERROR", "CRITICAL") else level

    def close(self) -> None:
        if self._db is not None:
            self._db.dispose()
            self._db = None

    def db(self, create: bool = False) -> Database:
        """The configured database, upgraded to the newest schema. Only `init`, `serve` and `demo`
        pass ``create``: any other command on a missing database stops with a message."""
        from bot.core.db import DatabaseUnavailable, NoDatabase, open_database

        resume_collector()
        if self._db is None:
            try:
                self._db = open_database(self.settings().database, create=create)
            except NoDatabase as exc:
                raise click.ClickException(f"{exc}{self._demo_hint()}") from None
            except DatabaseUnavailable as exc:
                raise click.ClickException(str(exc)) from None
        return self._db

    def _demo_hint(self) -> str:
        """A newcomer who ran `scrm demo` and then a command without its database setting."""
        from bot.core.db import sqlite_file

        demo = Path(DEMO_DATABASE).absolute()
        if not demo.exists() or sqlite_file(self.settings().database.url) == demo:
            return ""
        return f"; the demo's database is {DEMO_DATABASE}: SCRM_DATABASE_URL=sqlite:///{DEMO_DATABASE} scrm …"


pass_cli = click.make_pass_decorator(CliContext)


def resume_collector() -> None:
    """Where the `scrm` program (bot.cli.run) started with the garbage collector off: the objects made so
    far (the libraries' modules and classes, long-lived) are set aside for good and collection resumes."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def render_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain aligned text table (wide CJK characters count double)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(_width(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(cell + " " * (widths[i] - _width(cell)) for i, cell in enumerate(row)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def _width(text: str) -> int:
    import unicodedata

    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def check_output(cli: CliContext, path: Path, *inputs: Path) -> None:
    """Refuse, before any work, a file to write that is the database or one of the command's input files
    (opening it would empty them first), or whose folder does not exist."""
    from bot.core.db import sqlite_file

    database = sqlite_file(cli.settings().database.url)
    protected = [(p, "the database itself") for p in ([database] if database else [])]
    protected += [(p, "the input file") for p in inputs]
    for other, what in protected:
        if any(_same_file(path, Path(f"{other}{tail}")) for tail in ("", "-wal", "-shm", "-journal")):
            raise click.ClickException(f"{path} is {what}: choose another file to write")
    if not path.absolute().parent.is_dir():
        raise click.ClickException(f"cannot write {path}: no folder {path.absolute().parent}")


def open_output(cli: CliContext, path: Path, *inputs: Path) -> IO[str]:
    """``path`` opened for writing CSV text after :func:`check_output`; a refusal by the system is one line."""
    check_output(cli, path, *inputs)
    try:
        return path.open("w", encoding="utf-8", newline="")
    except OSError as exc:
        raise click.ClickException(f"cannot write {path}: {exc.strerror or exc}") from None


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return a.samefile(b)
        return a.absolute().resolve() == b.absolute().resolve()
    except OSError:
        return False
