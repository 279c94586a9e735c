"""``GET/POST /wecom/callback``: verify, decrypt, store durably, then answer 200 — or 503 within
``webhook.store_timeout_seconds`` when the database cannot take the event (WeCom then retries).

Nothing else happens on the request thread: the worker is only woken. No freshness rule is
applied to ``timestamp`` because WeCom's retries resend the original, authentic request.

The endpoint is a plain WSGI application in front of Flask (:func:`install`). It is the busiest
path of the product, and Flask's per-request machinery (request context, URL adapter, session,
Response object) cost more CPU than verifying, decrypting, parsing and storing a callback
together (docs/performance.md, "Webhook under load"). Every other path goes on to Flask; the Flask
app is only where the endpoint finds its parts (keyring, database, settings, queue, worker), read
on each request so that what a test or the wiring puts there is what is used.
"""

from __future__ import annotations

import codecs
import logging
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from flask import Flask
from sqlalchemy.exc import DBAPIError

from bot.inbox.crypto import CallbackRejected
from bot.inbox.store import StoreResult, insert_new_event, store_event
from bot.inbox.xmlsafe import UnsafeXML, parse_flat_xml
from bot.web.logpaths import add_path_words

logger = logging.getLogger(__name__)

PATH = "/wecom/callback"
_TEXT = ("Content-Type", "text/plain; charset=utf-8")
_ALLOWED = "GET, HEAD, OPTIONS, POST"


def install(app: Flask) -> None:
    """Answer ``/wecom/callback`` ahead of Flask's routing; everything else goes on to the app."""
    app.wsgi_app = CallbackEndpoint(app, app.wsgi_app)  # type: ignore[method-assign]
    add_path_words(app, PATH)  # no Flask route names it: the access log masked it as "/***/***"


class CallbackEndpoint:
    def __init__(self, app: Flask, inner: WSGIApplication) -> None:
        self._app = app
        self._inner = inner

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Any:
        if environ.get("PATH_INFO") != PATH:
            return self._inner(environ, start_response)
        method = environ.get("REQUEST_METHOD", "")
        headers: list[tuple[str, str]] = []
        try:
            if method == "POST":
                status, text = self._receive(environ)
            elif method in ("GET", "HEAD"):
                status, text = 200, self._verify_url(environ)
            elif method == "OPTIONS":
                status, text = 200, ""
                headers.append(("Allow", _ALLOWED))
            else:
                status, text = 405, "use GET (URL verification) or POST (callbacks)"
                headers.append(("Allow", _ALLOWED))
        except CallbackRejected as exc:
            logger.warning("callback rejected (%s) from %s: %s", exc.status, environ.get("REMOTE_ADDR"), exc.reason)
            status, text = exc.status, exc.reason
        except Exception:  # noqa: BLE001 - answered like Flask would: logged, 500, WeCom retries
            logger.exception("callback failed, answered 500 for WeCom to retry")
            status, text = 500, "internal error; the server log has the details"
        body = text.encode("utf-8")
        headers += [_TEXT, ("Content-Length", str(len(body)))]  # for HEAD too: the length GET would send
        start_response(f"{status} {HTTPStatus(status).phrase}", headers)
        return [b"" if method == "HEAD" else body]

    def _verify_url(self, environ: WSGIEnvironment) -> str:
        args = _query_args(environ)
        signature, timestamp, nonce = _signature_params(args)
        # echostr is base64; a '+' sent unescaped arrives as a space after URL decoding.
        echostr = args.get("echostr", "").replace(" ", "+")
        if not echostr:
            raise CallbackRejected(400, "missing echostr")
        return self._app.extensions["scrm.keyring"].verify_url(signature, timestamp, nonce, echostr)

    def _receive(self, environ: WSGIEnvironment) -> tuple[int, str]:
        extensions = self._app.extensions
        settings = extensions["scrm.settings"].webhook
        signature, timestamp, nonce = _signature_params(_query_args(environ))
        envelope = _parse(_read_body(environ, settings.max_body_bytes), "envelope")
        encrypt = envelope.get("Encrypt")
        if not isinstance(encrypt, str) or not encrypt:
            raise CallbackRejected(400, "envelope has no <Encrypt>")
        plain = extensions["scrm.keyring"].decrypt(encrypt, signature, timestamp, nonce)
        fields = _parse(plain, "decrypted message")
        db = extensions["scrm.db"]
        timeout = settings.store_timeout_seconds
        try:
            with db.raw_statement(timeout) as connection:
                new_id = insert_new_event(connection, db.engine.dialect, fields, plain)
            if new_id is not None:
                result = StoreResult(new_id, duplicate=False)
            else:  # a retry or a repeat: counted (and requeued where that is the rule) through the ORM
                with db.begin_bounded(timeout) as session:
                    result = store_event(session, fields, plain)
        except DBAPIError as exc:
            # Locked or unreachable database (or, on PostgreSQL, a missing table: a ProgrammingError
            # there): answer before WeCom's ~5 s limit; its retry stores the event.
            logger.warning("callback not stored, answered 503 for WeCom to retry: %s", _db_reason(exc))
            return 503, "inbox busy; retry"
        # Every callback is a row in the inbox (`scrm inbox`); a line for each would cost the busy hot
        # path more than its insert, so only repeats are logged at INFO.
        level = logging.INFO if result.duplicate else logging.DEBUG
        if logger.isEnabledFor(level):
            logger.log(level, "callback %s stored as inbox event %d%s",
                       "/".join(str(fields.get(k)) for k in ("MsgType", "Event", "ChangeType") if fields.get(k)),
                       result.event_id, " (duplicate delivery)" if result.duplicate else "")
        if not result.duplicate or result.requeued:
            self._hand_over(result.event_id, urgent=bool(fields.get("WelcomeCode")))
        return 200, ""

    def _hand_over(self, event_id: int, urgent: bool = False) -> None:
        """To the RQ queue when Redis is configured (``urgent``: at its front, for a welcome code's 20 s);
        else, or when Redis is down, to this process's worker (if it runs one). Either way the stored row
        is the truth: a sweep or a poll finds it."""
        extensions = self._app.extensions
        tasks = extensions.get("scrm.tasks")
        if tasks is not None and tasks.enqueue_event(event_id, urgent=urgent):
            return
        if "scrm.worker" in extensions:
            extensions["scrm.worker"].wake()


def _db_reason(exc: DBAPIError) -> str:
    """The driver's first line ("database is locked", "canceling statement due to lock timeout"),
    never SQLAlchemy's full text, which quotes the parameters (the decrypted event)."""
    original = exc.orig if exc.orig is not None else exc
    return f"{type(original).__name__}: {str(original).splitlines()[0][:200] if str(original) else ''}"


def _query_args(environ: WSGIEnvironment) -> dict[str, str]:
    """The query parameters, the first of each name, decoded as werkzeug decodes them: the server hands
    the raw bytes over as Latin-1 (PEP 3333), and raw bytes that are not UTF-8 are a 400; a %-escape
    that is not UTF-8 stays as its escape (an operator's own parameter in the callback URL, say, in GBK)."""
    try:
        text = environ.get("QUERY_STRING", "").encode("latin-1").decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors=_QUOTE_BACK)
    except UnicodeError:
        raise CallbackRejected(400, "query string is not UTF-8") from None
    args: dict[str, str] = {}
    for name, value in pairs:
        args.setdefault(name, value)
    return args


def _quote_back(error: UnicodeError) -> tuple[str, int]:
    if not isinstance(error, UnicodeDecodeError):
        raise error
    return "".join(f"%{byte:02X}" for byte in error.object[error.start:error.end]), error.end


_QUOTE_BACK = "scrm.webhook.quote_back"
codecs.register_error(_QUOTE_BACK, _quote_back)


def _signature_params(args: dict[str, str]) -> tuple[str, str, str]:
    values = [args.get(name, "") for name in ("msg_signature", "timestamp", "nonce")]
    if not all(values):
        raise CallbackRejected(400, "msg_signature, timestamp and nonce are required")
    if any(len(v) > 128 for v in values):
        raise CallbackRejected(400, "signature parameters too long")
    return values[0], values[1], values[2]


def _read_body(environ: WSGIEnvironment, limit: int) -> bytes:
    """At most ``limit`` bytes: a declared larger body is refused unread. Without a Content-Length the
    body is read only when the server marks the input as terminated (chunked, under gunicorn)."""
    declared = _content_length(environ)
    if declared is not None and declared > limit:
        raise CallbackRejected(413, f"body larger than {limit} bytes")
    stream = environ.get("wsgi.input")
    if stream is None or (declared is None and not environ.get("wsgi.input_terminated")):
        body = b""
    else:
        try:
            body = _read_up_to(stream, limit + 1 if declared is None else declared)
        except Exception as exc:  # noqa: BLE001 - whatever the server's reader raises is the client's doing
            # gunicorn raises its framing errors here (a bad chunk size, a missing chunk terminator: its own
            # ParseException classes; a client that stops mid-body: NoMoreData), werkzeug ClientDisconnected.
            # Their text quotes the client's bytes, so only the type is logged.
            raise CallbackRejected(400, f"body could not be read ({type(exc).__name__})") from None
    if len(body) > limit:
        raise CallbackRejected(413, f"body larger than {limit} bytes")
    if not body:
        raise CallbackRejected(400, "empty body")
    return body


def _content_length(environ: WSGIEnvironment) -> int | None:
    """The declared length; none for a chunked body, whatever Content-Length says (as werkzeug reads it)."""
    if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        return None
    try:
        value = int(environ.get("CONTENT_LENGTH") or "")
    except ValueError:
        return None
    return value if value >= 0 else None


def _read_up_to(stream: Any, size: int) -> bytes:
    """``size`` bytes, or fewer when the client stops sending: one read may return a part only."""
    parts: list[bytes] = []
    left = size
    while left > 0:
        chunk = stream.read(left)
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _parse(data: bytes | str, what: str) -> dict[str, Any]:
    try:
        if isinstance(data, bytes):
            data.decode("utf-8")
        return parse_flat_xml(data)
    except UnicodeDecodeError:
        raise CallbackRejected(400, f"{what} is not UTF-8") from None
    except UnsafeXML as exc:
        raise CallbackRejected(400, f"{what}: {exc}") from None
