"""wecom-scrm-bot: the service shell (config, database, WeCom client and sandbox, inbox, CLI)."""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    # Imported on first use: `scrm` and the tiering code import bot.* without needing Flask.
    if name == "create_app":
        from bot.app import create_app

        return create_app
    raise AttributeError(f"module 'bot' has no attribute {name!r}")
