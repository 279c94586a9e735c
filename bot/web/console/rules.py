"""The rules page (``/console/rules``): auto-tag rules, reply rules and channel → tag mappings, each shown
as a table; operators add one rule with a form, delete one from its row, or edit the list as JSON. An
edit is checked by the start-up validators (``bot.startup.with_rule_overrides``) together with the other
rules in force, refused with the reason (400) or stored as an override over the config file's value
(table ``rule_overrides``) and audited with before and after; 恢复默认 removes the override. Running
processes pick the change up at their next event or request (``bot.startup.RuleReloader``)."""

from __future__ import annotations

import json
import logging
from decimal import Decimal, InvalidOperation
from typing import Any

from flask import abort, current_app, flash, g, redirect, render_template, request, url_for
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bot.core import jsonsafe
from bot.core.config import ConfigError, Settings
from bot.core.db import row_id
from bot.models import RuleOverride
from bot.startup import RULE_KEYS, with_rule_overrides
from bot.tagging.rules import TIER_DIMENSIONS
from bot.web.console.views import _audit, _db, _now, _settings, bp, split_words
from segments.policy import STAGE_PATHS

logger = logging.getLogger(__name__)
MAX_RULES_TEXT = 64 * 1024
RULE_LABELS = {"tags.rules": "自动打标签规则", "kf.reply_rules": "客服自动回复规则",
               "contacts.channels": "渠道活码 → 标签"}
RULE_HELP = {
    "tags.rules": '每条：{"name": "英文名", "when": 触发, "tag": "组/标签", …}。when 可为 kf_keyword（加 keywords）、'
                  'channel（加 state）、moment_like、moment_comment、first_order、'
                  'order_count / order_amount（加 gte）、coupon_redeemed、tier_entered（加 dimension 与 value）、'
                  'group_member（加 group：客户群的 chat_id 或群名）。',
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
                 "drafted": key in drafts, "override": stored.get(key)} for key in RULE_KEYS]
    return render_template("console/rules.html", sections=sections, when_names=WHEN_NAMES,
                           dimensions=TIER_DIMENSIONS, stages=STAGE_PATHS[settings.tiers.stage_path],
                           form=request.form if request.method == "POST" else {}), status


@bp.post("/rules/<key>")
def rules_save(key: str) -> Any:
    if key not in RULE_KEYS:
        abort(404, "no such rule list")
    text = request.form.get("rules", "")
    try:
        value = _parse(key, text)
    except ConfigError as exc:
        logger.info("console rule edit refused (%s): %s", key, exc)
        return _render({key: str(exc)}, {key: text[:MAX_RULES_TEXT]}, 400)
    return _save(key, value, "rules.update", f"已保存{RULE_LABELS[key]}；运行中的服务在下一条事件时生效",
                 draft=text[:MAX_RULES_TEXT])


@bp.post("/rules/<key>/add")
def rules_add(key: str) -> Any:
    """One rule from the form's fields (no JSON): appended to the list in force, or, for a channel,
    set under its State (replacing the mapping it had)."""
    if key not in RULE_KEYS:
        abort(404, "no such rule list")
    value = current_value(_settings(), key)
    try:
        if key == "contacts.channels":
            state, entry = _channel_from_form(request.form)
            value = {**value, state: entry}
        else:
            build = _tag_rule_from_form if key == "tags.rules" else _reply_rule_from_form
            value = [*value, build(request.form)]
    except ConfigError as exc:
        logger.info("console rule add refused (%s): %s", key, exc)
        return _render({key: str(exc)}, {}, 400)
    return _save(key, value, "rules.add", f"已添加到{RULE_LABELS[key]}；运行中的服务在下一条事件时生效")


@bp.post("/rules/<key>/delete")
def rules_delete(key: str) -> Any:
    """Remove one rule: by its place and name in a list (a list changed meanwhile is refused, not
    guessed at), or a channel by its State."""
    if key not in RULE_KEYS:
        abort(404, "no such rule list")
    value = current_value(_settings(), key)
    name = request.form.get("name", "")
    if key == "contacts.channels":
        if name not in value:
            return _render({key: f"no channel {name[:40]!r} to delete (reload the page)"}, {}, 409)
        value = {state: entry for state, entry in value.items() if state != name}
    else:
        index = request.form.get("index", "")
        if not index.isdecimal() or int(index) >= len(value) or value[int(index)].get("name") != name:
            return _render({key: f"rule {name[:40]!r} is not where the page showed it (reload the page)"}, {}, 409)
        value = [rule for i, rule in enumerate(value) if i != int(index)]
    return _save(key, value, "rules.delete", f"已从{RULE_LABELS[key]}删除 {name}")


def _save(key: str, value: Any, action: str, message: str, draft: str | None = None) -> Any:
    """Check ``value`` with the other rules in force (the start-up checks), store it as the override and
    audit before and after; a refusal re-renders the page with the reason (400)."""
    try:
        with_rule_overrides(_settings(), {key: value})
    except ConfigError as exc:
        logger.info("console rule edit refused (%s): %s", key, exc)
        return _render({key: str(exc)}, {key: draft} if draft else {}, 400)
    seen_text = request.form.get("revision", "")
    seen = row_id(seen_text) if seen_text else None
    if seen_text and seen is None:
        return _render({key: "表单的版本号无效，请刷新页面后重试"}, {key: draft} if draft else {}, 400)
    try:
        with _db().begin() as s:
            before = current_value(_settings(), key)
            if not _store(s, key, value, seen):
                raise _Changed
            _audit(s, action, f"rules:{key}", {"value": before}, {"value": value})
    except (_Changed, IntegrityError):
        logger.info("console rule edit refused (%s): the list changed meanwhile", key)
        return _render({key: "another edit was saved since this page was loaded; nothing was changed "
                             "(reload the page and try again)"}, {key: draft} if draft else {}, 409)
    _forget_cached_settings()
    flash(message)
    return redirect(url_for("console.rules_page") + f"#{key}")


WHEN_NAMES = {"kf_keyword": "客服消息含关键词", "channel": "经渠道活码添加", "moment_like": "点赞朋友圈",
              "moment_comment": "评论朋友圈", "first_order": "首次下单", "order_count": "累计订单数达到",
              "order_amount": "累计实付金额达到（元）", "coupon_redeemed": "核销优惠券", "tier_entered": "进入分层",
              "group_member": "加入客户群"}
TAG_RULE_FIELDS = {"kf_keyword": ("keywords",), "channel": ("state",), "order_count": ("gte",),
                   "order_amount": ("gte",), "tier_entered": ("dimension", "value"), "group_member": ("group",)}
FIELD_MAX = 200


def _field(form: Any, name: str) -> str:
    text = (form.get(name) or "").strip()
    if len(text) > FIELD_MAX:
        raise ConfigError(f"{name}: at most {FIELD_MAX} characters")
    return text


def _tag_rule_from_form(form: Any) -> dict[str, Any]:
    when = _field(form, "when")
    rule: dict[str, Any] = {"name": _field(form, "name"), "when": when, "tag": _field(form, "tag")}
    for name in TAG_RULE_FIELDS.get(when, ()):
        text = _field(form, name)
        if name == "keywords":
            rule[name] = split_words(text)
        elif name == "gte":
            rule[name] = _number(text)
        else:
            rule[name] = text
    return rule


def _number(text: str) -> int | float:
    """A threshold typed in a form: a whole number stays whole; infinity, NaN and the like are refused."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ConfigError(f"gte must be a number, got {text[:20]!r}") from None
    if not value.is_finite():
        raise ConfigError(f"gte must be a finite number, got {text[:20]!r}")
    return int(value) if value == value.to_integral_value() else float(value)


def _reply_rule_from_form(form: Any) -> dict[str, Any]:
    return {"name": _field(form, "name"), "keywords": split_words(_field(form, "keywords"))}


def _channel_from_form(form: Any) -> tuple[str, dict[str, Any]]:
    state = _field(form, "state")
    if not state:
        raise ConfigError("a channel needs its State")
    entry: dict[str, Any] = {"tags": split_words(_field(form, "tags"))}
    if stage := _field(form, "stage"):
        entry["stage"] = stage
    if welcome := _field(form, "welcome"):
        entry["welcome"] = welcome
    return state, entry


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


class _Changed(Exception):
    """The stored list is not the revision the page was made from."""


def _store(s: Session, key: str, value: Any, seen: int | None) -> bool:
    """Store ``value`` as the next revision, only over the revision the page showed (``seen``; 0: the
    config file's, None: a form without one). The write comes first and is conditional, so two operators
    saving at once cannot both win (and SQLite never upgrades a read to a write); False when the stored
    revision moved on."""
    values = {"value": value, "updated_by": g.operator.name, "updated_at": _now()}
    where = [RuleOverride.key == key] + ([RuleOverride.revision == seen] if seen else [])
    if seen != 0 and s.execute(update(RuleOverride).where(*where).values(revision=RuleOverride.revision + 1, **values)
                               .execution_options(synchronize_session=False)).rowcount == 1:
        return True
    if seen or s.scalar(select(RuleOverride.key).where(RuleOverride.key == key)) is not None:
        return False
    s.add(RuleOverride(key=key, revision=1, **values))
    s.flush()  # a second first save meets the primary key: IntegrityError
    return True


def _forget_cached_settings() -> None:
    g.pop("scrm_settings", None)
