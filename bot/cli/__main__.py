"""``python -m bot.cli`` runs ``scrm``."""

from bot.cli import run

run()
