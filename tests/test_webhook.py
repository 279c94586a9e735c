"""The webhook verifies, decrypts, stores once, and answers 200 — and refuses everything else."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import pytest
import xmltodict
from sqlalchemy import func, select
from wechatpy.utils import WeChatSigner
from wechatpy.work.crypto import WeChatCrypto

from bot.models import InboxEvent
from bot.sandbox.delivery import encrypt_callback, event_xml
from bot.sandbox.state import SandboxState
from bot.web.app import create_app
from tests.support import Callbacks, contact_event, random_text


def stored(db: Any) -> list[InboxEvent]:
    with db.sessions() as session:
        return list(session.scalars(select(InboxEvent).order_by(InboxEvent.id)))


def count(db: Any) -> int:
    with db.sessions() as session:
        return session.scalar(select(func.count()).select_from(InboxEvent)) or 0


def test_event_is_stored_then_acknowledged_with_empty_200(callbacks, db):
    response = callbacks.post(contact_event(State="teststate", WelcomeCode="WELCOMECODE"))
    assert response.status_code == 200
    assert response.data in (b"", b"success")
    [event] = stored(db)
    assert (event.msg_type, event.event, event.change_type, event.status) == (
        "event", "change_external_contact", "add_external_contact", "pending")
    assert "<WelcomeCode><![CDATA[WELCOMECODE]]></WelcomeCode>" in event.payload


def test_url_verification_answers_the_plain_echostr(client, corp):
    crypto = WeChatCrypto(corp.token, corp.encoding_aes_key, corp.corp_id)
    reply = xmltodict.parse(crypto.encrypt_message("8364923749823749", "777", "1700000000"))["xml"]
    response = client.get("/wecom/callback", query_string={
        "msg_signature": reply["MsgSignature"], "timestamp": "1700000000", "nonce": "777",
        "echostr": reply["Encrypt"]})
    assert response.status_code == 200
    assert response.data == b"8364923749823749"
    assert response.mimetype == "text/plain"


def test_echostr_with_unescaped_plus_still_verifies(client, corp):
    crypto = WeChatCrypto(corp.token, corp.encoding_aes_key, corp.corp_id)
    for attempt in range(200):  # find an echostr whose base64 contains '+'
        reply = xmltodict.parse(crypto.encrypt_message(f"echo{attempt}", "1", "1700000000"))["xml"]
        if "+" in reply["Encrypt"]:
            break
    else:
        pytest.fail("no ciphertext with '+' found")
    raw_query = (f"msg_signature={reply['MsgSignature']}&timestamp=1700000000&nonce=1&"
                 f"echostr={reply['Encrypt']}")  # '+' left unescaped: arrives as a space
    response = client.get(f"/wecom/callback?{raw_query}")
    assert response.status_code == 200
    assert response.data == f"echo{attempt}".encode()


def test_same_event_delivered_twice_is_stored_once(callbacks, db, processor):
    event = contact_event(ChangeType="del_follow_user")
    assert callbacks.post(event, nonce="1").status_code == 200
    assert callbacks.post(event, nonce="2", timestamp="1700000005").status_code == 200  # a retry
    assert count(db) == 1
    assert stored(db)[0].duplicates == 1


def test_message_retries_dedupe_on_msgid(callbacks, db):
    message = {"ToUserName": "corp", "FromUserName": "lisi", "CreateTime": 1, "MsgType": "text",
               "Content": "hi", "MsgId": "4363689963896700987", "AgentID": 1}
    callbacks.post(message)
    callbacks.post({**message, "CreateTime": 2})  # same MsgId wins over a different CreateTime
    assert count(db) == 1


@pytest.mark.parametrize("difference", [
    {"ExternalUserID": "wmOTHER"},
    {"UserID": "lisi"},
    {"ChangeType": "edit_external_contact"},
    {"Event": "change_external_tag", "Id": "et1", "TagType": "tag", "ChangeType": "create"},
])
def test_distinct_events_in_the_same_second_are_all_kept(callbacks, db, difference):
    base = contact_event()
    callbacks.post(base)
    callbacks.post({**base, **difference})
    assert count(db) == 2


def test_kf_callbacks_with_distinct_tokens_are_distinct(callbacks, db):
    kf = {"ToUserName": "corp", "CreateTime": 1348831860, "MsgType": "event", "Event": "kf_msg_or_event",
          "Token": "ENCApHxnGDNAVNY4AaSJKj4Tb5mwsEMzxhFmHVGcra996NR", "OpenKfId": "wkxxxxxxx"}
    callbacks.post(kf)
    callbacks.post({**kf, "Token": "ENCother"})
    assert count(db) == 2


def test_old_timestamp_is_not_rejected(callbacks, db):
    assert callbacks.post(contact_event(), timestamp="1403610513").status_code == 200
    assert count(db) == 1


def bad_signature(callbacks) -> Any:
    query, body = callbacks.sign(contact_event())
    query["msg_signature"] = "0" * 40
    return callbacks.client.post("/wecom/callback", query_string=query, data=body, content_type="text/xml")


def tampered_body(callbacks) -> Any:
    query, body = callbacks.sign(contact_event())
    return callbacks.client.post("/wecom/callback", query_string=query, data=body.replace("<Encrypt><![CDATA[",
                                 "<Encrypt><![CDATA[A"), content_type="text/xml")


def wrong_corp(callbacks) -> Any:

    other = SandboxState(replace(callbacks.corp, corp_id="wwsomeoneelse"))
    body, signature = encrypt_callback(other, event_xml(contact_event()), "1700000000", "9")
    return callbacks.client.post("/wecom/callback", data=body, content_type="text/xml",
                                 query_string={"msg_signature": signature, "timestamp": "1700000000", "nonce": "9"})


def wrong_token(callbacks) -> Any:
    other = SandboxState(replace(callbacks.corp, token="SomeOtherToken"))
    body, signature = encrypt_callback(other, event_xml(contact_event()), "1700000000", "9")
    return callbacks.client.post("/wecom/callback", data=body, content_type="text/xml",
                                 query_string={"msg_signature": signature, "timestamp": "1700000000", "nonce": "9"})


def oversize(callbacks) -> Any:
    query, _ = callbacks.sign(contact_event())
    return callbacks.client.post("/wecom/callback", query_string=query, data=b"<xml>" + b"x" * 300_000 + b"</xml>",
                                 content_type="text/xml")


def doctype_envelope(callbacks) -> Any:
    query, body = callbacks.sign(contact_event())
    evil = '<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY a "aaaa">]>' + body
    return callbacks.client.post("/wecom/callback", query_string=query, data=evil, content_type="text/xml")


def doctype_inside_encryption(callbacks) -> Any:
    inner = ('<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]>'
             "<xml><MsgType>event</MsgType><Event>&lol2;</Event></xml>")
    return callbacks.post(inner)


def external_entity(callbacks) -> Any:
    inner = '<!DOCTYPE xml [<!ENTITY x SYSTEM "file:///etc/passwd">]><xml><MsgType>&x;</MsgType></xml>'
    return callbacks.post(inner)


def missing_params(callbacks) -> Any:
    _, body = callbacks.sign(contact_event())
    return callbacks.client.post("/wecom/callback", data=body, content_type="text/xml")


def not_xml(callbacks) -> Any:
    query, _ = callbacks.sign(contact_event())
    return callbacks.client.post("/wecom/callback", query_string=query, data=b'{"Encrypt": "x"}')


def garbage_ciphertext(callbacks) -> Any:
    """Correctly signed, but the Encrypt text is not valid AES/base64 (only a token holder can do this)."""
    encrypt = "not*base64!"
    signer = WeChatSigner()
    signer.add_data(callbacks.corp.token, "1700000000", "5", encrypt)
    body = f"<xml><ToUserName>c</ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
    return callbacks.client.post("/wecom/callback", data=body, content_type="text/xml",
                                 query_string={"msg_signature": signer.signature, "timestamp": "1700000000",
                                               "nonce": "5"})


def latin1_body(callbacks) -> Any:
    query, _ = callbacks.sign(contact_event())
    return callbacks.client.post("/wecom/callback", query_string=query, data="<xml><Encrypt>é</Encrypt></xml>"
                                 .encode("latin-1"), content_type="text/xml")


@pytest.mark.parametrize("attack,status", [
    (bad_signature, 403), (wrong_token, 403), (tampered_body, 403), (wrong_corp, 403), (oversize, 413),
    (doctype_envelope, 400), (doctype_inside_encryption, 400), (external_entity, 400), (missing_params, 400),
    (not_xml, 400), (garbage_ciphertext, 400), (latin1_body, 400),
])
def test_bad_requests_get_4xx_a_log_line_and_store_nothing(callbacks, db, caplog, attack, status):
    with caplog.at_level(logging.WARNING, logger="bot.web.webhook"):
        response = attack(callbacks)
    assert response.status_code == status
    assert count(db) == 0
    assert any("callback rejected" in r.getMessage() for r in caplog.records)


def test_authentic_event_without_msgtype_is_kept_not_refused(callbacks, db, processor):
    """Losing an authentic callback is worse than storing an odd one: it is kept as unhandled."""
    assert callbacks.post({"ToUserName": "c", "InfoType": "change_external_contact", "TimeStamp": 1}).status_code == 200
    assert processor.run_once() == {"unhandled": 1}
    assert stored(db)[0].msg_type == "unknown" and stored(db)[0].event == "change_external_contact"


def test_url_verification_with_wrong_signature_is_refused(client, callbacks):
    query, _ = callbacks.sign(contact_event())
    response = client.get("/wecom/callback", query_string={**query, "echostr": "AAAA"})
    assert response.status_code == 403


def test_rejection_log_never_contains_secrets(callbacks, caplog, corp):
    with caplog.at_level(logging.DEBUG):
        bad_signature(callbacks)
        callbacks.post(contact_event())
    text = caplog.text
    assert corp.token not in text and corp.encoding_aes_key not in text


@contextmanager
def callbacks_with(overrides, **wecom):
    """A test client for an app with these extra ``wecom`` settings (a second callback configuration)."""
    app = create_app({**overrides, "wecom": {**overrides["wecom"], **wecom}}, environ={}, start_worker=False)
    try:
        yield lambda config, **fields: Callbacks(app.test_client(), config).post(contact_event(**fields)).status_code
    finally:
        app.extensions["scrm.db"].dispose()


def test_second_callback_configuration_is_accepted(overrides, corp):
    """客户联系's own callback settings (a second Token/EncodingAESKey) verify as well."""
    contact_corp = replace(corp, token=random_text(20), encoding_aes_key=random_text(43))
    with callbacks_with(overrides, contact_token=contact_corp.token,
                        contact_encoding_aes_key=contact_corp.encoding_aes_key) as post:
        assert post(contact_corp) == 200 and post(corp, UserID="x") == 200


def test_two_configurations_sharing_a_token_each_decrypt_with_their_own_key(overrides, corp):
    """The app and 客户联系 callbacks with one Token and two EncodingAESKeys: the first signature match
    whose payload does not decrypt goes on to the second configuration (it used to answer 400)."""
    contact_corp = replace(corp, encoding_aes_key=random_text(43))
    with callbacks_with(overrides, contact_token=corp.token,
                        contact_encoding_aes_key=contact_corp.encoding_aes_key) as post:
        assert post(contact_corp) == 200 and post(corp, UserID="x") == 200
        assert post(replace(corp, encoding_aes_key=random_text(43)), UserID="y") == 400


def test_the_kf_system_apps_own_callback_configuration_is_accepted(overrides, corp):
    kf_corp = replace(corp, token=random_text(20), encoding_aes_key=random_text(43))
    with callbacks_with(overrides, kf_token=kf_corp.token, kf_encoding_aes_key=kf_corp.encoding_aes_key) as post:
        assert post(kf_corp) == 200


def test_unconfigured_webhook_refuses_with_503(database_url, callbacks):

    app = create_app({"database": {"url": database_url}}, environ={}, start_worker=False)
    try:
        query, body = callbacks.sign(contact_event())
        response = app.test_client().post("/wecom/callback", query_string=query, data=body)
        assert response.status_code == 503
    finally:
        app.extensions["scrm.db"].dispose()


def test_locked_database_gets_a_503_within_the_store_timeout_and_the_retry_is_stored(
        overrides, database_url, callbacks, caplog):
    """SQLite write-locked by a long job: the webhook used to hold WeCom's request for the 30 s busy
    timeout (WeCom gives up after ~5 s). It answers 503 within webhook.store_timeout_seconds,
    stores nothing, and WeCom's retry is stored once the lock is gone."""
    if not database_url.startswith("sqlite"):
        pytest.skip("holds an SQLite write lock")
    import sqlite3
    import time

    app = create_app({**overrides, "webhook": {"store_timeout_seconds": 0.3}}, environ={}, start_worker=False)
    db = app.extensions["scrm.db"]
    client = Callbacks(app.test_client(), callbacks.corp)
    event = contact_event()
    blocker = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="bot.inbox.webhook"):
            response = client.post(event)
        elapsed = time.monotonic() - started
        blocker.execute("ROLLBACK")
        assert response.status_code == 503
        assert elapsed < 3.0
        assert "database is locked" in caplog.text
        assert event["ExternalUserID"] not in caplog.text
        assert count(db) == 0
        assert client.post(event).status_code == 200
        assert count(db) == 1
    finally:
        blocker.close()
        db.dispose()


def test_default_store_timeout_answers_before_wecom_gives_up():
    from bot.core.config import WebhookSettings

    assert WebhookSettings().store_timeout_seconds <= 3.0


def test_the_hot_insert_reuses_its_connections_and_gives_them_up_on_dispose(app):
    """The webhook's insert keeps its connections between callbacks (a pool checkout cost a third of it);
    an error that is not a lost connection keeps the connection too, and dispose closes them all."""
    db = app.extensions["scrm.db"]
    with db.raw_statement(2.0) as first:
        pass
    with db.raw_statement(2.0) as again:
        assert again is first
    with pytest.raises(Exception, match="syntax"):
        with db.raw_statement(2.0) as failing:
            cursor = failing.cursor()
            cursor.execute("SELEC 1")
    with db.raw_statement(2.0) as after:
        assert after is first and after.dbapi_connection is not None
    db.dispose()
    assert first.dbapi_connection is None  # checked in and closed with the engines


def _hot_connections(db: Any) -> list[Any]:
    return [raw for idle in db._idle_raw.values() for raw in idle]


def test_postgresql_a_hot_connection_the_server_dropped_is_a_503_and_the_retry_is_stored(
        database_url, callbacks, db, caplog):
    """The insert runs as a statement prepared on each kept connection: when the server ends that
    connection (a restart, an idle timeout), the callback in flight is answered 503 for WeCom to
    retry, the connection is discarded, and the retry prepares the statement on a new one."""
    if not database_url.startswith("postgresql"):
        pytest.skip("ends a PostgreSQL backend")
    assert callbacks.post(contact_event(ExternalUserID="wm_first")).status_code == 200
    [hot] = _hot_connections(db)
    with db.engine.connect() as other:
        other.exec_driver_sql(f"SELECT pg_terminate_backend({hot.dbapi_connection.info.backend_pid})")
    event = contact_event(ExternalUserID="wm_second")
    with caplog.at_level(logging.WARNING, logger="bot.web.webhook"):
        assert callbacks.post(event).status_code == 503
    assert "callback not stored, answered 503" in caplog.text
    assert event["ExternalUserID"] not in caplog.text
    assert callbacks.post(event).status_code == 200
    assert callbacks.post(event).status_code == 200  # and a repeat is counted, not stored again
    assert count(db) == 2
    assert [e.duplicates for e in stored(db)] == [0, 1]


def test_postgresql_a_prepared_insert_the_server_forgot_is_prepared_again(database_url, callbacks, db):
    """A pooler in front of PostgreSQL, or a DISCARD ALL, drops the connection's prepared statements."""
    if not database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL's prepared statements")
    assert callbacks.post(contact_event(ExternalUserID="wm_first")).status_code == 200
    [hot] = _hot_connections(db)
    hot.dbapi_connection.execute("DEALLOCATE ALL")
    assert callbacks.post(contact_event(ExternalUserID="wm_second")).status_code == 200
    assert count(db) == 2
    # The other way round (a pooler that moved the session to a backend which has it): used as it is.
    from bot.inbox.store import _PREPARED_FLAG

    hot.info.pop(_PREPARED_FLAG)
    assert callbacks.post(contact_event(ExternalUserID="wm_third")).status_code == 200
    assert count(db) == 3


def test_postgresql_the_prepared_insert_stores_exactly_what_the_orm_would(database_url, db):
    """Values go to the prepared statement as text: times, numbers, None and non-ASCII text arrive as the
    ORM path stores them, and a NUL (which text parameters would cut short) is refused."""
    if not database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL's prepared statements")
    from sqlalchemy.exc import DBAPIError

    from bot.inbox.store import insert_new_event
    from bot.models import utcnow

    before = utcnow()
    fields = {"ToUserName": "ww1", "MsgType": "text", "MsgId": "123", "Content": "会员 ✓"}
    payload = "<xml><Content><![CDATA[会员 ✓ 'quoted' \\ back]]></Content></xml>"
    with db.raw_statement(2.0) as connection:
        new_id = insert_new_event(connection, db.engine.dialect, fields, payload)
    with db.raw_statement(2.0) as connection:
        assert insert_new_event(connection, db.engine.dialect, fields, payload) is None
    [event] = stored(db)
    assert event.id == new_id
    assert (event.msg_type, event.event, event.msg_id, event.payload, event.status, event.attempts) == (
        "text", None, "123", payload, "pending", 0)
    assert before <= event.received_at <= utcnow()
    with pytest.raises(DBAPIError, match="NUL"):
        with db.raw_statement(2.0) as connection:
            insert_new_event(connection, db.engine.dialect, {"MsgId": "124"}, "<xml>\x00</xml>")
    assert count(db) == 1


def test_other_methods_are_told_which_ones_the_callback_url_takes(client):
    response = client.put("/wecom/callback", data=b"<xml/>")
    assert response.status_code == 405
    assert response.headers["Allow"] == "GET, HEAD, OPTIONS, POST"
    assert client.post("/wecom/callback/").status_code == 404  # only the exact path is the webhook's


def test_a_body_without_content_length_is_read_when_the_server_ends_it(callbacks, db):
    """gunicorn hands a chunked body over without CONTENT_LENGTH and marks the input terminated;
    a stream may also return a body in parts."""
    query, body = callbacks.sign(contact_event(ExternalUserID="wm_chunked"))

    class Trickle:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def read(self, size: int = -1) -> bytes:
            part, self.data = self.data[:min(size, 7)], self.data[min(size, 7):]
            return part

    environ = {"wsgi.input": Trickle(body.encode()), "wsgi.input_terminated": True}
    response = callbacks.client.post("/wecom/callback", query_string=query, environ_overrides=environ,
                                     headers={"Transfer-Encoding": "chunked"}, content_type="text/xml")
    assert response.status_code == 200
    assert [e.payload.count("wm_chunked") for e in stored(db)] == [1]


def test_an_unexpected_failure_is_a_logged_500_that_wecom_retries(callbacks, db, app, caplog, monkeypatch):
    class Broken:
        def decrypt(self, *_args: Any) -> str:
            raise RuntimeError("keyring exploded")

    monkeypatch.setitem(app.extensions, "scrm.keyring", Broken())
    with caplog.at_level(logging.ERROR, logger="bot.web.webhook"):
        response = callbacks.post(contact_event())
    assert response.status_code == 500
    assert response.mimetype == "text/plain"
    assert "keyring exploded" in caplog.text
    assert count(db) == 0


def test_head_and_options_answer_as_flask_did(client, corp):
    crypto = WeChatCrypto(corp.token, corp.encoding_aes_key, corp.corp_id)
    reply = xmltodict.parse(crypto.encrypt_message("echo-length", "7", "1700000000"))["xml"]
    query = {"msg_signature": reply["MsgSignature"], "timestamp": "1700000000", "nonce": "7",
             "echostr": reply["Encrypt"]}
    head = client.head("/wecom/callback", query_string=query)
    assert head.status_code == 200 and head.data == b""
    assert head.headers["Content-Length"] == str(len("echo-length"))  # what GET sends
    options = client.options("/wecom/callback")
    assert options.status_code == 200 and "POST" in options.headers["Allow"]


@pytest.mark.parametrize("extra", ["&nonce=999&timestamp=1", "&shop=%D6%D0"], ids=["repeated", "gbk-escape"])
def test_extra_query_parameters_do_not_refuse_a_callback(callbacks, db, extra):
    """The first of a repeated parameter counts; a %-escape that is not UTF-8 (an operator's GBK parameter
    in the configured URL) stays as its escape, as werkzeug kept it. Raw non-UTF-8 bytes in the request
    line are still a 400 (the fuzz tests)."""
    query, body = callbacks.sign(contact_event())
    raw = "&".join(f"{k}={v}" for k, v in query.items()) + extra
    response = callbacks.client.post(f"/wecom/callback?{raw}", data=body.encode(), content_type="text/xml")
    assert response.status_code == 200
    assert count(db) == 1


def test_a_chunked_body_ignores_a_content_length_beside_it(callbacks, db):
    query, body = callbacks.sign(contact_event(ExternalUserID="wm_both_headers"))
    data = body.encode()
    environ = {"wsgi.input": __import__("io").BytesIO(data), "wsgi.input_terminated": True,
               "CONTENT_LENGTH": "5"}
    response = callbacks.client.post("/wecom/callback", query_string=query, environ_overrides=environ,
                                     headers={"Transfer-Encoding": "chunked"}, content_type="text/xml")
    assert response.status_code == 200
    assert count(db) == 1


def test_a_body_the_server_cannot_read_is_a_400_without_the_bytes_in_the_log(callbacks, db, caplog):
    class BrokenFraming:
        def read(self, size: int = -1) -> bytes:
            raise ValueError("Invalid chunk size: 'secret-bytes'")

    query, _ = callbacks.sign(contact_event())
    environ = {"wsgi.input": BrokenFraming(), "wsgi.input_terminated": True}
    with caplog.at_level(logging.WARNING, logger="bot.web.webhook"):
        response = callbacks.client.post("/wecom/callback", query_string=query, environ_overrides=environ,
                                          headers={"Transfer-Encoding": "chunked"}, content_type="text/xml")
    assert response.status_code == 400
    assert "body could not be read (ValueError)" in caplog.text
    assert "secret-bytes" not in caplog.text
    assert count(db) == 0


def test_the_hot_insert_returns_the_stored_id_even_when_sqlite_reuses_one(app, db):
    """On SQLite the id comes from lastrowid, which is the id only while inbox_events.id is the rowid."""
    from bot.inbox.store import insert_new_event

    database = app.extensions["scrm.db"]
    ids = []
    for n in range(3):
        with database.raw_statement(2.0) as connection:
            ids.append(insert_new_event(connection, database.engine.dialect, contact_event(ExternalUserID=f"wm{n}"),
                                        f"<xml>{n}</xml>"))
    with db.sessions() as session, session.begin():
        session.execute(InboxEvent.__table__.delete().where(InboxEvent.id == ids[-1]))
    with database.raw_statement(2.0) as connection:
        again = insert_new_event(connection, database.engine.dialect, contact_event(ExternalUserID="wm_new"), "<xml/>")
        duplicate = insert_new_event(connection, database.engine.dialect, contact_event(ExternalUserID="wm0"), "<xml/>")
    assert duplicate is None
    assert {e.payload: e.id for e in stored(db)} == {"<xml>0</xml>": ids[0], "<xml>1</xml>": ids[1], "<xml/>": again}
