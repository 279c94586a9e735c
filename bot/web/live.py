"""The settings a request runs with: the app's, with the rule lists operators edited in the console
(auto-tag rules, reply rules, channel mappings) in place of the config file's, read once per request."""

from __future__ import annotations

from flask import current_app, g

from bot.core.config import Settings


def current_settings() -> Settings:
    if "scrm_settings" not in g:
        base, rules = current_app.extensions["scrm.settings"], current_app.extensions.get("scrm.rules")
        g.scrm_settings = rules.over(base) if rules is not None else base
    return g.scrm_settings
