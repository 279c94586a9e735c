"""Helpers for the console tests: operators, a signed-in test client, a seeded audience."""

from __future__ import annotations

from typing import Any

from bot.web.console.accounts import add_operator

PASSWORD = "correct horse battery"


def add_user(db: Any, name: str, role: str, password: str = PASSWORD) -> None:
    with db.begin() as s:
        add_operator(s, name, role, password, actor="test")


def csrf(client: Any) -> str:
    """The session's CSRF token (a GET of any console page issues one)."""
    client.get("/console/login")
    with client.session_transaction() as session:
        return session["csrf"]


def sign_in(client: Any, name: str, password: str = PASSWORD, ip: str = "10.0.0.1") -> Any:
    return client.post("/console/login", data={"name": name, "password": password, "csrf_token": csrf(client)},
                       environ_base={"REMOTE_ADDR": ip})


def signed_in(app: Any, name: str, role: str) -> Any:
    client = app.test_client()
    add_user(app.extensions["scrm.db"], name, role)
    assert sign_in(client, name).status_code == 302
    return client
