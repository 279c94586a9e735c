"""``/_sandbox/*`` for channels and hand-overs: a customer scans a channel code, a member leaves,
a customer refuses a transfer, the 24 hours pass; and read-outs of contact ways and transfers."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from bot.sandbox import scenario
from bot.sandbox.api_channels import contact_ways
from bot.sandbox.api_transfer import add_group, handover_groups, lose, refuse, resign, settle, transfers
from bot.sandbox.state import SandboxState, WeComError, random_id

bp = Blueprint("sandbox_handover", __name__, url_prefix="/_sandbox")


def _state() -> SandboxState:
    return current_app.extensions["sandbox.state"]


def _args() -> dict[str, Any]:
    data = request.get_json(silent=True)
    return data if isinstance(data, dict) else {}


@bp.errorhandler(WeComError)
def _error(exc: WeComError) -> tuple[Response, int]:
    return jsonify(errcode=exc.errcode, errmsg=exc.errmsg), 400


@bp.errorhandler(KeyError)
def _missing(exc: KeyError) -> tuple[Response, int]:
    return jsonify(errcode=40058, errmsg=f"missing field {exc}"), 400


@bp.get("/contact_ways")
def list_ways() -> Response:
    with _state().lock:
        return jsonify(list(contact_ways(_state()).values()))


@bp.post("/contact_ways/import")
def made_elsewhere() -> Response:
    """A 「联系我」 code made by another app or tool: ``{"state", "user": [...], "remark"?}``."""
    state, a = _state(), _args()
    with state.lock:
        for userid in a["user"]:
            state.require_staff(userid)
        config_id = random_id("", 32).lower()
        way = {"config_id": config_id, "type": 1 if len(a["user"]) == 1 else 2, "scene": 2,
               "remark": a.get("remark", ""), "skip_verify": True, "state": a.get("state", ""), "user": a["user"],
               "party": [], "is_temp": False, "create_time": int(state.now()),
               "qr_code": f"https://wework.qpic.cn/wwpic/{random_id('', 24)}/0"}
        contact_ways(state)[config_id] = way
        return jsonify(way)


@bp.post("/contact_ways/<config_id>/scan")
def scan(config_id: str) -> Response:
    """A WeChat user scans the code: WeCom picks one of its members (in turn) and the add arrives
    with the code's state. ``{"name", "external_userid"?, "welcome"?}``."""
    state, a = _state(), _args()
    with state.lock:
        way = contact_ways(state).get(config_id)
        if way is None:
            raise WeComError(41044, "invalid config_id")
        if not way["user"]:
            raise WeComError(40058, "the contact way has no member")
        turn = way.setdefault("scans", 0)
        way["scans"] = turn + 1
        userid = way["user"][turn % len(way["user"])]
    return jsonify(scenario.customer_adds(state, {**a, "userid": userid, "state": way["state"]}))


@bp.post("/staff/<userid>/resign")
def staff_resign(userid: str) -> Response:
    return jsonify(resign(_state(), userid, _args().get("at")))


@bp.post("/handover/groups")
def handover_group() -> Response:
    """A customer group owned by ``owner`` (for group hand-over): ``{"owner", "name"?, "chat_id"?}``."""
    return jsonify(add_group(_state(), _args()))


@bp.get("/handover/groups")
def handover_group_list() -> Response:
    with _state().lock:
        return jsonify([{k: g[k] for k in ("chat_id", "name", "owner", "status")}
                        for g in handover_groups(_state()).values()])


@bp.post("/transfers/refuse")
def transfer_refuse() -> Response:
    a = _args()
    return jsonify(refuse(_state(), a["external_userid"], a.get("reason", "customer_refused"),
                          bool(a.get("callbacks", True))))


@bp.post("/transfers/lose")
def transfer_lose() -> Response:
    """WeCom has no record of the customer's waiting transfer any more (on-job result status 5)."""
    return jsonify(lose(_state(), _args()["external_userid"]))


@bp.post("/transfers/settle")
def transfer_settle() -> Response:
    a = _args()
    return jsonify(settle(_state(), bool(a.get("force")), bool(a.get("callbacks", True))))


@bp.get("/transfers")
def transfer_list() -> Response:
    with _state().lock:
        return jsonify(list(transfers(_state())))
