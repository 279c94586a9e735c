"""The Flask app factory: it only wires subsystems together."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from typing import Any

from flask import Flask
from flask.json.provider import DefaultJSONProvider
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.routing import IntegerConverter

from bot.core import jsonsafe
from bot.core.clock import Clock, system_clock
from bot.core.config import Settings, install_secret_redaction
from bot.core.db import MAX_ROW_ID
from bot.startup import RuleReloader, load_settings
from bot.web import api, inbox, sidebar, wiring


class RowIdConverter(IntegerConverter):
    """``<int:…>`` in every route: ASCII digits up to the largest BIGINT, else 404 (a larger number overflowed
    the database driver: a 500)."""

    regex = r"[0-9]+"

    def __init__(self, map: Any, fixed_digits: int = 0, min: int | None = None, max: int | None = None,
                 signed: bool = False) -> None:
        super().__init__(map, fixed_digits, min, MAX_ROW_ID if max is None else max, signed)


class BoundedJSONProvider(DefaultJSONProvider):
    """``request.get_json()`` everywhere refuses a body nested deeper than any we accept (a ValueError:
    ``silent=True`` gives None, a 400) before the parser recurses into it."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return jsonsafe.loads(s, **kwargs)


def create_app(
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    config_file: str | os.PathLike[str] | None = None,
    *,
    settings: Settings | None = None,
    environ: Mapping[str, str] | None = None,
    start_worker: bool | None = None,
    upgrade_db: bool = True,
    clock: Clock = system_clock,
) -> Flask:
    """Build the web app. Settings load as defaults → TOML → env → ``overrides``; ``environ``
    replaces ``os.environ`` (the demo passes ``{}`` so a user's SCRM_* vars cannot redirect it);
    ``clock`` is what the app's requests take as "now" (tests replace ``app.extensions["scrm.clock"]``)."""
    settings = settings or load_settings(config_file, overrides, environ=environ)
    install_secret_redaction(settings)

    app = Flask(__name__)
    app.json = BoundedJSONProvider(app)
    app.url_map.converters["int"] = RowIdConverter
    app.config["SECRET_KEY"] = settings.app.secret_key or secrets.token_hex(32)
    app.config["PROPAGATE_EXCEPTIONS"] = False
    # No page or API takes a larger body (the order API's own bound); the webhook reads its own, smaller.
    app.config["MAX_CONTENT_LENGTH"] = api.MAX_BODY_BYTES
    app.extensions["scrm.settings"] = settings
    app.extensions["scrm.clock"] = clock
    if settings.app.trusted_proxies:
        # Behind a TLS-terminating proxy every request came from the proxy's address: the sign-in throttle
        # (per name and address) then let anyone lock an operator out, and the audit log named the proxy.
        n = settings.app.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n)  # type: ignore[method-assign]

    db = wiring.init_db(app, settings, upgrade=upgrade_db)
    # The rule lists operators edited in the console replace the config file's (the default seed).
    app.extensions["scrm.rules"] = RuleReloader(db, settings)
    inbox.init_app(app, settings, db, start_worker=start_worker)
    wiring.init_app(app)
    sidebar.init_app(app, settings)
    return app
