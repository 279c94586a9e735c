"""The table of sandbox endpoints: (HTTP method, path under /cgi-bin/) → function."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bot.sandbox.state import SandboxState

Endpoint = Callable[["Call"], dict[str, Any]]


@dataclass
class Call:
    """One API request as an endpoint sees it."""

    state: SandboxState
    role: str
    params: dict[str, str]
    body: dict[str, Any]

    def require(self, *names: str) -> list[Any]:
        from bot.sandbox.state import WeComError

        values = []
        for name in names:
            value = self.body.get(name, self.params.get(name))
            if value in (None, "", []):
                raise WeComError(41035 if name.endswith("userid") else 40058, f"missing or empty field: {name}")
            values.append(value)
        return values


ENDPOINTS: dict[str, tuple[str, Endpoint]] = {}


def endpoint(method: str, path: str) -> Callable[[Endpoint], Endpoint]:
    def register(func: Endpoint) -> Endpoint:
        ENDPOINTS[path] = (method.upper(), func)
        return func

    return register
