"""Helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import csv
import os
import secrets
import string
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import requests

from bot.core.config import TiersSettings
from bot.sandbox import SandboxConfig, SandboxState
from bot.sandbox.delivery import encrypt_callback, event_xml
from segments.policy import TierPolicy

PG_URL = os.environ.get("SCRM_TEST_DATABASE_URL", "")
REDIS_URL = os.environ.get("SCRM_TEST_REDIS_URL", "")
TZ = ZoneInfo("Asia/Shanghai")
POLICY = TierPolicy.from_settings(TiersSettings())


def random_text(length: int) -> str:
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(length))


def secret_for(corp: SandboxConfig, role: str) -> str:
    return next(s for s, r in corp.secrets.items() if r == role)


class Callbacks:
    """Builds callbacks the way WeCom does (via the sandbox's encryption) and posts them."""

    def __init__(self, client: Any, corp: SandboxConfig) -> None:
        self.client, self.corp = client, corp
        self.state = SandboxState(corp)

    def sign(self, fields: dict[str, Any], timestamp: str = "1700000000", nonce: str = "123456") -> tuple[dict, str]:
        plaintext = fields if isinstance(fields, str) else event_xml(fields)
        body, signature = encrypt_callback(self.state, plaintext, timestamp, nonce)
        return {"msg_signature": signature, "timestamp": timestamp, "nonce": nonce}, body

    def post(self, fields: dict[str, Any] | str, **kwargs: Any) -> Any:
        query, body = self.sign(fields, **kwargs)
        return self.client.post("/wecom/callback", query_string=query, data=body.encode("utf-8"),
                                content_type="text/xml")


def contact_event(change_type: str = "add_external_contact", **extra: Any) -> dict[str, Any]:
    fields = {"ToUserName": "corp", "FromUserName": "sys", "CreateTime": 1403610513, "MsgType": "event",
              "Event": "change_external_contact", "ChangeType": change_type, "UserID": "zhangsan",
              "ExternalUserID": "woAJ2GCAAAXtWyujaWJHDDGi0mAAAA"}
    fields.update(extra)
    return fields


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["order_id", "external_userid", "amount", "paid_at", "status"])
        writer.writeheader()
        for row in rows:
            writer.writerow({"status": "paid", **row})


def control(sandbox, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
    response = requests.post(f"{sandbox.url}/_sandbox/{path}", json=payload or {}, timeout=30)
    response.raise_for_status()
    return response.json()


def read(sandbox, what: str, **params: Any) -> Any:
    response = requests.get(f"{sandbox.url}/_sandbox/{what}", params=params, timeout=10)
    response.raise_for_status()
    return response.json()
