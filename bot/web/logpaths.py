"""Request paths as log lines may show them: the route's pattern (``/api/v1/customers/<path:external_userid>``)
where a route matched, else the path with every segment that is not a word of the app's routes masked."""

from __future__ import annotations

from typing import Any

from flask import current_app, request

from bot.core.privacy import masked_path

_WORDS = "scrm.route_words"


_PATHS = "scrm.unrouted_paths"


def add_path_words(app: Any, path: str) -> None:
    """A path the app answers outside Flask's routing (the webhook): its words are no one's data either."""
    app.extensions.setdefault(_PATHS, []).append(path)
    app.extensions.pop(_WORDS, None)


def route_words(app: Any) -> frozenset[str]:
    """The literal segments of the app's routes (``api``, ``v1``, ``customers``…), computed once per app."""
    words = app.extensions.get(_WORDS)
    if words is None:
        paths = [rule.rule for rule in app.url_map.iter_rules()] + app.extensions.get(_PATHS, [])
        words = frozenset(part for path in paths for part in path.split("/") if part and "<" not in part)
        app.extensions[_WORDS] = words
    return words


def logged_path() -> str:
    """The current request's path for a log line."""
    if request.url_rule is not None:
        return request.url_rule.rule
    return masked_path(request.path, route_words(current_app))
