"""gunicorn settings for the web app, shipped with the package:

    gunicorn -c python:bot.web.gunicorn_conf 'bot.web.wsgi:app'

``scrm serve --workers N`` runs exactly this (with its --host, --port and --workers on top). Any value
can be overridden on gunicorn's own command line or in ``GUNICORN_CMD_ARGS``; ``WEB_CONCURRENCY`` sets
the number of worker processes (gunicorn's convention). The app's settings still come from
``SCRM_CONFIG`` and ``SCRM_*`` variables.
"""

from __future__ import annotations

import gc
import os
from typing import Any

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# Threads let a worker answer other callbacks while one waits for the database (a write lock on
# SQLite, a round trip on PostgreSQL); gthread also keeps connections alive behind a proxy.
worker_class = "gthread"
threads = 4
keepalive = 5
# WeCom gives up after about 5 s and retries; a request running far past that is stuck, not slow.
timeout = 30
graceful_timeout = 10
# Each worker builds its own app (engine, inbox worker thread) after the fork: nothing shared.
preload_app = False
# The heartbeat file on tmpfs where there is one (a disk-backed /tmp can stall workers).
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
# Request lines would carry the signature parameters; errors only, to stderr.
accesslog = None
errorlog = "-"
loglevel = "warning"
proc_name = "scrm-web"


def post_worker_init(worker: Any) -> None:
    """Once a worker has built the app, its long-lived objects (modules, classes, mappers) are set aside
    from the garbage collector (``gc.freeze``): a full collection walked the app's 131,000 tracked objects
    for 30–65 ms, with every request of the worker waiting (0.01 ms after the freeze)."""
    gc.freeze()
