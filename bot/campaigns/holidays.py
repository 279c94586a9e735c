"""节假日问候 calendar: solar holidays by month/day, lunar ones converted for any year with
lunar-python (6tail's maintained Chinese calendar library)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date


@dataclass(frozen=True)
class Holiday:
    code: str
    name: str
    month: int
    day: int
    lunar: bool = False

    def date_in(self, year: int) -> date:
        """The Gregorian date in ``year`` (a lunar holiday falls on its lunar date of that lunar year)."""
        if not self.lunar:
            return date(year, self.month, self.day)
        from lunar_python import Lunar  # only here: every command checks holiday names at start, few convert dates

        solar = Lunar.fromYmd(year, self.month, self.day).getSolar()
        return date(solar.getYear(), solar.getMonth(), solar.getDay())


HOLIDAYS: dict[str, Holiday] = {h.code: h for h in (
    Holiday("new_year", "元旦", 1, 1),
    Holiday("spring_festival", "春节", 1, 1, lunar=True),
    Holiday("lantern", "元宵", 1, 15, lunar=True),
    Holiday("valentines", "情人节", 2, 14),
    Holiday("womens_day", "妇女节", 3, 8),
    Holiday("labour_day", "劳动节", 5, 1),
    Holiday("dragon_boat", "端午", 5, 5, lunar=True),
    Holiday("qixi", "七夕", 7, 7, lunar=True),
    Holiday("mid_autumn", "中秋", 8, 15, lunar=True),
    Holiday("national_day", "国庆", 10, 1),
    Holiday("double_ninth", "重阳", 9, 9, lunar=True),
    Holiday("double_eleven", "双十一", 11, 11),
    Holiday("christmas", "圣诞", 12, 25),
)}


def calendar(year: int, codes: list[str] | None = None) -> list[tuple[date, Holiday]]:
    """The chosen holidays (default: all) with their dates in ``year``, in date order."""
    chosen = [HOLIDAYS[c] for c in (codes if codes is not None else list(HOLIDAYS))]
    return sorted(((h.date_in(year), h) for h in chosen), key=lambda pair: pair[0])


def holidays_on(day: date, codes: list[str] | None = None) -> list[Holiday]:
    return [h for d, h in calendar(day.year, codes) if d == day]
