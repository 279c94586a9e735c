"""The configured campaigns, validated once: scheduled tier coupons (``[coupons] schedules``),
follow-up sequences (``[sequences] flows``) and tier-change actions (``[tier_actions] rules``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bot.campaigns.audience import Audience
from bot.campaigns.coupons import CouponBook
from bot.outbox.messages import MessageTemplates, TemplateMissing, TemplateRefused

if TYPE_CHECKING:  # APScheduler is loaded when a cron expression is read, not with the settings
    from apscheduler.triggers.base import BaseTrigger

DIMENSIONS = ("value_tier", "rfm_segment", "stage", "engagement", "activity")
# A prediction run records a change of churn-risk band as a TierChange too (segments/predict_runs.py).
ACTION_DIMENSIONS = (*DIMENSIONS, "churn_risk")
DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # standard cron: 0 (and 7) = Sunday


def cron_trigger(expression: str, timezone: Any = None) -> BaseTrigger:
    """A standard 5-field crontab line as an APScheduler trigger. APScheduler 3 numbers weekdays
    from Monday = 0, so "0 10 * * 5" would fire on Saturdays; numeric weekdays are translated to
    names first (5 → fri, 0 and 7 → sun). When both the day of the month and the weekday are given,
    standard cron fires on either ("0 10 1 * 1": every 1st and every Monday); APScheduler on both."""
    from apscheduler.triggers.combining import OrTrigger
    from apscheduler.triggers.cron import CronTrigger

    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"a cron expression has 5 fields (minute hour day month weekday), got {len(fields)}")
    any_day = fields[2].startswith("*") or fields[4].startswith("*")  # "*" or "*/n": standard cron's "any"
    if any(ch.isdigit() for ch in fields[4]):
        fields[4] = ",".join(DAY_NAMES[d] for d in sorted(_weekdays(fields[4])))
    minute, hour, day, month, weekday = fields
    if any_day:
        return CronTrigger.from_crontab(" ".join(fields), timezone=timezone)
    return OrTrigger([CronTrigger.from_crontab(f"{minute} {hour} {day} {month} *", timezone=timezone),
                      CronTrigger.from_crontab(f"{minute} {hour} * {month} {weekday}", timezone=timezone)])


def _weekdays(field: str) -> set[int]:
    days: set[int] = set()
    for part in field.split(","):
        span, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if span == "*":
            first, last = 0, 6
        elif "-" in span:
            first, last = (int(x) for x in span.split("-", 1))
        else:
            first = last = int(span)
        if not (0 <= first <= 7 and 0 <= last <= 7 and step >= 1 and first <= last):
            raise ValueError(f"weekday field {field!r}: use 0–7 (0 and 7 = Sunday), ranges a-b and steps /n")
        days.update(d % 7 for d in range(first, last + 1, step))
    return days


class CampaignError(ValueError):
    """A campaign setting is invalid; the message names the key."""


@dataclass(frozen=True)
class TemplateRef:
    kind: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}"


@dataclass(frozen=True)
class CouponSchedule:
    coupon: str
    audience: Audience
    cron: str
    template: TemplateRef


@dataclass(frozen=True)
class SequenceStep:
    index: int
    day: int
    template: TemplateRef
    coupon: str
    if_no_order: bool
    audience: Audience


@dataclass(frozen=True)
class SequenceFlow:
    name: str
    start: str  # "added" or "<dimension>:<value>"
    exit_on_order: bool
    steps: tuple[SequenceStep, ...]

    @property
    def entry(self) -> tuple[str, str] | None:
        """(dimension, value) for a tier-entry start; None for "added"."""
        if self.start == "added":
            return None
        dimension, _, value = self.start.partition(":")
        return dimension, value


@dataclass(frozen=True)
class TierAction:
    index: int
    dimension: str
    to: str
    message: TemplateRef | None
    coupon: str
    notify_owner: TemplateRef | None


@dataclass(frozen=True)
class CampaignRules:
    coupon_schedules: tuple[CouponSchedule, ...]
    sequences: tuple[SequenceFlow, ...]
    tier_actions: tuple[TierAction, ...]

    @classmethod
    def from_settings(cls, settings: Any) -> CampaignRules:
        book = CouponBook.from_settings(settings)
        templates = MessageTemplates.from_settings(settings)
        tiers = value_tier_names(settings)
        parse = _Parser(book, templates, tiers)
        schedules = tuple(parse.schedule(raw, f"coupons.schedules[{i}]")
                          for i, raw in enumerate(settings.coupons.schedules))
        flows = tuple(parse.flow(raw, f"sequences.flows[{i}]") for i, raw in enumerate(settings.sequences.flows))
        names = [f.name for f in flows]
        if len(set(names)) != len(names):
            raise CampaignError("sequences.flows: two flows share a name")
        actions = tuple(parse.action(i, raw, f"tier_actions.rules[{i}]")
                        for i, raw in enumerate(settings.tier_actions.rules))
        return cls(schedules, flows, actions)


def value_tier_names(settings: Any) -> tuple[str, ...]:
    names = [r["name"] for r in settings.tiers.value_rules if isinstance(r, dict) and "name" in r]
    return tuple(dict.fromkeys([*names, settings.tiers.value_default]))


class _Parser:
    def __init__(self, book: CouponBook, templates: MessageTemplates, tiers: tuple[str, ...]) -> None:
        self.book, self.templates, self.tiers = book, templates, tiers

    def _keys(self, raw: Any, where: str, allowed: set[str], required: set[str]) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise CampaignError(f"{where} must be a table")
        unknown = sorted(set(raw) - allowed)
        if unknown:
            raise CampaignError(f"{where}: unknown key(s) {unknown}; known: {sorted(allowed)}")
        missing = sorted(required - set(raw))
        if missing:
            raise CampaignError(f"{where}: missing {missing}")
        return raw

    def template(self, text: Any, where: str) -> TemplateRef:
        if not isinstance(text, str) or text.count("/") != 1:
            raise CampaignError(f"{where} must be kind/name, e.g. coupon/flash")
        ref = TemplateRef(*text.split("/"))
        try:
            self.templates.choose(ref.kind, ref.name)
        except (TemplateMissing, TemplateRefused) as exc:
            raise CampaignError(f"{where}: {exc}") from None
        return ref

    def coupon(self, code: Any, where: str) -> str:
        if not code:
            return ""
        if not isinstance(code, str):
            raise CampaignError(f"{where} must be a coupon definition code")
        self.book.get(code, where)
        return code

    def audience(self, raw: Any, where: str) -> Audience:
        try:
            return Audience.parse(raw, self.tiers)
        except ValueError as exc:
            raise CampaignError(f"{where}: {exc}") from None

    def schedule(self, raw: Any, where: str) -> CouponSchedule:
        raw = self._keys(raw, where, {"coupon", "audience", "cron", "template"}, {"coupon", "cron", "template"})
        try:
            cron_trigger(str(raw["cron"]))
        except ValueError as exc:
            raise CampaignError(f"{where}.cron: {exc}") from None
        return CouponSchedule(self.coupon(raw["coupon"], f"{where}.coupon"),
                              self.audience(raw.get("audience"), f"{where}.audience"), str(raw["cron"]),
                              self.template(raw["template"], f"{where}.template"))

    def flow(self, raw: Any, where: str) -> SequenceFlow:
        raw = self._keys(raw, where, {"name", "start", "exit_on_order", "steps"}, {"name", "start", "steps"})
        start = raw["start"]
        if start != "added":
            dimension, _, value = str(start).partition(":")
            if dimension not in DIMENSIONS or not value:
                raise CampaignError(f"{where}.start must be \"added\" or <dimension>:<value> with a dimension of "
                                    f"{list(DIMENSIONS)}, got {start!r}")
        if not isinstance(raw["steps"], list) or not raw["steps"]:
            raise CampaignError(f"{where}.steps must be a non-empty list")
        steps = []
        for i, step in enumerate(raw["steps"]):
            at = f"{where}.steps[{i}]"
            step = self._keys(step, at, {"day", "template", "coupon", "if_no_order", "audience"}, {"day", "template"})
            if not isinstance(step["day"], int) or step["day"] < 0:
                raise CampaignError(f"{at}.day must be a whole number ≥ 0")
            steps.append(SequenceStep(i, step["day"], self.template(step["template"], f"{at}.template"),
                                      self.coupon(step.get("coupon"), f"{at}.coupon"),
                                      bool(step.get("if_no_order", False)),
                                      self.audience(step.get("audience"), f"{at}.audience")))
        return SequenceFlow(str(raw["name"]), str(start), bool(raw.get("exit_on_order", True)), tuple(steps))

    def action(self, index: int, raw: Any, where: str) -> TierAction:
        raw = self._keys(raw, where, {"dimension", "to", "message", "coupon", "notify_owner"}, {"dimension", "to"})
        if raw["dimension"] not in ACTION_DIMENSIONS:
            raise CampaignError(f"{where}.dimension must be one of {list(ACTION_DIMENSIONS)}")
        message = self.template(raw["message"], f"{where}.message") if raw.get("message") else None
        notify = self.template(raw["notify_owner"], f"{where}.notify_owner") if raw.get("notify_owner") else None
        coupon = self.coupon(raw.get("coupon"), f"{where}.coupon")
        if coupon and message is None:
            raise CampaignError(f"{where}: a coupon needs a message that tells the customer about it")
        return TierAction(index, raw["dimension"], str(raw["to"]), message, coupon, notify)
