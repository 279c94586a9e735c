"""One zone everywhere: every time the product shows or writes out (CLI text and JSON, CSV files, console
pages and downloads) is a local time in app.timezone that names its zone; stored times stay UTC.
Fixed instants only: nothing here depends on today's date."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from bot.core.times import local_iso, local_time, localised, zone_name, zoned

SHANGHAI, NEW_YORK = ZoneInfo("Asia/Shanghai"), ZoneInfo("America/New_York")
INSTANT = datetime(2026, 12, 7, 12, 41, tzinfo=UTC)  # 20:41 in Shanghai, 07:41 in New York


def test_text_and_iso_are_local_and_name_the_zone():
    assert local_time(INSTANT, SHANGHAI) == "2026-12-07 20:41 Asia/Shanghai"
    assert local_time(INSTANT, NEW_YORK, zone=False, seconds=True) == "2026-12-07 07:41:00"
    assert zoned("next run", NEW_YORK) == "next run (America/New_York)"
    assert local_iso(INSTANT, SHANGHAI) == "2026-12-07T20:41:00+08:00"
    assert local_iso(INSTANT, NEW_YORK) == "2026-12-07T07:41:00-05:00"
    assert local_iso(datetime(2026, 12, 7, 12, 41), SHANGHAI) == "2026-12-07T20:41:00+08:00"  # naive is UTC
    assert local_iso(None, SHANGHAI) is None and local_time(None, SHANGHAI) == "-"
    assert zone_name(SHANGHAI) == "Asia/Shanghai" and zone_name(UTC) == "UTC"  # never "CST"


def test_recorded_instants_are_shown_local_and_nothing_else_changes():
    recorded = {"send_at": "2026-12-07T12:41:00+00:00", "name": "2026-12-07T12:41:00+00:00", "cron": None,
                "expires_at": None, "steps": [{"due_at": "2026-12-07T12:41:00+00:00"}],
                "day_at": "2026-12-07", "note_at": "tomorrow", "rows": {"coupons": 1}}
    assert localised(recorded, SHANGHAI) == {
        **recorded, "send_at": "2026-12-07T20:41:00+08:00", "steps": [{"due_at": "2026-12-07T20:41:00+08:00"}]}
    assert localised(None, SHANGHAI) is None
