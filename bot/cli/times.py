"""Every time the CLI prints is a local time in app.timezone, and says so (the helpers are
:mod:`bot.core.times`, which the console and the CSV writers share)."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from bot.core.times import local_iso, local_time, zoned

__all__ = ["local_iso", "local_time", "schedule_text", "zoned"]


def schedule_text(row: dict, tz: ZoneInfo) -> str:
    """A broadcast's schedule for a table cell under ``zoned("schedule", tz)``: its cron line, or its one send time."""
    return f"cron {row['cron']}" if row.get("cron") else local_time(row.get("send_at"), tz, zone=False)
