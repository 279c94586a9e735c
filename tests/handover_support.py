"""Running ``scrm`` in-process against a test's database and the sandbox (channels, hand-overs)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from bot.cli import main

CONFIG = """
[tiers]
value_rules = [
  { name = "high", amount_gt = 1000, orders_gte = 2 },
  { name = "mid", amount_gte = 300, orders_gte = 1 },
]
"""


def scrm_runner(wired: Any, tmp_path: Path, config: str = CONFIG,
                clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> Callable[..., Result]:
    """``scrm(*args)`` with the wired bot's database and WeCom (the sandbox); the clock is the wall
    clock because the sandbox's is (both move together under SCRM_TEST_CLOCK_SHIFT_DAYS)."""
    settings = wired.extensions["scrm.settings"]
    path = tmp_path / "scrm.toml"
    path.write_text(config, encoding="utf-8")
    w = settings.wecom
    env = {"SCRM_CONFIG": str(path), "SCRM_DATABASE_URL": settings.database.url, "SCRM_REDIS_URL": "",
           "SCRM_WECOM_CORP_ID": w.corp_id, "SCRM_WECOM_SECRET": w.secret,
           "SCRM_WECOM_CONTACT_SECRET": w.contact_secret,
           "SCRM_WECOM_API_BASE_URL": w.api_base_url, "SCRM_WECOM_BUSY_BACKOFF_SECONDS": "0"}

    def scrm(*args: str, ok: bool = True, stdin: str | None = None) -> Result:
        result = CliRunner(env=env).invoke(main, list(args), obj=clock, input=stdin)
        if ok:
            assert result.exit_code == 0, (args, result.output, result.exception)
        return result

    return scrm


def drain(app: Any) -> dict[str, int]:
    return dict(app.extensions["scrm.processor"].drain())
