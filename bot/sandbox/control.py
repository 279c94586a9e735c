"""``/_sandbox/*``: what a test or the demo says happened in WeCom ("a customer adds staff X via
channel Y", "the customer writes to kf"), plus read-outs of recorded calls and deliveries."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from bot.sandbox import scenario
from bot.sandbox.delivery import deliver, redeliver, verify_url
from bot.sandbox.state import SandboxState, WeComError

bp = Blueprint("sandbox_control", __name__, url_prefix="/_sandbox")


def _state() -> SandboxState:
    from flask import current_app

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


@bp.post("/staff")
def add_staff() -> Response:
    a = _args()
    with _state().lock:
        return jsonify(_state().add_staff(a["userid"], a.get("name", "")))


@bp.post("/seed")
def seed() -> Response:
    """Bulk state without callbacks: ``{"staff": [{userid,name}], "contacts": [{userid, external_userid,
    name, state?, created_at?}], "kf_accounts": [{open_kfid, name}]}``."""
    return jsonify(scenario.seed(_state(), _args()))


@bp.post("/contacts/add")
def contact_add() -> Response:
    return jsonify(scenario.customer_adds(_state(), _args()))


@bp.post("/contacts/archive-approved")
def contact_archive_approved() -> Response:
    return jsonify(scenario.customer_approves_archive(_state(), _args()))


@bp.post("/contacts/edit")
def contact_edit() -> Response:
    return jsonify(scenario.staff_edits(_state(), _args()))


@bp.post("/contacts/delete")
def contact_delete() -> Response:
    return jsonify(scenario.contact_deleted(_state(), _args()))


@bp.post("/kf/accounts")
def kf_account() -> Response:
    return jsonify(scenario.kf_account(_state(), _args()))


@bp.post("/kf/text")
def kf_text() -> Response:
    return jsonify(scenario.kf_customer_text(_state(), _args()))


@bp.post("/kf/page_limit")
def kf_page_limit() -> Response:
    """Messages per kf/sync_msg page (WeCom "may return fewer" than asked)."""
    return _page_limit("kf_page_limit", 1000)


@bp.post("/contacts/page_limit")
def follow_page_limit() -> Response:
    """follow_user entries per externalcontact/get page (WeCom's is 500)."""
    return _page_limit("follow_page_limit", 500)


def _page_limit(attribute: str, default: int) -> Response:
    state = _state()
    with state.lock:
        setattr(state, attribute, max(1, int(_args().get("limit", default))))
        return jsonify(limit=getattr(state, attribute))


@bp.post("/tags")
def corp_tag() -> Response:
    return jsonify(scenario.corp_tag_changed(_state(), _args()))


@bp.post("/moments")
def moment() -> Response:
    return jsonify(scenario.moment_posted(_state(), _args()))


@bp.get("/contacts/<external_userid>")
def contact_view(external_userid: str) -> Response:
    state = _state()
    with state.lock:
        return jsonify(contact=state.contacts.get(external_userid),
                       follows=list(state.follows.get(external_userid, {}).values()))


@bp.get("/sent")
def sent() -> Response:
    """What reached customers: welcomes, kf messages, app messages, mass messages."""
    state = _state()
    with state.lock:
        return jsonify(welcomes=state.welcomes_sent, kf=state.kf_sent, app_messages=state.app_messages,
                       mass_messages=list(state.mass_messages.values()))


@bp.post("/mass_messages/<msgid>/confirm")
def confirm_mass_message(msgid: str) -> Response:
    """The member taps send in the WeCom client. ``capped``: customers WeCom then refuses because
    they already received a mass message this period (result status 3)."""
    state, a = _state(), _args()
    with state.lock:
        message = state.mass_messages.get(msgid)
        if message is None:
            raise WeComError(40058, "invalid msgid")
        capped = set(a.get("capped", []))
        message["confirmed"] = {e: (3 if e in capped else 1) for e in message["external_userid"]}
        message["confirmed_at"] = int(state.now())
        return jsonify(message["confirmed"])


@bp.post("/kf/enter_session")
def kf_enter() -> Response:
    return jsonify(scenario.kf_enter_session(_state(), _args()))


@bp.post("/kf/servicer")
def kf_servicer() -> Response:
    return jsonify(scenario.kf_servicer_session(_state(), _args()))


@bp.post("/callback")
def raw_callback() -> Response:
    """Deliver any event: ``{"fields": {...}}`` (ToUserName and CreateTime are filled in)."""
    state, a = _state(), _args()
    fields = {"ToUserName": state.config.corp_id, "CreateTime": int(state.now()), **a.get("fields", {})}
    return jsonify(deliver(state, fields, a.get("url")))


@bp.post("/deliveries/<int:delivery_id>/redeliver")
def resend(delivery_id: int) -> Response:
    return jsonify(redeliver(_state(), delivery_id))


@bp.post("/verify_url")
def verify() -> Response:
    return jsonify(verify_url(_state(), _args().get("url")))


@bp.post("/faults")
def faults() -> Response:
    """Make the next ``count`` calls to ``path`` answer ``errcode`` (e.g. 45009, -1, 40014); with ``after``
    true, each call is done first and then answered with the error (WeCom busy after it made the task)."""
    a, state = _args(), _state()
    with state.lock:
        queue = state.faults_after if a.get("after") else state.faults
        queue[a["path"]].extend([int(a["errcode"])] * int(a.get("count", 1)))
    return jsonify(ok=True)


@bp.post("/delays")
def delays() -> Response:
    """Make the next ``count`` calls to ``path`` answer only after ``seconds``. ``mode`` "late"
    (default): WeCom did the call and the answer is late; "drop": the call never reached WeCom."""
    a, state = _args(), _state()
    mode = str(a.get("mode", "late"))
    if mode not in ("late", "drop"):
        raise WeComError(40058, "mode is late or drop")
    with state.lock:
        state.delays[a["path"]].extend([(float(a["seconds"]), mode)] * int(a.get("count", 1)))
    return jsonify(ok=True)


@bp.post("/tokens/expire")
def expire_tokens() -> Response:
    with _state().lock:
        return jsonify(expired=_state().expire_tokens())


@bp.post("/clock/advance")
def advance_clock() -> Response:
    state = _state()
    with state.lock:
        state.offset += float(_args().get("seconds", 0))
        return jsonify(now=state.now())


@bp.get("/calls")
def calls() -> Response:
    state, path = _state(), request.args.get("path")
    with state.lock:
        rows = [c for c in state.calls if not path or c["path"] == path]
    return jsonify(rows)


@bp.get("/deliveries")
def deliveries() -> Response:
    with _state().lock:
        return jsonify(list(_state().deliveries))


@bp.get("/state")
def summary() -> Response:
    return jsonify(scenario.summary(_state()))
