"""Hostile input gets a clear 4xx (JSON under /api/v1) and a log line, and loses nothing else."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from bot.cli import main
from bot.inbox.xmlsafe import MAX_DEPTH, UnsafeXML, parse_flat_xml
from bot.models import InboxEvent, Order
from tests.support import contact_event

PAID_AT = "2025-06-01T10:00:00+08:00"
DEEP_JSON = "[" * 100_000 + "]" * 100_000


@pytest.fixture
def token(cli_env: dict[str, str]) -> str:
    result = CliRunner(env={"SCRM_CONFIG": None, **cli_env}).invoke(main, ["token", "create", "probe"])
    assert result.exit_code == 0, result.output
    return result.stdout.strip().splitlines()[0]


def order(order_id: str, amount: Any, **extra: Any) -> dict[str, Any]:
    return {"order_id": order_id, "external_userid": "wmHostile", "amount": amount, "paid_at": PAID_AT, **extra}


def stored_orders(db: Any) -> dict[str, int]:
    with db.sessions() as session:
        return dict(session.execute(select(Order.order_id, Order.amount_fen)).all())


# ---------------------------------------------------------------- API bodies


@pytest.mark.parametrize("path", ["/api/v1/coupons/redeem", "/api/v1/orders"])
def test_deeply_nested_json_without_a_token_is_401_not_500(client, path):
    response = client.post(path, data=DEEP_JSON, content_type="application/json")
    assert response.status_code == 401 and "token" in response.json["error"]


@pytest.mark.parametrize("path", ["/api/v1/coupons/redeem", "/api/v1/orders"])
@pytest.mark.parametrize("body", [DEEP_JSON, "{", b"\xff\xfe[]", '{"code": "A", "code": ' + "[" * 5000])
def test_unparsable_bodies_are_400_with_a_json_error(client, token, path, body, caplog):
    with caplog.at_level(logging.INFO, logger="bot.web.api"):
        response = client.post(path, data=body, content_type="application/json",
                               headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 400 and "not valid JSON" in response.json["error"]
    assert any("refused (400)" in r.getMessage() for r in caplog.records)


def test_a_body_that_is_not_json_is_415(client, token):
    response = client.post("/api/v1/orders", data="order_id=1", content_type="application/x-www-form-urlencoded",
                           headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 415 and "application/json" in response.json["error"]


def test_numbers_are_bounded_like_text_amounts_and_a_bad_row_loses_no_other(client, token, db):
    bad = [1e17, "1e17", -1, [[[1]]], {"x": 1}, None]
    raw_bad = ["1e400", "Infinity", "NaN", "-Infinity", "1" * 5000, "1e-999999999", "1E+999999999", "0.001"]
    body = (f'[{{"order_id": "good-1", "external_userid": "wmHostile", "amount": 12.5, "paid_at": "{PAID_AT}"}},'
            + ",".join(f'{{"order_id": "raw-{i}", "external_userid": "wmHostile", "amount": {raw}, '
                       f'"paid_at": "{PAID_AT}"}}' for i, raw in enumerate(raw_bad))
            + "]")
    auth = {"Authorization": f"Bearer {token}"}
    response = client.post("/api/v1/orders", data=body, content_type="application/json", headers=auth)
    assert response.status_code == 200, response.data[:300]
    results = response.json["results"]
    assert results[0] == {"index": 0, "order_id": "good-1", "result": "inserted"}
    assert [(r["index"], r["result"]) for r in results[1:]] == [(i + 1, "error") for i in range(len(raw_bad))]
    assert all("amount" in r["error"] for r in results[1:])

    mixed = [order("good-2", 9999999999999.99), *[order(f"bad-{i}", amount) for i, amount in enumerate(bad)],
             order("bad-status", 1, status=[[["paid"]]]), {"order_id": [[["x"]]], "amount": 1}]
    response = client.post("/api/v1/orders", json=mixed, headers=auth)
    assert response.status_code == 200, response.data[:300]
    results = response.json["results"]
    assert results[0]["result"] == "inserted"
    assert [r["result"] for r in results[1:]] == ["error"] * (len(mixed) - 1)
    assert "below 10^13" in results[1]["error"] and "at most 2 decimals" in results[2]["error"]
    assert results[-1]["order_id"] is None  # only text is echoed back
    assert stored_orders(db) == {"good-1": 1250, "good-2": 999999999999999}


# ---------------------------------------------------------------- API errors are JSON


def test_api_errors_are_json_never_an_html_page(client, token, monkeypatch):
    auth = {"Authorization": f"Bearer {token}"}
    missing = client.get("/api/v1/nothing-here", headers=auth)
    assert missing.status_code == 404 and missing.is_json and missing.json["error"]
    wrong_method = client.get("/api/v1/orders", headers=auth)
    assert wrong_method.status_code == 405 and wrong_method.is_json and "POST" in wrong_method.headers["Allow"]
    too_large = client.post("/api/v1/orders", data=" " * (9 * 1024 * 1024), headers=auth,
                            content_type="application/json")
    assert too_large.status_code == 413 and too_large.is_json
    client.application.config["MAX_CONTENT_LENGTH"] = 10  # Werkzeug's own 413, raised before the view reads
    werkzeug_too_large = client.post("/api/v1/orders", data="[" + " " * 20 + "]", headers=auth,
                                     content_type="application/json")
    assert werkzeug_too_large.status_code == 413 and werkzeug_too_large.is_json
    client.application.config["MAX_CONTENT_LENGTH"] = None

    def broken(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("the database fell over")

    monkeypatch.setattr("bot.campaigns.coupons.redeem", broken)
    failed = client.post("/api/v1/coupons/redeem", json={"code": "ABCD"}, headers=auth)
    assert failed.status_code == 500 and failed.is_json and "fell over" not in failed.json["error"]
    assert not client.get("/nothing-here").is_json  # outside the API Flask's own page stays


# ---------------------------------------------------------------- callbacks nested too deep


def nested_xml(depth: int) -> str:
    return "<xml><MsgType>event</MsgType>" + "<a>" * depth + "x" + "</a>" * depth + "</xml>"


def test_deeply_nested_callback_is_400_with_a_log_line_and_stores_nothing(callbacks, db, caplog):
    with caplog.at_level(logging.WARNING, logger="bot.inbox.webhook"):
        response = callbacks.post(nested_xml(1000))
    assert response.status_code == 400
    assert any("callback rejected" in r.getMessage() and "nested" in r.getMessage() for r in caplog.records)
    with db.sessions() as session:
        assert session.scalar(select(func.count()).select_from(InboxEvent)) == 0


def test_deeply_nested_envelope_is_400(callbacks, db):
    query, _ = callbacks.sign(contact_event())
    body = "<xml>" + "<Encrypt>" * 5000 + "</Encrypt>" * 5000 + "</xml>"
    response = callbacks.client.post("/wecom/callback", query_string=query, data=body, content_type="text/xml")
    assert response.status_code == 400


def test_the_depth_bound_leaves_room_for_every_wecom_callback():
    deepest_wecom = ("<xml><MsgType>event</MsgType><SendPicsInfo><Count>1</Count><PicList><item>"
                     "<PicMd5Sum>abc</PicMd5Sum></item></PicList></SendPicsInfo></xml>")
    assert parse_flat_xml(deepest_wecom)["SendPicsInfo"]["PicList"]["item"]["PicMd5Sum"] == "abc"
    assert parse_flat_xml(nested_xml(MAX_DEPTH - 1))["MsgType"] == "event"
    with pytest.raises(UnsafeXML, match="nested"):
        parse_flat_xml(nested_xml(MAX_DEPTH))


def test_a_stored_payload_nested_too_deep_fails_in_the_worker_without_stopping_it(db, processor):
    """An event stored before the bound existed: the worker records the failure and goes on."""
    with db.begin() as session:
        session.add(InboxEvent(dedupe_key="deep", msg_type="event", event="change_external_contact",
                               change_type="add_external_contact", payload=nested_xml(1000),
                               status="pending", attempts=0, duplicates=0))
    assert processor.run_once() == {"failed": 1}
    with db.sessions() as session:
        assert "nested" in session.scalar(select(InboxEvent.last_error))


# ---------------------------------------------------------------- operator templates


@pytest.mark.parametrize("template,reason", [
    ("{{ customer.__class__ }}", "SecurityError"), ("{{ 1 / 0 }}", "ZeroDivisionError"),
    ("{{ brand * 10**10 }}", "repeating makes more than"), ("{{ 2 ** 100000 }}", "exponent"),
    ("{{ 'x'.ljust(100000000)|length }}", "ljust() makes more than 10000"),
    ("{% for i in range(2000) %}{% for j in range(2000) %}{% endfor %}{% endfor %}", "takes more than 100000 steps"),
])
def test_a_refused_template_says_why_in_one_line(cli_env, template, reason):
    def clock() -> datetime:  # the CLI's now, so --at stays in the future whatever today is
        return datetime(2029, 12, 1, tzinfo=UTC)

    result = CliRunner(env={"SCRM_CONFIG": None, **cli_env}).invoke(
        main, ["broadcast", "create", "probe", "--template", f"default={template}", "--at", "2030-01-01 10:00",
               "--yes"], obj=clock)
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith("Error: template 'default' refused: ")
    assert reason in result.output and "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_a_group_broadcast_text_is_bounded_too(app):
    from bot.campaigns.broadcasts import BroadcastError
    from bot.campaigns.group_broadcasts import check_templates

    with pytest.raises(BroadcastError, match="template 'default' refused: OverflowError: the format filter makes"):
        check_templates({"default": "{{ '%200000000s'|format(group.name) }}"}, app.extensions["scrm.settings"])


def test_an_unreadable_template_file_is_a_usage_error(cli_env, tmp_path):
    result = CliRunner(env={"SCRM_CONFIG": None, **cli_env}).invoke(
        main, ["broadcast", "create", "probe", "--template-file", f"default={tmp_path / 'nope.j2'}"])
    assert result.exit_code == 2 and "cannot read" in result.output


def test_a_broken_operator_template_is_a_configuration_error(database_url, tmp_path):
    from bot.core.config import ConfigError
    from bot.startup import load_settings

    (tmp_path / "coupon").mkdir()
    (tmp_path / "coupon" / "flash.j2").write_text("{{ customer.name ", encoding="utf-8")
    overrides = {"database": {"url": database_url}, "app": {"templates_dir": str(tmp_path)},
                 "coupons": {"schedules": [{"coupon": "VIP", "cron": "0 10 * * 1", "template": "coupon/flash"}]}}
    with pytest.raises(ConfigError, match=r"coupon/flash\.j2: TemplateSyntaxError on line 1"):
        load_settings(None, overrides, environ={})



# ---------------------------------------------------------------- JSON nesting, before the parser recurses


def test_json_deeper_than_any_body_we_accept_is_refused_before_parsing():
    import time

    from bot.core import jsonsafe

    jsonsafe.check_depth("[" * 64 + "]" * 64)
    with pytest.raises(jsonsafe.JsonTooDeep):
        jsonsafe.check_depth("[" * 65 + "]" * 65)
    with pytest.raises(jsonsafe.JsonTooDeep):
        jsonsafe.loads(DEEP_JSON)
    # Brackets inside strings, escaped quotes and escaped backslashes are text, not nesting.
    text = '[{"a": "' + "[" * 500 + '", "b": "\\"[[[[", "c": "\\\\", "d": ' + "[" * 60 + "]" * 60 + "}]"
    assert jsonsafe.loads(text)[0]["b"] == '"[[[['
    with pytest.raises(jsonsafe.JsonTooDeep):
        jsonsafe.check_depth('["\\\\"' + "[" * 70 + "]" * 70 + "]")
    # Bytes are checked as the text json.loads reads: in UTF-16 丢 (U+4E22) holds a quote's byte and
    # 字 (U+5B57) a bracket's, which must neither hide nesting nor invent it.
    hidden = ('["丢",' + "[" * 200_000 + "]" * 200_000 + "]")
    for encoding in ("utf-16-le", "utf-16", "utf-32"):
        with pytest.raises(jsonsafe.JsonTooDeep):
            jsonsafe.loads(hidden.encode(encoding))
    flat = ["字" * 3] + [[]] * 70
    assert jsonsafe.loads(json.dumps(flat, ensure_ascii=False).encode("utf-16")) == flat
    with pytest.raises(ValueError):
        jsonsafe.loads(b"[\xff\xfe\xfd" + b"[" * 100)
    # A large flat body (5,000 orders) passes the check in well under a second.
    many = json.dumps([order(f"o-{i}", "12.50") for i in range(5000)])
    started = time.perf_counter()
    jsonsafe.check_depth(many)
    assert time.perf_counter() - started < 0.5


def test_every_json_body_the_web_reads_is_bounded(client, token, app):
    from bot.core.jsonsafe import JsonTooDeep

    nested = "[" * 65 + "]" * 65
    response = client.post("/api/v1/orders", data=nested, content_type="application/json",
                           headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 400 and "nested" in response.json["error"]
    with pytest.raises(JsonTooDeep):  # request.get_json() (the sidebar's bodies): silent=True gives None
        app.json.loads(DEEP_JSON)
    with app.test_request_context("/", data=DEEP_JSON, content_type="application/json"):
        from flask import request

        assert request.get_json(silent=True) is None


def test_console_rules_refuse_deep_json_with_the_reason():
    from bot.core.config import ConfigError
    from bot.web.console.rules import _parse

    with pytest.raises(ConfigError, match="nested more than 64"):
        _parse("tags.rules", "[" * 30_000 + "]" * 30_000)  # within the 64 KB a rules list may have


# ---------------------------------------------------------------- numbers, dates and text past what they can mean


def test_text_with_a_lone_surrogate_is_400_and_a_surrogate_pair_is_text(client, token, db):
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    body = json.dumps([order("X\ud800", "1")])  # ensure_ascii: the lone surrogate travels as \ud800
    refused = client.post("/api/v1/orders", data=body, headers=headers)
    assert refused.status_code == 400 and "surrogate" in refused.get_json()["error"]
    paired = json.dumps([order("emoji-\U0001F600", "1")])  # the pair \ud83d\ude00
    assert client.post("/api/v1/orders", data=paired, headers=headers).status_code == 200
    assert stored_orders(db) == {"emoji-😀": 100}
    redeem = client.post("/api/v1/coupons/redeem", data='{"code": "\\udc00"}', headers=headers)
    assert redeem.status_code == 400


def test_customer_filters_take_only_known_values_once(client, cli_env):
    result = CliRunner(env={"SCRM_CONFIG": None, **cli_env}).invoke(
        main, ["token", "create", "reader", "--read-customers"])
    headers = {"Authorization": f"Bearer {result.stdout.strip().splitlines()[0]}"}
    assert client.get("/api/v1/customers?value_tier=high", headers=headers).status_code == 200
    typo = client.get("/api/v1/customers?value_tier=High", headers=headers)
    assert typo.status_code == 400 and "not one of high" in typo.get_json()["error"]
    twice = client.get("/api/v1/customers?value_tier=high&value_tier=low", headers=headers)
    assert twice.status_code == 400 and "once" in twice.get_json()["error"]


def test_ids_past_a_bigint_or_in_other_digits_are_404_or_400_never_500(app, db):
    from tests.console_support import csrf, signed_in

    client = signed_in(app, "alice", "admin")
    huge = "99999999999999999999"
    for path in (f"/console/customers/{huge}", f"/console/groups/{huge}", f"/console/broadcasts/{huge}"):
        assert client.get(path).status_code == 404, path
    for path in (f"/console/broadcasts/{huge}/cancel", f"/console/system/inbox/{huge}/retry",
                 f"/console/groups/{huge}/settings", f"/console/groups/sops/{huge}/cancel"):
        assert client.post(path, data={"csrf_token": csrf(client)}).status_code == 404, path
    assert client.get("/console/customers?after=²").status_code == 400
    assert client.get("/console/audit?before=²").status_code == 200
    stale = client.post("/console/rules/kf.reply_rules", data={"csrf_token": csrf(client), "rules": "[]",
                                                               "revision": huge + "999"})
    assert stale.status_code == 400 and "版本号" in stale.get_data(as_text=True)
    for form, reason in (({"holdout": "²"}, "hold-out"), ({"send_at": "9999-12-31T23:59:59-12:00"}, "out of range"),
                         ({"send_at": "0001-01-01T00:00:00+14:00"}, "out of range")):
        page = client.post("/console/broadcasts/new", data={"csrf_token": csrf(client), "name": "b",
                                                            "tpl_default": "hi", "intent": "schedule", **form})
        assert page.status_code == 400 and reason in page.get_data(as_text=True), form


@pytest.mark.parametrize(("args", "message", "code"), [
    (["customer", "show", "²"], "no customer", 1),
    (["customer", "show", "99999999999999999999"], "no customer", 1),
    (["customer", "forget", "99999999999999999999", "--yes"], "no customer", 1),
    (["inbox", "show", "99999999999999999999"], "99999999999999999999", 2),
    (["groups", "show", "²"], "no group", 1),
    (["retier", "--as-of", "0001-01-01"], "out of range", 2),
    (["retier", "--as-of", "9999-12-31"], "out of range", 2),
    (["broadcast", "create", "n", "--template", "default=hi", "--at", "9999-12-31 23:59", "--yes"], "out of range", 2),
    (["broadcast", "create", "n", "--template", "default=hi", "--cron", "0 10 * * *", "--audience",
      '{"added_after": "0001-01-01"}', "--yes"], "out of range", 1),
    (["broadcast", "create", "n", "--template", "default=hi", "--cron", "0 10 * * *", "--audience",
      '{"min_orders": 99999999999999999999999}', "--yes"], "whole number", 1),
    (["broadcast", "create", "n", "--template", "default=hi", "--audience", "@/nonexistent/a.json", "--cron",
      "0 10 * * *", "--yes"], "cannot read", 2),
])
def test_cli_refuses_what_it_cannot_mean_in_one_line(cli_env, args, message, code):
    runner = CliRunner(env={"SCRM_CONFIG": None, **cli_env})
    runner.invoke(main, ["init"])
    result = runner.invoke(main, args)
    assert result.exit_code == code and message in result.output and "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_a_broadcast_given_both_a_time_and_a_cron_is_refused_before_its_preview(cli_env):
    runner = CliRunner(env={"SCRM_CONFIG": None, **cli_env})
    runner.invoke(main, ["init"])
    result = runner.invoke(main, ["broadcast", "create", "n", "--template", "default=hi", "--at", "2999-01-01 10:00",
                                  "--cron", "0 10 * * *"], input="y\n")
    assert result.exit_code == 1 and "either a send time" in result.output and "schedule it?" not in result.output


def test_a_sidebar_tag_id_must_be_a_real_row_id(app):
    from bot.web.sidebar.views import _tag_from_request

    with app.extensions["scrm.db"].sessions() as session:
        for bad in (2**70, True, -1, 0, "1", 1.5):
            assert _tag_from_request(session, {"tag_id": bad}, None, app.extensions["scrm.settings"]) \
                == ("标签不存在", 400), bad


def test_an_id_or_time_given_as_a_json_number_is_called_that_not_empty(client, token):
    headers = {"Authorization": f"Bearer {token}"}
    rows = [{"order_id": 12345, "external_userid": "wmA", "amount": "1", "paid_at": PAID_AT},
            {"order_id": "ok1", "external_userid": "wmA", "amount": "1", "paid_at": 1700000000}]
    answer = client.post("/api/v1/orders", json=rows, headers=headers).get_json()
    assert [r.get("error") for r in answer["results"]] == [
        "order_id must be text (a JSON string), got a number",
        "paid_at must be an ISO 8601 time as text, got a number"]


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer"])
def test_the_bearer_scheme_is_case_insensitive(client, token, scheme):
    answer = client.post("/api/v1/orders", json=[order("case-1", "1")],
                         headers={"Authorization": f"{scheme} {token}"})
    assert answer.status_code == 200, answer.get_json()
