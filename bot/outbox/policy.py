"""Contact policy (DESIGN.md §6), checked when a push is planned and again when it is sent:
opt-out, quiet hours (deferred, not dropped), the brand's per-customer caps per day and week,
and WeCom's mass-message cap per customer per period (configurable: the rule has changed over
the years — WECOM.md §5). Conversational replies are not pushes and are not capped here (the kf
window governs them). Checks are set-based: one query per rule for a whole audience."""

from __future__ import annotations

import calendar
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bot.models import Customer, OutboxMessage

PUSH_TRIGGERS = ("campaign", "greeting", "sequence", "coupon", "tier_change")
COUNTED_STATUSES = ("pending", "sending", "submitted", "sent", "confirmed")
MASS_RULES = ("days_in_month", "4_per_month", "7_per_week", "1_per_day")


@dataclass(frozen=True)
class ContactPolicy:
    tz: ZoneInfo
    quiet_start: time
    quiet_end: time
    daily_cap: int
    weekly_cap: int
    mass_rule: str

    @classmethod
    def from_settings(cls, settings: Any) -> ContactPolicy:
        start, end = parse_quiet_hours(settings.outbox.quiet_hours)
        return cls(settings.tz, start, end, settings.outbox.daily_cap, settings.outbox.weekly_cap,
                   settings.outbox.mass_message_rule)

    # ------------------------------------------------------------ quiet hours

    def in_quiet_hours(self, at: datetime) -> bool:
        local = at.astimezone(self.tz).time()
        if self.quiet_start == self.quiet_end:
            return False
        if self.quiet_start < self.quiet_end:
            return self.quiet_start <= local < self.quiet_end
        return local >= self.quiet_start or local < self.quiet_end

    def next_allowed(self, at: datetime) -> datetime:
        """``at`` itself outside quiet hours, else the moment quiet hours end."""
        if not self.in_quiet_hours(at):
            return at
        local = at.astimezone(self.tz)
        end = datetime.combine(local.date(), self.quiet_end, tzinfo=self.tz)
        if end <= local:
            end += timedelta(days=1)
        return end

    # ------------------------------------------------------------ caps

    def mass_period(self, at: datetime) -> tuple[datetime, int]:
        """Start of WeCom's current counting period (local) and how many mass messages it allows."""
        day = at.astimezone(self.tz).date()
        if self.mass_rule == "1_per_day":
            return _start(day, self.tz), 1
        if self.mass_rule == "7_per_week":
            return _start(day - timedelta(days=day.weekday()), self.tz), 7
        month_start = _start(day.replace(day=1), self.tz)
        if self.mass_rule == "4_per_month":
            return month_start, 4
        return month_start, calendar.monthrange(day.year, day.month)[1]

    def blocked(self, session: Session, customer_ids: Iterable[int], channel: str, at: datetime) -> dict[int, str]:
        """Customers (of ``customer_ids``) who must not get a push on ``channel`` now, with why.
        Quiet hours are not here: a push in quiet hours is deferred, not refused."""
        ids = list(customer_ids)
        if not ids:
            return {}
        reasons: dict[int, str] = {}
        for chunk in _chunks(ids, 5000):
            opted_out = select(Customer.id).where(Customer.id.in_(chunk), Customer.opted_out.is_(True))
            for cid in session.scalars(opted_out):
                reasons[cid] = "opted out (退订)"
        day_start = _start(at.astimezone(self.tz).date(), self.tz)
        # The brand's week is the last 7 days (no burst across a weekend); its day, the local date.
        checks = [(day_start, self.daily_cap, None, f"brand cap: {self.daily_cap} push(es) per day reached"),
                  (at - timedelta(days=7), self.weekly_cap, None,
                   f"brand cap: {self.weekly_cap} pushes per 7 days reached")]
        if channel == "mass_message":
            period_start, allowed = self.mass_period(at)
            checks.append((period_start, allowed, "mass_message",
                           f"WeCom mass-message cap ({self.mass_rule}: {allowed} per period) reached"))
        for since, cap, only_channel, reason in checks:
            for cid in self._over(session, ids, since, cap, only_channel):
                reasons.setdefault(cid, reason)
        return reasons

    def _over(self, session: Session, ids: list[int], since: datetime, cap: int, channel: str | None) -> list[int]:
        found: list[int] = []
        for chunk in _chunks(ids, 5000):
            query = (select(OutboxMessage.customer_id)
                     .where(OutboxMessage.customer_id.in_(chunk), OutboxMessage.trigger_kind.in_(PUSH_TRIGGERS),
                            OutboxMessage.status.in_(COUNTED_STATUSES), OutboxMessage.scheduled_at >= since)
                     .group_by(OutboxMessage.customer_id).having(func.count() >= cap))
            if channel:
                query = query.where(OutboxMessage.channel == channel)
            found += list(session.scalars(query))
        return found


def parse_quiet_hours(text: str) -> tuple[time, time]:
    """``"21:00-09:00"`` → (21:00, 09:00); ``""`` → no quiet hours."""
    if not text.strip():
        return time(0), time(0)
    try:
        start, end = (time.fromisoformat(part.strip()) for part in text.split("-"))
    except ValueError:
        raise ValueError(f"quiet hours must look like 21:00-09:00, got {text!r}") from None
    return start, end


def _start(day: date, tz: ZoneInfo) -> datetime:
    return datetime.combine(day, time(0), tzinfo=tz)


def _chunks(items: list[int], size: int) -> Iterable[list[int]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]
