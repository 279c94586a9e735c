"""Start-up: the settings a process runs with. ``load_settings`` reads them (``bot.core.config``, which
checks their shape and imports no domain), then lets each domain check the rules it owns — tier
policy, tag rules, holiday names, the contact policy, coupons, campaign rules and the sidebar's quick
replies — so a bad rule stops
the app, the CLI or the scheduler at start with one ``ConfigError`` line instead of failing later.
This is the one module that knows every domain's checks; config stays on the ground floor."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from bot.campaigns.audience import AudienceError
from bot.campaigns.coupons import CouponBook, CouponError
from bot.campaigns.holidays import HOLIDAYS
from bot.campaigns.rules import CampaignRules
from bot.core import config
from bot.core.config import ConfigError, Settings
from bot.outbox.messages import MessageTemplates
from bot.outbox.policy import MASS_RULES, parse_quiet_hours
from bot.outbox.quick_replies import load_quick_replies
from bot.tagging.rules import RuleError, TagRules
from segments.policy import PolicyError, TierPolicy


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
    TierPolicy.from_settings(settings.tiers)


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
    TagRules.from_settings(settings)


def _campaigns(settings: Settings) -> None:
    CouponBook.from_settings(settings)
    CampaignRules.from_settings(settings)


def _quick_replies(settings: Settings) -> None:
    load_quick_replies(MessageTemplates.from_settings(settings))


_CHECKS: tuple[Callable[[Settings], None], ...] = (_tier_policy, _holidays, _contact_policy, _tag_rules, _campaigns,
                                                   _quick_replies)
