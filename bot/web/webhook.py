"""``GET/POST /wecom/callback``: verify, decrypt, store durably, then answer 200 — or 503 within
``webhook.store_timeout_seconds`` when the database cannot take the event (WeCom then retries).

Nothing else happens on the request thread: the worker is only woken. No freshness rule is
applied to ``timestamp`` because WeCom's retries resend the original, authentic request.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, current_app, request
from sqlalchemy.exc import DBAPIError

from bot.inbox.crypto import CallbackRejected, Keyring
from bot.inbox.store import StoreResult, insert_new_event, store_event
from bot.inbox.xmlsafe import UnsafeXML, parse_flat_xml

logger = logging.getLogger(__name__)
bp = Blueprint("wecom_callback", __name__)


@bp.errorhandler(CallbackRejected)
def _rejected(exc: CallbackRejected) -> Response:
    logger.warning("callback rejected (%s) from %s: %s", exc.status, request.remote_addr, exc.reason)
    return Response(exc.reason, status=exc.status, mimetype="text/plain")


@bp.get("/wecom/callback")
def verify_url() -> Response:
    signature, timestamp, nonce = _signature_params()
    # echostr is base64; a '+' sent unescaped arrives as a space after URL decoding.
    echostr = _query_args().get("echostr", "").replace(" ", "+")
    if not echostr:
        raise CallbackRejected(400, "missing echostr")
    plain = _keyring().verify_url(signature, timestamp, nonce, echostr)
    return Response(plain, status=200, mimetype="text/plain")


@bp.post("/wecom/callback")
def receive() -> Response:
    signature, timestamp, nonce = _signature_params()
    envelope = _parse(_read_body(), "envelope")
    encrypt = envelope.get("Encrypt")
    if not isinstance(encrypt, str) or not encrypt:
        raise CallbackRejected(400, "envelope has no <Encrypt>")
    plain = _keyring().decrypt(encrypt, signature, timestamp, nonce)
    fields = _parse(plain, "decrypted message")
    db = current_app.extensions["scrm.db"]
    timeout = current_app.extensions["scrm.settings"].webhook.store_timeout_seconds
    try:
        with db.raw_statement(timeout) as connection:
            new_id = insert_new_event(connection, db.engine.dialect, fields, plain)
        if new_id is not None:
            result = StoreResult(new_id, duplicate=False)
        else:  # a retry or a repeat: counted (and requeued where that is the rule) through the ORM
            with db.begin_bounded(timeout) as session:
                result = store_event(session, fields, plain)
    except DBAPIError as exc:
        # Locked or unreachable database (or, on PostgreSQL, a missing table: a ProgrammingError there):
        # answer before WeCom's ~5 s limit; its retry stores the event.
        logger.warning("callback not stored, answered 503 for WeCom to retry: %s", _db_reason(exc))
        return Response("inbox busy; retry", status=503, mimetype="text/plain")
    # Every callback is a row in the inbox (`scrm inbox`); a line for each would cost the busy hot path
    # more than its insert, so only repeats are logged at INFO.
    level = logging.INFO if result.duplicate else logging.DEBUG
    if logger.isEnabledFor(level):
        logger.log(level, "callback %s stored as inbox event %d%s",
                   "/".join(str(fields.get(k)) for k in ("MsgType", "Event", "ChangeType") if fields.get(k)),
                   result.event_id, " (duplicate delivery)" if result.duplicate else "")
    if not result.duplicate or result.requeued:
        _hand_over(result.event_id)
    return Response("", status=200, mimetype="text/plain")


def _hand_over(event_id: int) -> None:
    """To the RQ queue when Redis is configured; else, or when Redis is down, to this process's worker
    (if it runs one). Either way the stored row is the truth: a sweep or a poll finds it later."""
    tasks = current_app.extensions.get("scrm.tasks")
    if tasks is not None and tasks.enqueue_event(event_id):
        return
    if "scrm.worker" in current_app.extensions:
        current_app.extensions["scrm.worker"].wake()


def _db_reason(exc: DBAPIError) -> str:
    """The driver's first line ("database is locked", "canceling statement due to lock timeout"),
    never SQLAlchemy's full text, which quotes the parameters (the decrypted event)."""
    original = exc.orig if exc.orig is not None else exc
    return f"{type(original).__name__}: {str(original).splitlines()[0][:200] if str(original) else ''}"


def _keyring() -> Keyring:
    return current_app.extensions["scrm.keyring"]


def _query_args() -> Any:
    """The query parameters; raw bytes that are not UTF-8 (werkzeug decodes strictly) are a 400."""
    try:
        return request.args
    except UnicodeDecodeError:
        raise CallbackRejected(400, "query string is not UTF-8") from None


def _signature_params() -> tuple[str, str, str]:
    args = _query_args()
    values = [args.get(name, "") for name in ("msg_signature", "timestamp", "nonce")]
    if not all(values):
        raise CallbackRejected(400, "msg_signature, timestamp and nonce are required")
    if any(len(v) > 128 for v in values):
        raise CallbackRejected(400, "signature parameters too long")
    return values[0], values[1], values[2]


def _read_body() -> bytes:
    limit = current_app.extensions["scrm.settings"].webhook.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise CallbackRejected(413, f"body larger than {limit} bytes")
    body = request.stream.read(limit + 1)
    if len(body) > limit:
        raise CallbackRejected(413, f"body larger than {limit} bytes")
    if not body:
        raise CallbackRejected(400, "empty body")
    return body


def _parse(data: bytes | str, what: str) -> dict[str, Any]:
    try:
        if isinstance(data, bytes):
            data.decode("utf-8")
        return parse_flat_xml(data)
    except UnicodeDecodeError:
        raise CallbackRejected(400, f"{what} is not UTF-8") from None
    except UnsafeXML as exc:
        raise CallbackRejected(400, f"{what}: {exc}") from None
