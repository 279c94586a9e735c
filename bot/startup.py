"""Start-up: the settings a process runs with. ``load_settings`` reads them (``bot.core.config``, which
checks their shape and imports no domain), then lets each domain check the rules it owns — tier
policy, tag rules, holiday names, the contact policy, coupons, campaign rules and the sidebar's quick
replies — so a bad rule stops
the app, the CLI or the scheduler at start with one ``ConfigError`` line instead of failing later.
This is the one module that knows every domain's checks; config stays on the ground floor.

Operators may edit three rule lists in the console (auto-tag rules, reply rules, channel mappings);
their edits are stored as overrides (table ``rule_overrides``) over the config file's values and go
through the same checks here (``with_rule_overrides``); ``RuleReloader`` lets a running process pick
them up."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.orm import Session

from bot.campaigns.audience import AudienceError
from bot.campaigns.coupons import CouponBook, CouponError
from bot.campaigns.holidays import HOLIDAYS
from bot.campaigns.rules import CampaignRules
from bot.core import config
from bot.core.config import ConfigError, Settings
from bot.core.db import Database
from bot.models import RuleOverride
from bot.outbox.messages import MessageTemplates
from bot.outbox.policy import MASS_RULES, parse_quiet_hours
from bot.outbox.quick_replies import load_quick_replies
from bot.tagging.rules import RuleError, TagRules, parse_ref
from segments.policy import ACTIVITY_LEVELS, ENGAGEMENT_STATES, STAGE_PATHS, PolicyError, TierPolicy
from segments.rfm import SEGMENT_NAMES

logger = logging.getLogger(__name__)
# The rule lists an operator may edit in the console, as "section.key" of the settings.
RULE_KEYS = ("tags.rules", "kf.reply_rules", "contacts.channels")


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Settings as :func:`bot.core.config.load_settings` builds them, with every domain rule checked."""
    settings = config.load_settings(config_file, overrides, environ)
    check_rules(settings)
    return settings


def check_rules(settings: Settings) -> None:
    """Raise :class:`ConfigError` naming the first rule a domain refuses."""
    for check in _CHECKS:
        try:
            check(settings)
        except (PolicyError, RuleError, CouponError, AudienceError, ValueError) as exc:
            raise ConfigError(str(exc)) from None


def _tier_policy(settings: Settings) -> None:
    TierPolicy.of(settings)


def _holidays(settings: Settings) -> None:
    unknown = [h for h in settings.greetings.holidays if h not in HOLIDAYS]
    if unknown:
        raise ConfigError(f"greetings.holidays: unknown {unknown}; known: {sorted(HOLIDAYS)}")


def _contact_policy(settings: Settings) -> None:
    try:
        parse_quiet_hours(settings.outbox.quiet_hours)
    except ValueError as exc:
        raise ConfigError(f"outbox.{exc}") from None
    if settings.outbox.mass_message_rule not in MASS_RULES:
        raise ConfigError(f"outbox.mass_message_rule must be one of {list(MASS_RULES)}, "
                          f"got {settings.outbox.mass_message_rule!r}")


def _tag_rules(settings: Settings) -> None:
    """The rules' shape, and a tier_entered rule's value among its dimension's values (a typo would
    otherwise be saved and never match)."""
    rules = TagRules.from_settings(settings)
    known = {"value_tier": TierPolicy.of(settings).value_tiers, "rfm_segment": tuple(SEGMENT_NAMES),
             "stage": STAGE_PATHS[settings.tiers.stage_path], "engagement": ENGAGEMENT_STATES,
             "activity": ACTIVITY_LEVELS}
    for rule in rules.when("tier_entered"):
        allowed = known.get(rule.dimension or "", ())
        if rule.value not in allowed:
            raise ConfigError(f"tags.rules {rule.name}: {rule.dimension} has no value {rule.value!r} "
                              f"(one of {list(allowed)})")


def _replies_and_channels(settings: Settings) -> None:
    """What config's shape check leaves to the domains: reply rule names once each, a channel's stage on
    the configured stage path, a channel's tags written as tag names."""
    names = [rule["name"] for rule in settings.kf.reply_rules]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"kf.reply_rules: rule name(s) {twice} used twice")
    templates = MessageTemplates.from_settings(settings)
    missing = [n for n in names if not templates.has("reply", n)]
    if missing:  # the name picks the reply: without a file every match would get reply/default, unsaid
        raise ConfigError(f"kf.reply_rules: no reply template for {missing} (add reply/{missing[0]}.j2 under "
                          "templates/messages/ or app.templates_dir first)")
    stages = STAGE_PATHS[settings.tiers.stage_path]
    default_group = settings.tags.default_group.strip()
    for state, channel in settings.contacts.channels.items():
        if not isinstance(state, str) or not state.strip() or len(state) > 30:
            raise ConfigError(f"contacts.channels: a channel State must be 1–30 characters, got {state!r}")
        if "stage" in channel and channel["stage"] not in stages:
            raise ConfigError(f"contacts.channels.{state}.stage must be one of {list(stages)} "
                              f"(tiers.stage_path = {settings.tiers.stage_path}), got {channel['stage']!r}")
        for i, tag in enumerate(channel.get("tags", [])):
            parse_ref(tag, default_group, f"contacts.channels.{state}.tags[{i}]")


def _campaigns(settings: Settings) -> None:
    CouponBook.from_settings(settings)
    CampaignRules.from_settings(settings)


def _quick_replies(settings: Settings) -> None:
    load_quick_replies(MessageTemplates.from_settings(settings))


_CHECKS: tuple[Callable[[Settings], None], ...] = (_tier_policy, _holidays, _contact_policy, _tag_rules,
                                                  _replies_and_channels, _campaigns, _quick_replies)


# ---------------------------------------------------------------- operators' rule overrides


def with_rule_overrides(settings: Settings, overrides: Mapping[str, Any]) -> Settings:
    """``settings`` with the given rule lists replaced, checked as at start (shape, then every domain's
    rules); raises :class:`ConfigError` naming the first refused rule."""
    sections: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        if key not in RULE_KEYS:
            raise ConfigError(f"{key} cannot be overridden (editable: {', '.join(RULE_KEYS)})")
        section, name = key.split(".")
        sections.setdefault(section, {})[name] = value
    try:
        updated = replace(settings, **{s: replace(getattr(settings, s), **values) for s, values in sections.items()})
    except TypeError as exc:
        raise ConfigError(str(exc)) from None
    config.validate(updated)
    check_rules(updated)
    return updated


def stored_rule_overrides(session: Session) -> dict[str, Any]:
    return {row.key: row.value for row in session.scalars(select(RuleOverride).where(RuleOverride.key.in_(RULE_KEYS)))}


def rules_revision(session: Session) -> tuple[tuple[str, int], ...]:
    return tuple(sorted((key, revision) for key, revision in session.execute(
        select(RuleOverride.key, RuleOverride.revision))))


class RuleReloader:
    """For a long-running process: its settings with the operators' current overrides. Each call reads
    only the revisions (a few rows) and rebuilds the settings when they, or the base, changed; a stored
    override that no longer passes the checks (say, the config's stage path changed) is left out with
    a log line rather than stopping the process."""

    def __init__(self, db: Database, base: Settings) -> None:
        self.db = db
        self.base = base
        self._made: tuple[Settings, tuple[tuple[str, int], ...], Settings] | None = None  # base, revision, result

    def refresh(self) -> Settings:
        return self.over(self.base)

    def over(self, base: Settings) -> Settings:
        made = self._made
        try:
            with self.db.sessions() as s:
                revision = rules_revision(s)
                if made is not None and made[0] is base and made[1] == revision:
                    return made[2]
                overrides = stored_rule_overrides(s)
        except (OperationalError, ProgrammingError) as exc:  # a database not yet upgraded, or away
            logger.warning("the console's rule edits could not be read (%s); keeping the rules in use",
                           type(exc).__name__)
            return made[2] if made is not None and made[0] is base else base
        settings = settings_with_overrides(base, overrides)
        self._made = (base, revision, settings)
        return settings


def settings_with_overrides(base: Settings, overrides: Mapping[str, Any]) -> Settings:
    """Each stored override that passes the checks on its own is applied; a refused one is skipped."""
    settings = base
    for key, value in overrides.items():
        try:
            settings = with_rule_overrides(settings, {key: value})
        except ConfigError as exc:
            logger.error("the console's %s override is refused and ignored: %s", key, exc)
    return settings
