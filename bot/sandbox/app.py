"""The sandbox's Flask app: ``/cgi-bin/*`` speaks WeCom's API, ``/_sandbox/*`` is the control API."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from flask import Flask, Response, request

from bot.sandbox import api_channels, api_contact, api_groups, api_kf, api_misc, api_transfer  # noqa: F401  (fill ENDPOINTS)
from bot.sandbox.control import bp as control_bp
from bot.sandbox.control_handover import bp as handover_bp
from bot.sandbox.jssdk import bp as jssdk_bp
from bot.sandbox.registry import ENDPOINTS, Call
from bot.sandbox.state import SandboxState, WeComError

logger = logging.getLogger(__name__)


def create_sandbox_app(state: SandboxState) -> Flask:
    app = Flask("scrm-sandbox")
    app.extensions["sandbox.state"] = state
    app.register_blueprint(control_bp)
    app.register_blueprint(jssdk_bp)
    app.register_blueprint(handover_bp)

    @app.route("/cgi-bin/<path:path>", methods=["GET", "POST"])
    def cgi(path: str) -> Response:
        return _json(_handle(state, path))

    return app


def _handle(state: SandboxState, path: str) -> dict[str, Any]:
    params = {k: v for k, v in request.args.items()}
    body, errcode = _body(), 0
    entry = {"ts": state.now(), "method": request.method, "path": path,
             "params": {k: v for k, v in params.items() if k not in ("access_token", "corpsecret")},
             "body": body, "role": None}
    with state.lock:
        delay = state.take_delay(path)
    if delay and delay[1] == "drop":
        # Lost on the way: WeCom never sees the call, and the caller gets no answer in time.
        entry.update(errcode=None, dropped=True)
        with state.lock:
            state.record_call(entry)
        time.sleep(delay[0])
        return {"errcode": -1, "errmsg": "dropped by the sandbox"}
    try:
        with state.lock:
            result = _route(state, path, params, body, entry)
    except WeComError as exc:
        errcode, result = exc.errcode, {"errcode": exc.errcode, "errmsg": exc.errmsg}
    entry["errcode"] = errcode
    with state.lock:
        state.record_call(entry)
    if delay:
        time.sleep(delay[0])  # done, but the answer comes too late for a caller's timeout
    return result


def _route(state: SandboxState, path: str, params: dict[str, str], body: Any, entry: dict[str, Any]) -> dict:
    if path == "gettoken":
        fault = state.take_fault(path)
        if fault:
            raise WeComError(fault, "injected fault")
        token, expires_in = state.issue_token(params.get("corpid", ""), params.get("corpsecret", ""))
        entry["role"] = state.config.secrets.get(params.get("corpsecret", ""))
        return {"errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": expires_in}
    if path not in ENDPOINTS:
        raise WeComError(404, f"sandbox does not implement /cgi-bin/{path}")
    method, func = ENDPOINTS[path]
    entry["role"] = state.role_for(params.get("access_token"))
    if request.method != method:
        raise WeComError(43001 if method == "GET" else 43002, f"require {method} request")
    if not isinstance(body, dict):
        raise WeComError(47001, "data format error: body must be a JSON object")
    fault = state.take_fault(path)
    if fault:  # a queued 0 lets one call through, so a fault can hit the n-th call
        raise WeComError(fault, "injected fault")
    result = func(Call(state=state, role=entry["role"], params=params, body=body))
    fault = state.take_fault(path, after=True)
    if fault:  # done, and then answered with an error: the caller cannot tell it was done
        raise WeComError(fault, "injected fault after the call was done")
    return {"errcode": 0, "errmsg": "ok", **result}


def _body() -> Any:
    if request.method != "POST":
        return {}
    raw = request.get_data(cache=True)
    if not raw:
        return {}
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


def _json(payload: dict[str, Any]) -> Response:
    return Response(json.dumps(payload, ensure_ascii=False), status=200, mimetype="application/json")
