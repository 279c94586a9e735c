"""The rules page (``/console/rules``): auto-tag rules, reply rules and channel → tag mappings, each shown
as a table and editable as JSON by operators. An edit is checked by the start-up validators
(``bot.startup.with_rule_overrides``) together with the other rules in force, refused with the reason
(400) or stored as an override over the config file's value (table ``rule_overrides``) and audited with
before and after; 恢复默认 removes the override. Running processes pick the change up at their next
event or request (``bot.startup.RuleReloader``)."""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import abort, current_app, flash, g, redirect, render_template, request, url_for
from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.core import jsonsafe
from bot.core.config import ConfigError, Settings
from bot.models import RuleOverride
from bot.startup import RULE_KEYS, with_rule_overrides
from bot.web.console.views import _audit, _db, _now, _settings, bp

logger = logging.getLogger(__name__)
MAX_RULES_TEXT = 64 * 1024
RULE_LABELS = {"tags.rules": "自动打标签规则", "kf.reply_rules": "客服自动回复规则",
               "contacts.channels": "渠道活码 → 标签"}
RULE_HELP = {
    "tags.rules": '每条：{"name": "英文名", "when": 触发, "tag": "组/标签", …}。when 可为 kf_keyword（加 keywords）、'
                  'channel（加 state）、moment_like、moment_comment、first_order、'
                  'order_count / order_amount（加 gte）、coupon_redeemed、tier_entered（加 dimension 与 value）。',
    "kf.reply_rules": '每条：{"name": "回复模板名", "keywords": ["关键词", …]}；按顺序匹配第一条，'
                      '回复 templates/messages/reply/<name>.<层级>.j2（没有则 reply/default.j2）。',
    "contacts.channels": '以渠道活码的 State 为键：{"live_0618": {"tags": ["渠道/直播间"], "stage": "new", '
                         '"welcome": "live"}}；tags 为加入时打的标签，stage 为初始阶段，welcome 为欢迎语模板名。',
}


def current_value(settings: Settings, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(settings, section), name)


def _as_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2, default=str)


@bp.get("/rules")
def rules_page() -> str:
    return _render({}, {}, 200)


def _render(errors: dict[str, str], drafts: dict[str, str], status: int) -> Any:
    settings = _settings()
    with _db().sessions() as s:
        stored = {row.key: (row.updated_by, row.updated_at, row.revision) for row in s.scalars(select(RuleOverride))}
    sections = [{"key": key, "label": RULE_LABELS[key], "help": RULE_HELP[key], "value": current_value(settings, key),
                 "text": drafts.get(key) or _as_text(current_value(settings, key)), "error": errors.get(key),
                 "override": stored.get(key)} for key in RULE_KEYS]
    return render_template("console/rules.html", sections=sections), status


@bp.post("/rules/<key>")
def rules_save(key: str) -> Any:
    if key not in RULE_KEYS:
        abort(404, "no such rule list")
    text = request.form.get("rules", "")
    try:
        value = _parse(key, text)
        with_rule_overrides(_settings(), {key: value})  # the start-up checks, with the other rules in force
    except ConfigError as exc:
        logger.info("console rule edit refused (%s): %s", key, exc)
        return _render({key: str(exc)}, {key: text[:MAX_RULES_TEXT]}, 400)
    with _db().begin() as s:
        before = current_value(_settings(), key)
        _store(s, key, value)
        _audit(s, "rules.update", f"rules:{key}", {"value": before}, {"value": value})
    _forget_cached_settings()
    flash(f"已保存{RULE_LABELS[key]}；运行中的服务在下一条事件时生效")
    return redirect(url_for("console.rules_page") + f"#{key}")


@bp.post("/rules/<key>/reset")
def rules_reset(key: str) -> Any:
    if key not in RULE_KEYS:
        abort(404, "no such rule list")
    with _db().begin() as s:
        row = s.get(RuleOverride, key)
        if row is None:
            flash(f"{RULE_LABELS[key]}本来就是配置文件的默认值")
            return redirect(url_for("console.rules_page"))
        before = row.value
        s.delete(row)
        default = current_value(current_app.extensions["scrm.settings"], key)
        _audit(s, "rules.reset", f"rules:{key}", {"value": before}, {"value": default, "source": "config"})
    _forget_cached_settings()
    flash(f"{RULE_LABELS[key]}已恢复为配置文件的默认值")
    return redirect(url_for("console.rules_page") + f"#{key}")


def _parse(key: str, text: str) -> Any:
    if len(text) > MAX_RULES_TEXT:
        raise ConfigError(f"{key}: at most {MAX_RULES_TEXT // 1024} KB of JSON")
    try:
        value = jsonsafe.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{key}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except jsonsafe.JsonTooDeep as exc:
        raise ConfigError(f"{key}: not valid rules JSON ({exc})") from None
    wanted = dict if key == "contacts.channels" else list
    if not isinstance(value, wanted):
        shape = "an object keyed by channel State" if wanted is dict else "a list of rules"
        raise ConfigError(f"{key} must be {shape}")
    return value


def _store(s: Session, key: str, value: Any) -> None:
    row = s.get(RuleOverride, key)
    if row is None:
        s.add(RuleOverride(key=key, value=value, revision=1, updated_by=g.operator.name, updated_at=_now()))
    else:
        row.value, row.revision, row.updated_by, row.updated_at = value, row.revision + 1, g.operator.name, _now()


def _forget_cached_settings() -> None:
    g.pop("scrm_settings", None)
