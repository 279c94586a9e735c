"""Holiday calendar: lunar holidays against published dates, and `scrm holidays` as printed."""

from __future__ import annotations

from datetime import date

import pytest
from click.testing import CliRunner

from bot.campaigns.holidays import HOLIDAYS, calendar, holidays_on
from bot.cli import main

# Published dates (中国国务院放假安排 and standard almanacs).
KNOWN = {
    "spring_festival": ["2025-01-29", "2026-02-17", "2027-02-06", "2028-01-26", "2029-02-13", "2030-02-03"],
    "lantern": ["2025-02-12", "2026-03-03", "2027-02-20", "2028-02-09", "2029-02-27", "2030-02-17"],
    "dragon_boat": ["2025-05-31", "2026-06-19", "2027-06-09", "2028-05-28", "2029-06-16", "2030-06-05"],
    "mid_autumn": ["2025-10-06", "2026-09-25", "2027-09-15", "2028-10-03", "2029-09-22", "2030-09-12"],
}


@pytest.mark.parametrize("code", sorted(KNOWN))
def test_lunar_holidays_fall_on_their_published_dates(code):
    assert [HOLIDAYS[code].date_in(year).isoformat() for year in range(2025, 2031)] == KNOWN[code]


def test_leap_month_years_and_solar_holidays():
    # 2025 has a leap sixth month (闰六月): 七夕 and 重阳 come late.
    assert HOLIDAYS["qixi"].date_in(2025) == date(2025, 8, 29)
    assert HOLIDAYS["double_ninth"].date_in(2025) == date(2025, 10, 29)
    assert HOLIDAYS["double_ninth"].date_in(2026) == date(2026, 10, 18)
    assert HOLIDAYS["double_eleven"].date_in(2031) == date(2031, 11, 11)
    assert [h.code for h in holidays_on(date(2026, 9, 25))] == ["mid_autumn"]
    assert [d for d, _ in calendar(2030)] == sorted(d for d, _ in calendar(2030))


def test_cli_prints_one_holiday_a_line_in_date_order(database_url):
    result = CliRunner(env={"SCRM_CONFIG": None, "SCRM_DATABASE_URL": database_url}).invoke(
        main, ["holidays", "--year", "2027"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 13 and lines[0] == "元旦 2027-01-01" and lines[-1] == "圣诞 2027-12-25"
    assert "春节 2027-02-06" in lines and "中秋 2027-09-15" in lines
    env = {"SCRM_CONFIG": None, "SCRM_GREETINGS_HOLIDAYS": '["mid_autumn", "spring_festival"]'}
    result = CliRunner(env=env).invoke(main, ["holidays", "--year", "2028"], catch_exceptions=False)
    assert result.output.splitlines() == ["春节 2028-01-26", "中秋 2028-10-03"]
    bad = CliRunner(env={"SCRM_CONFIG": None, "SCRM_GREETINGS_HOLIDAYS": '["arbor_day"]'}).invoke(
        main, ["holidays"])
    assert bad.exit_code == 1 and "greetings.holidays: unknown ['arbor_day']" in bad.output
