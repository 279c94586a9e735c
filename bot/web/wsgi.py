"""WSGI entry point for gunicorn: ``gunicorn -w 4 'bot.web.wsgi:app'``.

Settings come from ``$SCRM_CONFIG`` and ``SCRM_*`` env vars. Each process also runs an inbox
worker thread unless ``SCRM_WORKER_ENABLED=false``; several are safe (events are claimed with a
conditional UPDATE), or run the worker separately with ``scrm worker``.
"""

from bot.web.app import create_app

app = create_app()
