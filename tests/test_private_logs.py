"""No personal data in logs: runs in which the database fails, grepped for what a customer said and who
they are. The log is read from a handler on the root logger, as the service's own (basicConfig) is."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import text

from bot.core.privacy import mask_personal_data, masked
from bot.web.app import create_app
from tests.support import Callbacks, contact_event

EXTERNAL_USERID = "wmPrivateCustomer0000000000Xy9z"
STAFF_USERID = "zhangsan"
MESSAGE = "我家地址是幸福路12号，电话"
PHONE = "13812345678"
NICKNAME = "王小明"


@pytest.fixture
def log_text() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
def logged_app(overrides: dict[str, dict[str, Any]], log_text: io.StringIO) -> Iterator[Any]:
    """The app made after the log handler exists (as in service start), with SQL echo on."""
    settings = {**overrides, "database": {**overrides["database"], "echo": True}, "app": {**overrides["app"],
                                                                                          "log_level": "DEBUG"}}
    app = create_app(settings, environ={}, start_worker=False)
    yield app
    app.extensions["scrm.db"].dispose()


def assert_nothing_personal(log: str) -> None:
    for personal in (MESSAGE, PHONE, PHONE[-8:], EXTERNAL_USERID, NICKNAME, f"{STAFF_USERID}"):
        assert personal not in log, f"{personal!r} is in the log"


def text_message() -> dict[str, Any]:
    return {"ToUserName": "corp", "FromUserName": EXTERNAL_USERID, "CreateTime": 1700000000, "MsgType": "text",
            "Content": f"{MESSAGE} {PHONE[:3]} {PHONE[3:7]} {PHONE[7:]} / {PHONE}", "MsgId": "7001", "AgentID": 1}


@contextmanager
def table_gone(app: Any, table: str) -> Iterator[None]:
    """The table is renamed away while the block runs, and back afterwards: on PostgreSQL every test
    shares one database, so a dropped table would fail every test after this one."""
    db = app.extensions["scrm.db"]
    with db.begin() as session:
        session.execute(text(f"ALTER TABLE {table} RENAME TO {table}_elsewhere"))
    try:
        yield
    finally:
        with db.begin() as session:
            session.execute(text(f"ALTER TABLE {table}_elsewhere RENAME TO {table}"))


def test_a_callback_while_the_inbox_table_is_gone_logs_the_failure_but_not_the_message(logged_app, corp, log_text):
    with table_gone(logged_app, "inbox_events"):
        response = Callbacks(logged_app.test_client(), corp).post(text_message())
    # WeCom retries either; nothing is acknowledged that was not stored. SQLite reports the missing
    # table as an OperationalError (503, as for a locked database), PostgreSQL as a ProgrammingError (500).
    assert response.status_code in (500, 503)
    log = log_text.getvalue()
    assert "no such table: inbox_events" in log or "inbox_events" in log  # the failure itself is logged
    assert "callback not stored, answered 503" in log or "Exception on /wecom/callback" in log
    assert_nothing_personal(log)


def test_a_handler_whose_table_is_gone_logs_the_failure_but_not_the_customer(logged_app, corp, log_text):
    event = contact_event(ExternalUserID=EXTERNAL_USERID, UserID=STAFF_USERID, State=f"{NICKNAME} {PHONE}")
    assert Callbacks(logged_app.test_client(), corp).post(event).status_code == 200
    with table_gone(logged_app, "customers"):
        assert logged_app.extensions["scrm.processor"].run_once() == {"failed": 1}
    log = log_text.getvalue()
    assert "inbox event 1 failed" in log and "customers" in log
    assert_nothing_personal(log)


def test_call_sites_mask_ids_and_the_last_sweep_masks_what_it_recognises():
    assert masked(EXTERNAL_USERID) == "…Xy9z" and masked(STAFF_USERID) == "***" and masked(None) == "-"
    line = (f"failed for {EXTERNAL_USERID} (+86 138-1234-5678, {PHONE}): <xml><MsgType>text</MsgType>"
            f"<Content><![CDATA[{MESSAGE}]]></Content><FromUserName>{STAFF_USERID}</FromUserName></xml>")
    swept = mask_personal_data(line)
    assert "<MsgType>text</MsgType>" in swept and "<Content>…</Content>" in swept
    assert "[phone]" in swept and "…Xy9z" in swept
    assert_nothing_personal(swept)
    assert "1234-5678" not in swept
    assert mask_personal_data("inbox event 12345678901234 at 1700000000") == "inbox event 12345678901234 at 1700000000"


def test_the_served_access_log_and_refusals_name_no_one(logged_app, log_text):
    """`scrm serve`'s access log (werkzeug at INFO) and the API's and console's refusal lines: no search
    text, no id however it is spelt (an imported shop id is no WeCom id the last sweep would recognise)."""
    import socket

    import requests

    logging.getLogger().setLevel(logging.INFO)
    imported_id = "shop_customer_42"
    with served(logged_app) as server:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        for path in (f"/console/customers?q={NICKNAME}", f"/api/v1/customers/{imported_id}",
                     f"/api/v1/customers/{EXTERNAL_USERID}", f"/sidebar/customer/{EXTERNAL_USERID}",
                     f"/console/customers/{PHONE}", f"/sidebar/customer/{STAFF_USERID}", "/no/such/20231234"):
            requests.get(base + path, timeout=5, allow_redirects=False)
        with socket.create_connection(server.server_address[:2], timeout=5) as raw:  # a broken request line
            raw.sendall(f"GET /console/customers?q={NICKNAME} HTTP/1.1 extra\r\n\r\n".encode())
            raw.recv(1024)
    log = log_text.getvalue()
    assert '"GET /api/v1/customers/…r_42" 401' in log and '"GET /console/customers" 302' in log
    assert "API GET /api/v1/customers/<path:external_userid> refused (401)" in log  # the route, not the id
    assert '"GET /sidebar/customer/***" 401' in log and '"GET /***/***/***" 404' in log
    assert "refused a malformed request" in log and "Traceback" not in log
    assert_nothing_personal(log)
    assert imported_id not in log and "127.0.0.1" not in log and "20231234" not in log


@contextmanager
def served(app: Any) -> Iterator[Any]:
    """The app behind `scrm serve`'s own server and request handler (its access log) on a free port."""
    import threading

    from werkzeug.serving import make_server

    from bot.web.serving import PrivateRequestHandler

    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=PrivateRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_the_access_log_shows_the_webhooks_path(logged_app, log_text):
    """The webhook answers before Flask's routing, so no route named its words: every callback was logged as
    "POST /***/***", the one path a deployer most wants to see."""
    import requests

    logging.getLogger().setLevel(logging.INFO)
    with served(logged_app) as server:
        requests.post(f"http://127.0.0.1:{server.server_address[1]}/wecom/callback?timestamp=1", data=b"<x/>",
                      timeout=5)
    assert '"POST /wecom/callback" 400' in log_text.getvalue()
