"""Published vectors (wechatpy's test suite, WECOM.md §1.5 Set C) through the real webhook."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from bot.models import InboxEvent
from bot.web.app import create_app

TOKEN = "123456"
AES_KEY = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR"
CORP_ID = "wx49f0ab532d5d035a"
ECHOSTR = "4ByGGj+sVCYcvGeQYhaKIk1o0pQRNbRjxybjTGblXrBaXlTXeOo1+bXFXDQQb1o6co6Yh9Bv41n7hOchLF6p+Q=="
POST_ENCRYPT = (
    "RgqEoJj5A4EMYlLvWO1F86ioRjZfaex/gePD0gOXTxpsq5Yj4GNglrBb8I2BAJVODGajiFnXBu7mCPatfjsu6IHCrsTyeDXzF6Bv283dGymzx"
    "h6ydJRvZsryDyZbLTE7rhnus50qGPMfp2wASFlzEgMW9z1ef/RD8XzaFYgm7iTdaXpXaG4+BiYyolBug/gYNx410cvkKR2/nPwBiT+P4hIiOAQ"
    "qGp/TywZBtDh1yCF2KOd0gpiMZ5jSw3e29mTvmUHzkVQiMS6td7vXUaWOMZnYZlF3So2SjHnwh4jYFxdgpkHHqIrH/54SNdshoQgWYEvccTKe"
    "7FS709/5t6NMxuGhcUGAPOQipvWTT4dShyqio7mlsl5noTrb++x6En749zCpQVhDpbV6GDnTbcX2e8K9QaNWHp91eBdCRxthuL0="
)
ENCRYPT_VECTOR = (
    "9s4gMv99m88kKTh/H8IdkOiMg6bisoy3ypwy9H4hvSPe9nsGaqyw5hhSjdYbcrKk+j3nba4HMOTzHrluLBYqxgNcBqGsL8GqxlhZgURnAtObv"
    "esEl5nZ+uBE8bviY0LWke8Zy9V/QYKxNV2FqllNXcfmstttyIkMKCCmVbCFM2JTF5wY0nFhHZSjPUL2Q1qvSUCUld+/WIXrx0oyKQmpB6o8NR"
    "rrNrsDf03oxI1p9FxUgMnwKKZeOA/uu+2IEvEBtb7muXsVbwbgX05UPPJvFurDXafG0RQyPR+mf1nDnAtQmmNOuiR5MIkdQ39xn1vWwi1O5oaz"
    "PoQJz0nTYjxxEE8kv3kFxtAGVRe3ypD3WeK2XeFYFMNMpatF9XiKzHo3"
)


@pytest.fixture
def vector_client(database_url: str) -> Iterator[Any]:
    app = create_app({"database": {"url": database_url},
                      "wecom": {"corp_id": CORP_ID, "token": TOKEN, "encoding_aes_key": AES_KEY}},
                     environ={}, start_worker=False)
    yield app.test_client()
    app.extensions["scrm.db"].dispose()


def test_get_vector_answers_the_echostr_plaintext(vector_client):
    response = vector_client.get("/wecom/callback", query_string={
        "msg_signature": "dd6b9c95b495b3f7e2901bfbc76c664930ffdb96", "timestamp": "1411443780",
        "nonce": "437374425", "echostr": ECHOSTR})
    assert response.status_code == 200
    assert response.data == b"5927782489442352469"


def test_get_vector_with_another_nonce_fails(vector_client):
    response = vector_client.get("/wecom/callback", query_string={
        "msg_signature": "dd6b9c95b495b3f7e2901bfbc76c664930ffdb96", "timestamp": "1411443780",
        "nonce": "437374424", "echostr": ECHOSTR})
    assert response.status_code == 403


def test_post_vector_is_decrypted_and_stored(vector_client, database_url):
    body = (f"<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName>\n<Encrypt><![CDATA[{POST_ENCRYPT}]]></Encrypt>\n"
            "<AgentID><![CDATA[1]]></AgentID>\n</xml>")
    response = vector_client.post("/wecom/callback", data=body, content_type="text/xml", query_string={
        "msg_signature": "74d92dfeb87ba7c714f89d98870ae5eb62dff26d", "timestamp": "1411525903", "nonce": "461056294"})
    assert response.status_code == 200
    from sqlalchemy.orm import Session

    from bot.core.db import make_engine

    engine = make_engine(database_url)
    with Session(engine) as session:
        [event] = session.query(InboxEvent).all()
    engine.dispose()
    assert event.msg_type == "text"
    assert event.msg_id == "4363689963896700987"
    assert "<Content><![CDATA[test]]></Content>" in event.payload
    assert "messense" in event.payload


def test_sandbox_encryption_reproduces_the_published_ciphertext(monkeypatch):
    """The sandbox encrypts with wechatpy exactly as the published deterministic vector says."""
    from wechatpy.work import crypto

    from bot.sandbox.delivery import encrypt_callback
    from bot.sandbox.state import SandboxConfig, SandboxState

    monkeypatch.setattr(crypto.PrpCrypto, "get_random_string", lambda self: "1234567890123456")
    reply = ("<xml>\n<MsgType><![CDATA[text]]></MsgType>\n<Content><![CDATA[test]]></Content>\n"
             "<FromUserName><![CDATA[wx49f0ab532d5d035a]]></FromUserName>\n<ToUserName><![CDATA[messense]]></ToUserName>\n"
             "<AgentID>1</AgentID>\n<CreateTime>1411525903</CreateTime>\n</xml>")
    state = SandboxState(SandboxConfig(corp_id=CORP_ID, token=TOKEN, encoding_aes_key=AES_KEY, secrets={}))
    body, signature = encrypt_callback(state, reply, "1411525903", "461056294")
    assert signature == "407518b7649e86ef23978113f92d27afa9296533"
    assert f"<Encrypt><![CDATA[{ENCRYPT_VECTOR}]]></Encrypt>" in body
