"""Message templates shipped with the service (``templates/messages``); see its README."""

from pathlib import Path

MESSAGES_DIR = Path(__file__).with_name("messages")
