"""Every time the product shows or writes out is a local time in app.timezone, and says which zone:
as text (``2026-05-01 10:00 Asia/Shanghai``, or a header that names the zone) for people, as ISO 8601
with the local offset (``2026-05-01T10:00:00+08:00``) in CSV and JSON. Stored times stay UTC."""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from typing import Any


def zone_name(tz: tzinfo) -> str:
    """The zone's IANA name (``Asia/Shanghai``), never an abbreviation: ``%Z`` gives ``CST``, which is
    also America/Chicago's."""
    return getattr(tz, "key", None) or tz.tzname(None) or "UTC"


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)  # SQLite hands back naive UTC


def local_time(moment: datetime | None, tz: tzinfo, *, zone: bool = True, seconds: bool = False) -> str:
    """``2026-05-01 10:00 Asia/Shanghai``; without ``zone`` for table cells whose header names it."""
    if moment is None:
        return "-"
    text = _aware(moment).astimezone(tz).strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")
    return f"{text} {zone_name(tz)}" if zone else text


def zoned(header: str, tz: tzinfo) -> str:
    """A table header for a column of local times: ``next run (Asia/Shanghai)``."""
    return f"{header} ({zone_name(tz)})"


def local_iso(moment: datetime | None, tz: tzinfo) -> str | None:
    """ISO 8601 with the local offset for CSV and JSON: ``2026-05-01T10:00:00+08:00`` (the same instant as
    the stored UTC time, so a machine reads it as before). Seconds always; fractions only when there are."""
    if moment is None:
        return None
    return _aware(moment).astimezone(tz).isoformat()


def localised(value: Any, tz: tzinfo) -> Any:
    """``value`` (JSON: dicts, lists, scalars) with each ``…_at`` string that is an ISO 8601 time with an
    offset (as the audit log records them, in UTC) turned into :func:`local_iso`; everything else as it is."""
    if isinstance(value, dict):
        return {key: _local_if_instant(item, tz) if isinstance(key, str) and key.endswith("_at") and
                isinstance(item, str) else localised(item, tz) for key, item in value.items()}
    if isinstance(value, list):
        return [localised(item, tz) for item in value]
    return value


def _local_if_instant(text: str, tz: tzinfo) -> str:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return text
    return text if moment.tzinfo is None else local_iso(moment, tz) or text
