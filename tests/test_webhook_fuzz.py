"""The webhook under hostile input (hypothesis): random bodies and query strings, mutations of real
signed callbacks, and arbitrary or malicious XML inside correctly encrypted payloads. Whatever
arrives, the answer is 200 or a 4xx, never a 5xx, and a refused request stores nothing."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from bot.models import InboxEvent
from tests.support import contact_event

FUZZ = settings(max_examples=60, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
QUERY_KEYS = st.sampled_from(["msg_signature", "timestamp", "nonce", "echostr", "x"])


def _count(db: Any) -> int:
    with db.sessions() as session:
        return session.scalar(select(func.count()).select_from(InboxEvent)) or 0


def _post(callbacks: Any, query: dict[str, str] | str, body: bytes) -> int:
    return callbacks.client.post("/wecom/callback", query_string=query, data=body, content_type="text/xml").status_code


def _check(db: Any, before: int, status: int) -> None:
    assert status == 200 or 400 <= status < 500, status
    if status != 200:
        assert _count(db) == before, "a refused request stored an event"


@FUZZ
@given(body=st.binary(max_size=3000), query=st.dictionaries(QUERY_KEYS, st.text(max_size=200), max_size=5))
def test_random_bodies_and_query_strings_are_refused_with_a_4xx(callbacks, db, body, query):
    before = _count(db)
    status = _post(callbacks, query, body)
    _check(db, before, status)
    assert status != 200  # without the Token nothing can be signed


@FUZZ
@given(raw_query=st.binary(max_size=300), body=st.binary(max_size=500), method=st.sampled_from(["GET", "POST"]))
@example(raw_query=b"\x80", body=b"", method="POST")
def test_undecodable_query_strings_are_refused(callbacks, db, raw_query, body, method):
    """Raw bytes in the request line reach WSGI as Latin-1; werkzeug decodes the query as strict UTF-8."""
    before = _count(db)
    environ = {"QUERY_STRING": raw_query.decode("latin-1")}
    status = callbacks.client.open("/wecom/callback", method=method, data=body, environ_overrides=environ).status_code
    _check(db, before, status)


MUTATIONS = st.sampled_from(["flip", "truncate", "insert", "delete", "duplicate"])


def _mutate(data: bytes, how: str, at: int, extra: bytes) -> bytes:
    at = at % (len(data) + 1)
    if how == "flip" and data:
        at = min(at, len(data) - 1)
        return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]
    if how == "truncate":
        return data[:at]
    if how == "insert":
        return data[:at] + extra + data[at:]
    if how == "delete":
        return data[:at] + data[at + len(extra) + 1:]
    return data + data[at:]


@FUZZ
@given(how=MUTATIONS, at=st.integers(0, 10_000), extra=st.binary(min_size=1, max_size=40),
       where=st.sampled_from(["body", "msg_signature", "timestamp", "nonce"]))
def test_mutated_signed_callbacks_are_refused_or_stored_once(callbacks, db, how, at, extra, where):
    query, body = callbacks.sign(contact_event(ExternalUserID=f"wm_fuzz_{at}_{how}"))
    data = body.encode("utf-8")
    if where == "body":
        data = _mutate(data, how, at, extra)
    else:
        query = {**query, where: _mutate(query[where].encode(), how, at, extra).decode("latin-1")}
    before = _count(db)
    status = _post(callbacks, query, data)
    _check(db, before, status)
    assert _count(db) <= before + 1


XML_PIECES = st.sampled_from([
    "<xml>", "</xml>", "<MsgType>event</MsgType>", "<Event><![CDATA[change_external_contact]]></Event>",
    "<!DOCTYPE xml [<!ENTITY a \"aaaa\">]>", "&a;", "&lt;", "&#0;", "&#xD800;", "<![CDATA[", "]]>", "<a>", "</a>",
    "<a b='1' b='2'/>", "<?xml version='1.0' encoding='UTF-16'?>", "<?pi x?>", "<!-- c -->", "\x00", "\ufffe",
    "<xml:x xmlns:xml='u'/>", "<MsgId>1</MsgId>", "<CreateTime>99999999999999999999</CreateTime>", "{{ config }}",
])


@FUZZ
@given(pieces=st.lists(st.one_of(XML_PIECES, st.text(max_size=30)), max_size=40), deep=st.integers(0, 3000))
@example(pieces=["<xml>", "<MsgType>event</MsgType>", "</xml>"], deep=2000)
@example(pieces=["<!DOCTYPE xml [<!ENTITY a \"aaaa\">]>", "<xml><A>&a;</A></xml>"], deep=0)
def test_any_xml_inside_a_correctly_encrypted_payload_is_a_200_or_a_4xx(callbacks, db, pieces, deep):
    plaintext = "".join(pieces)
    if deep:
        plaintext = plaintext.replace("</xml>", "<a>" * deep + "x" + "</a>" * deep + "</xml>", 1)
    try:
        plaintext.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: WeCom's encryption takes UTF-8 text
        return
    before = _count(db)
    status = callbacks.post(plaintext).status_code
    _check(db, before, status)


def test_an_entity_declaration_hidden_in_utf16_is_refused(callbacks, db):
    """The DOCTYPE check reads bytes; a UTF-16 document hides it from that check, so the parser refuses it."""
    plaintext = ('<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE xml [<!ENTITY a "aaaa">]>'
                 '<xml><MsgType>event</MsgType><A>&a;</A></xml>')
    query, _ = callbacks.sign(contact_event())
    envelope = plaintext.encode("utf-16")
    assert _post(callbacks, query, envelope) == 400
    assert _count(db) == 0
