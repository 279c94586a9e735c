"""Encrypted callbacks, delivered to the bot the way Tencent delivers them: the event XML is
encrypted into ``<xml><ToUserName/><Encrypt/><AgentID/></xml>``, signed in the query string, and
POSTed; anything but HTTP 200 within the timeout is retried (3 retries after the first try)."""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any
from xml.sax.saxutils import escape

import requests
import xmltodict
from wechatpy.work.crypto import WeChatCrypto

from bot.sandbox.state import SandboxState

logger = logging.getLogger(__name__)


def event_xml(fields: dict[str, Any]) -> str:
    """Render a flat dict as WeCom's plaintext event XML (CDATA strings, bare numbers)."""
    parts = ["<xml>"]
    for key, value in fields.items():
        if isinstance(value, int) and not isinstance(value, bool):
            parts.append(f"<{key}>{value}</{key}>")
        else:
            text = str(value).replace("]]>", "]]]]><![CDATA[>")
            parts.append(f"<{key}><![CDATA[{text}]]></{key}>")
    parts.append("</xml>")
    return "".join(parts)


def encrypt_callback(state: SandboxState, plaintext: str, timestamp: str, nonce: str) -> tuple[str, str]:
    """Returns (envelope XML body, msg_signature)."""
    cfg = state.config
    crypto = WeChatCrypto(cfg.token, cfg.encoding_aes_key, cfg.corp_id)
    reply = xmltodict.parse(crypto.encrypt_message(plaintext, nonce, timestamp))["xml"]
    body = (f"<xml><ToUserName><![CDATA[{escape(cfg.corp_id)}]]></ToUserName>"
            f"<Encrypt><![CDATA[{reply['Encrypt']}]]></Encrypt>"
            f"<AgentID><![CDATA[{cfg.agent_id}]]></AgentID></xml>")
    return body, reply["MsgSignature"]


def deliver(state: SandboxState, fields: dict[str, Any], url: str | None = None) -> dict[str, Any]:
    """Encrypt and POST one event; returns the delivery record (also kept in ``state.deliveries``)."""
    cfg = state.config
    target = url or cfg.callback_url
    plaintext = event_xml(fields)
    timestamp, nonce = str(int(state.now())), str(secrets.randbelow(10**10))
    body, signature = encrypt_callback(state, plaintext, timestamp, nonce)
    query = {"msg_signature": signature, "timestamp": timestamp, "nonce": nonce}
    with state.lock:
        record: dict[str, Any] = {"id": len(state.deliveries) + 1, "url": target, "event": _kind(fields),
                                  "attempts": [], "delivered": False}
        state.deliveries.append(record)
        state.delivery_bodies[record["id"]] = (query, body)
    return _post(state, record, query, body)


def redeliver(state: SandboxState, delivery_id: int) -> dict[str, Any]:
    """Send a delivery's exact bytes again, as Tencent's retry of an unanswered callback does."""
    with state.lock:
        if delivery_id not in state.delivery_bodies:
            raise KeyError(f"delivery {delivery_id}")
        query, body = state.delivery_bodies[delivery_id]
        original = state.deliveries[delivery_id - 1]
        record: dict[str, Any] = {"id": len(state.deliveries) + 1, "url": original["url"], "event": original["event"],
                                  "attempts": [], "delivered": False, "redelivery_of": delivery_id}
        state.deliveries.append(record)
        state.delivery_bodies[record["id"]] = (query, body)
    return _post(state, record, query, body)


def _post(state: SandboxState, record: dict[str, Any], query: dict[str, str], body: str) -> dict[str, Any]:
    cfg, target = state.config, record["url"]
    if not target:
        record["attempts"].append({"result": "no callback_url configured"})
        return record
    for attempt in range(1 + cfg.callback_retries):
        if attempt:
            time.sleep(cfg.callback_retry_delay)
        started = time.monotonic()
        try:
            response = requests.post(target, params=query, data=body.encode("utf-8"), timeout=cfg.callback_timeout,
                                     headers={"Content-Type": "text/xml; charset=utf-8"})
            result: Any = response.status_code
        except requests.Timeout:
            result = "timeout"
        except requests.ConnectionError as exc:
            result = f"connection error: {type(exc).__name__}"
        record["attempts"].append({"result": result, "seconds": round(time.monotonic() - started, 3)})
        if result == 200:
            record["delivered"] = True
            break
        logger.info("callback %s to %s: attempt %d got %s", record["event"], target, attempt + 1, result)
    return record


def verify_url(state: SandboxState, url: str | None = None) -> dict[str, Any]:
    """Do the admin console's 'save callback URL' check: GET with an encrypted echostr."""
    cfg = state.config
    target = url or cfg.callback_url
    echo_plain = str(secrets.randbelow(10**19))
    timestamp, nonce = str(int(state.now())), str(secrets.randbelow(10**10))
    crypto = WeChatCrypto(cfg.token, cfg.encoding_aes_key, cfg.corp_id)
    reply = xmltodict.parse(crypto.encrypt_message(echo_plain, nonce, timestamp))["xml"]
    response = requests.get(target, params={"msg_signature": reply["MsgSignature"], "timestamp": timestamp,
                                            "nonce": nonce, "echostr": reply["Encrypt"]}, timeout=1.0)
    return {"status": response.status_code, "ok": response.status_code == 200 and response.text == echo_plain,
            "answer": response.text[:200]}


def _kind(fields: dict[str, Any]) -> str:
    return "/".join(str(fields[k]) for k in ("MsgType", "Event", "ChangeType") if fields.get(k))
