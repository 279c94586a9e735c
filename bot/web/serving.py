"""Serving a WSGI app from a background thread on 127.0.0.1 (the sandbox, the demo's bot, tests)."""

from __future__ import annotations

import logging
import threading
from typing import Any

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from bot.core.privacy import masked_path

access_log = logging.getLogger("werkzeug")


class PrivateRequestHandler(WSGIRequestHandler):
    """werkzeug's handler with an access log that names no one: the method, the path without its query
    string and with its values masked (:func:`masked_path`), the status; not the client's address."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        access_log.info('"%s %s" %s', self.command, masked_path(self.path), getattr(code, "value", code))


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
