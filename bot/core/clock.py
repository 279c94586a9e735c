"""The product's one source of "now": code that decides by the time of day or date takes a clock, so
tests (and a re-run of the past) can say what time it is instead of reading the wall clock."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    """The wall clock, timezone-aware in UTC."""
    return datetime.now(UTC)
