"""One zone everywhere: every time the product shows or writes out (CLI text and JSON, CSV files, console
pages and downloads) is a local time in app.timezone that names its zone; stored times stay UTC.
Fixed instants only: nothing here depends on today's date."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from click.testing import CliRunner

from bot.cli import main
from bot.core.times import local_iso, local_time, localised, zone_name, zoned
from bot.models import Channel

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


def scrm(env: dict[str, str], *args: str) -> str:
    result = CliRunner(env={"SCRM_CONFIG": None, **env}).invoke(main, list(args), catch_exceptions=False,
                                                                obj=lambda: INSTANT)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_channel_list_shows_the_expiry_local_in_its_table_and_its_json(cli_env, db):
    with db.begin() as session:
        session.add(Channel(state="live", name="直播间", members=["zhangsan"], expires_at=INSTANT))
    env = {**cli_env, "SCRM_APP_TIMEZONE": "America/New_York"}
    [listed] = json.loads(scrm(env, "channels", "list", "--json"))
    assert listed["expires_at"] == "2026-12-07T07:41:00-05:00"  # was 2026-12-07T12:41:00+00:00
    table = scrm(env, "channels", "list")
    assert "expires (America/New_York)" in table and "2026-12-07 07:41" in table
