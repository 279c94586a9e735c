"""Who is using the sidebar: the OAuth2 round trip to WeCom, a short signed session cookie and the
CSRF token every state change must carry."""

from __future__ import annotations

import hmac
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, current_app, request, session
from wechatpy.exceptions import WeChatClientException

from bot.core.config import Settings
from bot.wecom.api import authorize_url

logger = logging.getLogger(__name__)
CSRF_HEADER = "X-CSRF-Token"
INVALID_CODE = 40029


class SignInRefused(Exception):
    """The OAuth2 answer does not make this person a member who may use the sidebar."""

    def __init__(self, status: int, title: str, hint: str) -> None:
        super().__init__(title)
        self.status, self.title, self.hint = status, title, hint


@dataclass(frozen=True)
class Member:
    userid: str
    csrf: str


def configure_session(app: Flask, settings: Settings) -> None:
    """The session cookie: HttpOnly, SameSite=Lax, Secure when the service is served over https."""
    app.config.update(
        SESSION_COOKIE_NAME="scrm_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.app.public_url.startswith("https://"),
        PERMANENT_SESSION_LIFETIME=timedelta(minutes=settings.sidebar.session_minutes),
        SESSION_REFRESH_EACH_REQUEST=False,
    )


def _settings() -> Settings:
    return current_app.extensions["scrm.settings"]


def _now() -> datetime:
    return current_app.extensions["scrm.clock"]()


def current_member() -> Member | None:
    """The signed-in member, if the session is younger than ``sidebar.session_minutes``."""
    userid, signed_in_at = session.get("sidebar_userid"), session.get("sidebar_signed_in_at")
    if not isinstance(userid, str) or not isinstance(signed_in_at, (int, float)):
        return None
    age = _now().timestamp() - signed_in_at
    if not 0 <= age <= _settings().sidebar.session_minutes * 60:
        return None
    return Member(userid, str(session.get("sidebar_csrf", "")))


def external_url(path: str) -> str:
    """``path`` on this service as the member's browser reaches it (``app.public_url`` behind a proxy)."""
    base = _settings().app.public_url.rstrip("/") or request.host_url.rstrip("/")
    return base + path


def page_url() -> str:
    """The exact URL the browser loaded, without ``#`` (what the JS-SDK signatures cover)."""
    query = request.query_string.decode("latin-1")
    return external_url(request.path) + (f"?{query}" if query else "")


def sign_in_redirect(next_path: str) -> str:
    """Start OAuth2: remember where to come back to, and a one-off state that ties the answer to this browser."""
    state = secrets.token_hex(16)
    session["sidebar_oauth_state"] = state
    session["sidebar_next"] = next_path if _is_sidebar_path(next_path) else "/sidebar/"
    settings = _settings()
    return authorize_url(settings.sidebar.authorize_url, settings.wecom.corp_id, external_url("/sidebar/oauth"),
                         state, settings.wecom.agent_id)


def _is_sidebar_path(path: str) -> bool:
    parts = urlsplit(path)
    return not parts.scheme and not parts.netloc and parts.path.startswith("/sidebar/")


def finish_sign_in(code: str, state: str, oauth_client: Any) -> str:
    """Exchange the code for the member's userid and open the session; returns where to go next."""
    expected = session.pop("sidebar_oauth_state", None)
    if not isinstance(expected, str) or not hmac.compare_digest(expected, state):
        logger.info("sidebar sign-in refused: OAuth state missing or not this browser's")
        raise SignInRefused(400, "登录已过期，请重新打开侧边栏", "关闭侧边栏后从聊天工具栏重新打开。")
    if not code or len(code) > 512:
        logger.info("sidebar sign-in refused: no usable code")
        raise SignInRefused(400, "登录信息无效，请重新打开侧边栏", "关闭侧边栏后从聊天工具栏重新打开。")
    try:
        answer = oauth_client.get_user_info(code)
    except WeChatClientException as exc:
        if exc.errcode == INVALID_CODE:
            logger.info("sidebar sign-in: WeCom refused the code (40029: used or older than 5 minutes)")
            raise SignInRefused(400, "登录码已失效，请重新打开侧边栏",
                                "登录码只能用一次且 5 分钟内有效：关闭侧边栏后重新打开即可。") from None
        logger.warning("sidebar sign-in: auth/getuserinfo failed with errcode %s", exc.errcode)
        raise SignInRefused(502, "暂时无法向企业微信确认身份",
                            f"企业微信返回错误 {exc.errcode}，请稍后重试。") from None
    userid = answer.get("userid") or answer.get("UserId")
    if not userid:
        logger.info("sidebar sign-in refused: not a member of the corp (openid only)")
        raise SignInRefused(403, "仅限企业成员使用", "侧边栏只对本企业的员工开放。")
    next_path = session.pop("sidebar_next", "/sidebar/")
    session.clear()
    session.permanent = True
    session["sidebar_userid"] = str(userid)
    session["sidebar_signed_in_at"] = _now().timestamp()
    session["sidebar_csrf"] = secrets.token_urlsafe(32)
    return next_path if _is_sidebar_path(next_path) else "/sidebar/"


def csrf_ok(member: Member) -> bool:
    sent = request.headers.get(CSRF_HEADER, "")
    return bool(member.csrf) and hmac.compare_digest(sent.encode(), member.csrf.encode())
