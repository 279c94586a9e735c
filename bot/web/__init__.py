"""The web surface: the app factory, the webhook and inbox wiring, the REST API, health, and serving
(a background server for the sandbox, demo and tests; ``bot.web.wsgi`` for gunicorn)."""
