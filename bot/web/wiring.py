"""Database wiring per app, and the small always-on routes (health)."""

from __future__ import annotations

from flask import Flask, jsonify
from sqlalchemy import text

from bot.core.config import Settings
from bot.core.db import Database, open_database


def init_db(app: Flask, settings: Settings, upgrade: bool = True) -> Database:
    """The app's database; the app (serve, the demo, gunicorn) creates it when it is missing."""
    db = open_database(settings.database, create=True) if upgrade else Database(settings.database)
    app.extensions["scrm.db"] = db
    return db


def init_app(app: Flask) -> None:
    from bot.web import api
    from bot.web.console import channels, connectivity, greetings, rules, transfers  # noqa: F401 - their routes join the console blueprint
    from bot.web.console import groups as console_groups
    from bot.web.console import views as console

    api.init_app(app)
    console.init_app(app)
    console_groups.init_app(app)

    @app.get("/healthz")
    def healthz():  # type: ignore[no-untyped-def]
        with app.extensions["scrm.db"].engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return jsonify(status="ok")
