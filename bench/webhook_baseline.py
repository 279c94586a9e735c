"""The load bench's baseline: a bare Flask handler that does what any WeCom webhook must — verify the
signature, decrypt and parse with wechatpy — and answers an empty 200, storing nothing.

Served by gunicorn with the project's settings (bench/webhook_load.py starts it); its Token,
EncodingAESKey and CorpID come from WEBHOOK_LOAD_TOKEN, WEBHOOK_LOAD_AES_KEY and WEBHOOK_LOAD_CORP_ID.
"""

from __future__ import annotations

import os

from flask import Flask, request
from wechatpy.work import parse_message
from wechatpy.work.crypto import WeChatCrypto

crypto = WeChatCrypto(os.environ["WEBHOOK_LOAD_TOKEN"], os.environ["WEBHOOK_LOAD_AES_KEY"],
                      os.environ["WEBHOOK_LOAD_CORP_ID"])
app = Flask("webhook_baseline")


@app.post("/wecom/callback")
def receive() -> tuple[str, int]:
    args = request.args
    plain = crypto.decrypt_message(request.get_data(), args["msg_signature"], args["timestamp"], args["nonce"])
    parse_message(plain)
    return "", 200


@app.get("/healthz")
def health() -> tuple[str, int]:
    return "ok", 200
