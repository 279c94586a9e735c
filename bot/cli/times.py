"""Every time the CLI prints is a local time in app.timezone, and says so."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo


def local_time(moment: datetime | None, tz: ZoneInfo, *, zone: bool = True, seconds: bool = False) -> str:
    """``2026-05-01 10:00 Asia/Shanghai``; without ``zone`` for table cells whose header names it."""
    if moment is None:
        return "-"
    text = moment.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")
    return f"{text} {tz.key}" if zone else text


def zoned(header: str, tz: ZoneInfo) -> str:
    """A table header for a column of local times: ``next run (Asia/Shanghai)``."""
    return f"{header} ({tz.key})"


def schedule_text(row: dict, tz: ZoneInfo) -> str:
    """A broadcast's schedule for a table cell under ``zoned("schedule", tz)``: its cron line, or its one send time."""
    return f"cron {row['cron']}" if row.get("cron") else local_time(row.get("send_at"), tz, zone=False)
