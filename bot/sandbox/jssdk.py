"""What a member's WeCom client does around a sidebar page: the OAuth2 authorize page (pick a demo
staff member, get a single-use code), and a ``wx`` JS-SDK stub that checks both signatures against
the tickets this sandbox issued and records every call (``sendChatMessage`` …) so tests can read them."""

from __future__ import annotations

import hashlib
import re
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from flask import Blueprint, Response, current_app, jsonify, redirect, request

from bot.sandbox.state import SandboxState

bp = Blueprint("sandbox_jssdk", __name__)
STUB_SCRIPT = Path(__file__).with_name("static") / "jssdk_stub.js"
_STATE = re.compile(r"[A-Za-z0-9]{0,128}")
_SCOPES = {"snsapi_base", "snsapi_privateinfo"}


def _state() -> SandboxState:
    return current_app.extensions["sandbox.state"]


def _page(title: str, body: str, status: int = 200) -> Response:
    html = (f"<!doctype html><html lang=zh-CN><meta charset=utf-8><meta name=viewport "
            f"content='width=device-width,initial-scale=1'><title>{escape(title)}</title>"
            f"<body style='font-family:sans-serif;max-width:28em;margin:1em auto;padding:0 1em'>"
            f"<h3>{escape(title)}</h3>{body}</body></html>")
    return Response(html, status=status, mimetype="text/html")


def _authorize_error(errcode: int, errmsg: str) -> Response:
    return _page("授权失败", f"<p>errcode {errcode}: {escape(errmsg)}</p>", status=400)


@bp.get("/connect/oauth2/authorize")
def authorize() -> Response:
    """open.weixin.qq.com's page: WeCom would identify the member silently (snsapi_base); here the
    tester picks who opens the page."""
    state, args = _state(), request.args
    if args.get("appid") != state.config.corp_id:
        return _authorize_error(40013, "invalid corpid")
    redirect_uri, oauth_state = args.get("redirect_uri", ""), args.get("state", "")
    if urlsplit(redirect_uri).scheme not in {"http", "https"}:
        return _authorize_error(50001, "redirect_uri is not a trusted domain")
    if args.get("response_type") != "code" or args.get("scope") not in _SCOPES:
        return _authorize_error(40058, "response_type must be code, scope snsapi_base or snsapi_privateinfo")
    if not _STATE.fullmatch(oauth_state):
        return _authorize_error(40058, "state must be a-zA-Z0-9, at most 128 bytes")
    with state.lock:
        people = [(u, m["name"]) for u, m in sorted(state.staff.items())]
        customers = sorted(state.contacts)[:1]
    links = "".join(f"<li><a href='{escape(_pick_url(redirect_uri, oauth_state, userid))}'>"
                    f"{escape(name)} ({escape(userid)})</a></li>" for userid, name in people)
    outsider = "".join(f"<p><a href='{escape(_pick_url(redirect_uri, oauth_state, e))}'>"
                       "以客户身份打开（非成员）</a></p>" for e in customers)
    return _page("沙箱：选择打开侧边栏的员工", f"<ul>{links or '<li>还没有员工</li>'}</ul>{outsider}")


def _pick_url(redirect_uri: str, oauth_state: str, userid: str) -> str:
    return "/connect/oauth2/authorize/pick?" + urlencode(
        {"redirect_uri": redirect_uri, "state": oauth_state, "userid": userid})


@bp.get("/connect/oauth2/authorize/pick")
def pick() -> Response:
    state, args = _state(), request.args
    with state.lock:
        code = state.issue_oauth_code(args.get("userid", ""))
    target = args.get("redirect_uri", "")
    if urlsplit(target).scheme not in {"http", "https"}:
        return _authorize_error(50001, "redirect_uri is not a trusted domain")
    joiner = "&" if "?" in target else "?"
    return redirect(f"{target}{joiner}{urlencode({'code': code, 'state': args.get('state', '')})}")


@bp.get("/_sandbox/jssdk.js")
def stub_script() -> Response:
    script = STUB_SCRIPT.read_text(encoding="utf-8").replace("__SANDBOX_ORIGIN__", request.host_url.rstrip("/"))
    return Response(script, mimetype="application/javascript")


def _cors(response: Response) -> Response:
    response.headers["Access-Control-Allow-Origin"] = "*"
    response.headers["Access-Control-Allow-Headers"] = "Content-Type"
    return response


@bp.route("/_sandbox/jssdk/verify", methods=["POST", "OPTIONS"])
def verify() -> Response:
    """``{kind: corp|agent, url, noncestr, timestamp, signature}`` → ``{ok}``: WeCom's check of a
    ``wx.config`` / ``wx.agentConfig`` signature against the tickets it issued."""
    if request.method == "OPTIONS":
        return _cors(Response(status=204))
    a: dict[str, Any] = request.get_json(silent=True) or {}
    state = _state()
    with state.lock:
        tickets = state.valid_tickets("agent" if a.get("kind") == "agent" else "corp")
    url = str(a.get("url", "")).split("#", 1)[0]
    expected = {hashlib.sha1(f"jsapi_ticket={t}&noncestr={a.get('noncestr')}&timestamp={a.get('timestamp')}"
                             f"&url={url}".encode()).hexdigest() for t in tickets}
    return _cors(jsonify(ok=a.get("signature") in expected))


@bp.route("/_sandbox/jssdk/calls", methods=["GET", "POST", "OPTIONS"])
def calls() -> Response:
    """POST: the stub reports one JS-SDK call; GET: every call so far (``?api=sendChatMessage``)."""
    state = _state()
    if request.method == "OPTIONS":
        return _cors(Response(status=204))
    if request.method == "POST":
        a = request.get_json(silent=True)
        if isinstance(a, dict):
            with state.lock:
                state.jssdk_calls.append({"api": str(a.get("api", "")), "args": a.get("args"),
                                          "page": str(a.get("page", "")), "ts": state.now()})
        return _cors(jsonify(ok=True))
    api = request.args.get("api")
    with state.lock:
        rows = [c for c in state.jssdk_calls if not api or c["api"] == api]
    return _cors(jsonify(rows))
