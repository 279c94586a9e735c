"""Serving a WSGI app from a background thread on 127.0.0.1 (the sandbox, the demo's bot, tests)."""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from bot.core.privacy import mask_personal_data, masked_path
from bot.web.logpaths import route_words

access_log = logging.getLogger("werkzeug")


class PrivateRequestHandler(WSGIRequestHandler):
    """werkzeug's handler with an access log that names no one: the method, the path without its query
    string and with every segment that is not a word of the app's routes masked, the status; not the
    client's address. A request too broken to parse is logged without its request line."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        path = getattr(self, "path", None)  # unset when the request line itself was malformed
        shown = masked_path(path, self._route_words()) if isinstance(path, str) else "-"
        access_log.info('"%s %s" %s', getattr(self, "command", None) or "-", shown, getattr(code, "value", code))

    def log_error(self, format: str, *args: Any) -> None:
        # http.server's messages quote the raw request line ("Bad request syntax ('GET /…?q=…')").
        access_log.warning("refused a malformed request: %s", mask_personal_data(_no_quoted_line(format % args)))

    def log_message(self, format: str, *args: Any) -> None:
        access_log.info("%s", mask_personal_data(_no_quoted_line(format % args)))

    def _route_words(self) -> frozenset[str] | None:
        app = getattr(self.server, "app", None)
        return route_words(app) if hasattr(app, "url_map") else None


def _no_quoted_line(text: str) -> str:
    """http.server's error text without the request line it quotes."""
    return re.sub(r"\('.*'\)|\(\".*\"\)", "(…)", text)


class _QuietHandler(PrivateRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:
        if access_log.isEnabledFor(logging.DEBUG):
            super().log_request(*args, **kwargs)


class BackgroundServer:
    """``with BackgroundServer(app) as server: server.url`` — a threaded server on a free port."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server: BaseWSGIServer = make_server(host, port, app, threaded=True, request_handler=_QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="scrm-server", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> BackgroundServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
