"""wecom-scrm-bot: the service shell (config, database, WeCom client and sandbox, inbox, CLI)."""

from bot.app import create_app

__all__ = ["create_app"]
