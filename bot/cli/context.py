"""What every command needs: settings (loaded once, errors shown plainly) and the database."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

import click

from bot.clock import Clock, system_clock

if TYPE_CHECKING:
    from bot.config import Settings
    from bot.db import Database

# Every command module imports this one, and `scrm --help` imports every command module: what a
# command needs beyond click is imported inside it, so no command pays for another's libraries.


class CliContext:
    def __init__(self, config_file: str | None, clock: Clock = system_clock) -> None:
        self.config_file = config_file
        self.clock = clock
        self._settings: Settings | None = None
        self._db: Database | None = None

    def now(self) -> datetime:
        return self.clock()

    def today(self) -> date:
        """Today in app.timezone."""
        return self.clock().astimezone(self.settings().tz).date()

    def settings(self, overrides: Mapping[str, Mapping[str, Any]] | None = None) -> Settings:
        from bot.config import ConfigError, install_secret_redaction, load_settings

        if self._settings is None or overrides:
            try:
                self._settings = load_settings(self.config_file, overrides)
            except ConfigError as exc:
                raise click.ClickException(f"configuration error: {exc}") from None
            install_secret_redaction(self._settings)
        return self._settings

    def close(self) -> None:
        if self._db is not None:
            self._db.dispose()
            self._db = None

    def db(self, upgrade: bool = True) -> Database:
        from bot.db import Database

        if self._db is None:
            self._db = Database(self.settings().database)
            if upgrade:
                self._db.upgrade()
        return self._db


pass_cli = click.make_pass_decorator(CliContext)


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
