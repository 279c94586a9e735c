"""The system page's WeCom connectivity check: for each app secret configured (the self-built app,
customer contact, 微信客服) fetch a fresh access token, then make one cheap read call with it, through
the same clients the service uses (so the sandbox answers when ``wecom.api_base_url`` points to it).
Each result is OK, or WeCom's error code with what to check."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import requests
from flask import current_app, render_template
from wechatpy.exceptions import WeChatClientException

from bot.core.config import Settings
from bot.web.console.system import OUTBOX_DAYS, last_line, system_figures
from bot.web.console.views import _db, _now, _settings, bp

logger = logging.getLogger(__name__)
# role, label, the secret's settings key, the cheap call (method, path, body)
ROLES = (("app", "自建应用", "wecom.secret", "GET", "getcallbackip", None),
         ("contact", "客户联系", "wecom.contact_secret", "GET", "externalcontact/get_follow_user_list", None),
         ("kf", "微信客服", "wecom.kf_secret", "POST", "kf/account/list", {"offset": 0, "limit": 1}))
WHAT_TO_CHECK = {
    40013: "企业 ID 不对：检查 wecom.corp_id（管理后台 → 我的企业 → 企业信息 → 企业ID）",
    40001: "Secret 不对：检查 {secret}（应用管理 / 客户联系 / 微信客服 → API 里的 Secret，重置后要同步更新）",
    40014: "access_token 无效：再检查一次；反复出现时检查多个进程是否各自缓存了旧 token（配置 redis.url 共用）",
    42001: "access_token 已过期：再检查一次；反复出现时检查服务器时钟",
    41001: "请求缺少 access_token：检查 wecom.api_base_url 是否指向企业微信（或沙箱）",
    60020: "服务器出口 IP 不在企业可信 IP 中：应用管理 → 该应用 → 企业可信IP 加入本机出口 IP",
    48002: "该 Secret 没有这个接口的权限：客户联系 → API 中把应用设为可调用；微信客服 → API 中关联该应用",
    45009: "调用频率超过企业微信限制：稍后再试",
    -1: "企业微信系统繁忙：稍后再试",
}
GENERAL_HELP = "见企业微信全局错误码：https://developer.work.weixin.qq.com/document/path/90313"


@dataclass
class CheckResult:
    role: str
    label: str
    ok: bool
    step: str  # gettoken or the cheap call's path
    errcode: int | None
    message: str
    what_to_check: str
    millis: int


def check_wecom(settings: Settings, clients: Any) -> list[CheckResult]:
    if clients is None:
        return [CheckResult("app", "企业微信", False, "config", None, "wecom.corp_id 未配置",
                            "在配置文件 [wecom] 中填写 corp_id 与各 Secret（见 docs/connecting.md）", 0)]
    results, seen = [], {}
    for role, label, secret_key, method, path, body in ROLES:
        client = getattr(clients, role)
        if id(client) in seen:
            shared = seen[id(client)]
            results.append(CheckResult(role, label, shared.ok, "-", None,
                                       f"与{shared.label}共用同一个 Secret（{secret_key} 未单独配置）", "", 0))
            continue
        result = _check_one(settings, client, role, label, secret_key, method, path, body)
        seen[id(client)] = result
        results.append(result)
    return results


def _check_one(settings: Settings, client: Any, role: str, label: str, secret_key: str, method: str, path: str,
               body: Any) -> CheckResult:
    started = time.monotonic()
    step = "gettoken"
    try:
        client.fetch_access_token()
        step = path
        if method == "GET":
            client.get(path)
        else:
            client.post(path, data=body)
    except WeChatClientException as exc:
        code = int(exc.errcode) if exc.errcode is not None else None
        hint = WHAT_TO_CHECK.get(code, GENERAL_HELP) if code is not None else GENERAL_HELP
        logger.info("WeCom check: %s %s answered %s", role, step, code)
        return CheckResult(role, label, False, step, code, str(exc.errmsg or "")[:200], hint.format(secret=secret_key),
                           _millis(started))
    except (requests.RequestException, OSError) as exc:
        logger.info("WeCom check: %s %s unreachable: %s", role, step, type(exc).__name__)
        return CheckResult(role, label, False, step, None, f"连接失败：{type(exc).__name__}",
                           f"检查 wecom.api_base_url（{settings.wecom.api_base_url}）、网络与代理、"
                           f"wecom.timeout_seconds", _millis(started))
    return CheckResult(role, label, True, path, 0, "ok", "", _millis(started))


def _millis(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


@bp.post("/system/wecom-check")
def wecom_check() -> Any:
    settings = _settings()
    results = check_wecom(settings, current_app.extensions["scrm.processor"].clients)
    with _db().sessions() as s:
        figures = system_figures(s, settings, _db(), _now())
        return render_template("console/system.html", f=figures, last_line=last_line, outbox_days=OUTBOX_DAYS,
                               check=results, api_base_url=settings.wecom.api_base_url)
