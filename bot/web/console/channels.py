"""The console's channel forms: create a 渠道活码 in WeCom (add_contact_way) with its tags, starting stage,
welcome, expiry and cost, and delete one (del_contact_way), as `scrm channels create` / `delete` do,
audited. The routes join the console blueprint (sign-in, CSRF, no changes by viewers)."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from flask import current_app, flash, redirect, request, url_for
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from bot.contacts.channels import (
    ChannelError,
    ChannelSpec,
    cost_fen,
    create_channel,
    delete_channel,
    update_channel,
)
from bot.models import Channel
from bot.outbox.messages import MessageTemplates
from bot.web.console.handover import channels_page, contact_api
from bot.web.console.views import _audit, bp, split_words
from segments.policy import STAGE_PATHS

logger = logging.getLogger(__name__)
FIELD_MAX = 2000


def _field(name: str) -> str:
    value = (request.form.get(name) or "").strip()
    if len(value) > FIELD_MAX:
        raise ChannelError(f"{name}: at most {FIELD_MAX} characters")
    return value


def _spec_from_form(tz: Any) -> ChannelSpec:
    """The create form as a ChannelSpec; ChannelError names the field that is wrong."""
    cost_text, expires_text = _field("cost"), _field("expires")
    expires_at = None
    if expires_text:
        try:
            expires_at = datetime.strptime(expires_text, "%Y-%m-%d").replace(hour=23, minute=59, second=59,
                                                                           tzinfo=tz)
        except ValueError:
            raise ChannelError(f"the expiry {expires_text[:40]!r} is not a day (YYYY-MM-DD)") from None
    return ChannelSpec(state=_field("state"), name=_field("name"), members=split_words(_field("members")),
                       tags=split_words(_field("tags")), stage=_field("stage") or None,
                       welcome=_field("welcome") or "default", skip_verify=request.form.get("verify") != "1",
                       expires_at=expires_at, cost_fen=cost_fen(cost_text) if cost_text else None)


@bp.post("/channels/new")
def channel_create() -> Any:
    """Create the code in WeCom (add_contact_way) and its row; a refusal (a bad field, WeCom's errcode) shows
    the page again with the form as typed and the reason."""
    settings, now = current_app.extensions["scrm.settings"], current_app.extensions["scrm.clock"]()
    api, config_id = contact_api(), None
    try:
        if api is None:
            raise ChannelError("WeCom is not configured (wecom.corp_id and a secret): no code can be made")
        spec = _spec_from_form(settings.tz)
        with current_app.extensions["scrm.db"].begin() as s:
            row = create_channel(s, api, spec, STAGE_PATHS[settings.tiers.stage_path], now)
            config_id = row.config_id
            _audit(s, "channels.create", f"channel:{row.state}", None, _described(row))
    except IntegrityError:  # another operator created the same key a moment before (before WeCom was asked)
        if config_id:
            api.del_contact_way(config_id)
        logger.info("console: channel create refused: the key was taken meanwhile")
        return channels_page(form=request.form, error=f"channel {spec.state!r} exists already")
    except ChannelError as exc:
        logger.info("console: channel create refused: %s", exc)
        return channels_page(form=request.form, error=str(exc))
    except Exception:
        if config_id:  # WeCom made the code but it was not saved here: do not leave it orphaned
            api.del_contact_way(config_id)
        raise
    flash(f"已创建渠道 {spec.state}，活码已生成" + _missing_welcome(settings, spec.welcome))
    return redirect(url_for("console.channels_page"))


def _missing_welcome(settings: Any, name: str) -> str:
    """A note when the welcome template named has no file yet (it may be written after the code is made)."""
    if MessageTemplates.from_settings(settings).has("welcome", name):
        return ""
    return f"。注意：还没有欢迎语模板 welcome/{name}.j2，加好友时暂用 welcome/default"


@bp.post("/channels/update")
def channel_update() -> Any:
    """Change a channel as the form has it: what differs from the stored row is changed (members, name and
    the confirmation setting in WeCom too, update_contact_way), as `scrm channels update` does, audited."""
    settings, now = current_app.extensions["scrm.settings"], current_app.extensions["scrm.clock"]()
    state = (request.form.get("state") or "")[:FIELD_MAX]
    api = contact_api()
    try:
        with current_app.extensions["scrm.db"].begin() as s:
            row = s.scalar(select(Channel).where(Channel.state == state, Channel.status != "deleted"))
            if row is None:
                raise ChannelError(f"no channel {state[:40]!r} (it may have been deleted)")
            before = _described(row)
            changes = _changes(row, _spec_from_form(settings.tz), settings.tz)
            if changes and row.config_id and api is None:
                raise ChannelError("WeCom is not configured (wecom.corp_id and a secret): the code cannot be changed")
            if changes:
                update_channel(s, api, state, changes, STAGE_PATHS[settings.tiers.stage_path], now)
                _audit(s, "channels.update", f"channel:{state}", before, _described(row))
    except ChannelError as exc:
        logger.info("console: channel update refused: %s", exc)
        return channels_page(form=request.form, error=str(exc), edit=state)
    done = f"已修改渠道 {state}：{'、'.join(CHANGE_NAMES[k] for k in changes)}" if changes else f"渠道 {state} 没有改动"
    flash(done + (_missing_welcome(settings, changes["welcome"]) if "welcome" in changes else ""))
    return redirect(url_for("console.channels_page"))


CHANGE_NAMES = {"name": "名称", "members": "接待成员", "tags": "标签", "stage": "起始阶段", "welcome": "欢迎语模板",
                "skip_verify": "成员确认", "expires_at": "到期日", "cost_fen": "成本"}


def _changes(row: Channel, spec: ChannelSpec, tz: Any) -> dict[str, Any]:
    """The spec's fields that differ from the stored channel (an expiry by its day: a time set on the CLI
    stays while the day does; an empty name keeps the name)."""
    day = (lambda at: at.astimezone(tz).date() if at else None)  # noqa: E731
    stored = {"name": row.name, "members": list(row.members or []), "tags": list(row.tags or []),
              "stage": row.stage, "welcome": row.welcome, "skip_verify": row.skip_verify, "cost_fen": row.cost_fen}
    changes = {key: getattr(spec, key) for key, value in stored.items() if getattr(spec, key) != value}
    if not spec.name:
        changes.pop("name", None)
    if day(spec.expires_at) != day(row.expires_at):
        changes["expires_at"] = spec.expires_at
    return changes


@bp.post("/channels/delete")
def channel_delete() -> Any:
    """The channel named by the form's ``state`` (in the body, not the URL: a key synced in from WeCom may
    hold any character)."""
    state = (request.form.get("state") or "")[:FIELD_MAX]
    api = contact_api()
    try:
        if api is None:
            raise ChannelError("WeCom is not configured (wecom.corp_id and a secret): the code cannot be deleted")
        with current_app.extensions["scrm.db"].begin() as s:
            before = s.scalar(select(Channel).where(Channel.state == state))
            described = _described(before) if before is not None else None
            delete_channel(s, api, state)
            _audit(s, "channels.delete", f"channel:{state}", described, None)
    except ChannelError as exc:
        logger.info("console: channel delete refused: %s", exc)
        flash(f"未删除：{exc}")
        return redirect(url_for("console.channels_page"))
    flash(f"已删除渠道 {state} 的活码；它带来的客户与报表保留")
    return redirect(url_for("console.channels_page"))


def _described(row: Channel) -> dict[str, Any]:
    return {"name": row.name, "members": list(row.members or []), "tags": list(row.tags or []), "stage": row.stage,
            "welcome": row.welcome, "skip_verify": row.skip_verify, "cost_fen": row.cost_fen,
            "expires_at": row.expires_at.isoformat() if row.expires_at else None, "config_id": row.config_id}
