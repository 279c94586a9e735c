"""The sandbox behaves like WeCom: encrypted deliveries with retries, WeCom's error codes and limits."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import requests
from flask import Flask

from bot.sandbox import SandboxConfig, SandboxState, create_sandbox_app
from bot.sandbox.delivery import deliver
from bot.web.serving import BackgroundServer


class Receiver:
    """A stand-in webhook that answers as told: slow, failing, or fine."""

    def __init__(self, answers: list[Any]) -> None:
        self.answers, self.hits = list(answers), []
        self.app = Flask("receiver")
        self.release = threading.Event()
        self.app.add_url_rule("/cb", "cb", self.handle, methods=["POST"])

    def handle(self) -> Any:
        from flask import request

        self.hits.append((dict(request.args), request.get_data()))
        answer = self.answers.pop(0) if self.answers else 200
        if answer == "hang":
            self.release.wait(2)
            return "", 200
        return "", answer


def test_defaults_follow_wecom():
    cfg = SandboxConfig(corp_id="c", token="t", encoding_aes_key="a" * 43, secrets={})
    assert (cfg.callback_timeout, cfg.callback_retries) == (5.0, 3)


@pytest.mark.parametrize("answers,attempts,delivered", [
    ([200], 1, True),
    ([500, 200], 2, True),
    (["hang", 200], 2, True),
    ([503, 503, 503, 503, 200], 4, False),  # first try + 3 retries, then WeCom gives up
])
def test_delivery_retries_until_200_at_most_three_times(corp, answers, attempts, delivered):
    receiver = Receiver(answers)
    with BackgroundServer(receiver.app) as server:
        corp.callback_timeout = 0.3
        state = SandboxState(corp)
        record = deliver(state, {"MsgType": "event", "Event": "change_external_contact"}, f"{server.url}/cb")
        receiver.release.set()
    assert len(record["attempts"]) == attempts and record["delivered"] is delivered
    bodies = {body for _, body in receiver.hits}
    assert len(bodies) == 1  # every retry resends the same bytes
    if answers[0] == "hang":
        assert record["attempts"][0]["result"] == "timeout"


def test_redelivery_resends_identical_request(corp):
    receiver = Receiver([200, 200])
    with BackgroundServer(receiver.app) as server:
        state = SandboxState(corp)
        first = deliver(state, {"MsgType": "event", "Event": "x"}, f"{server.url}/cb")
        from bot.sandbox.delivery import redeliver

        second = redeliver(state, first["id"])
    assert receiver.hits[0] == receiver.hits[1]
    assert second["redelivery_of"] == first["id"]


@pytest.fixture
def api(sandbox, corp):
    secret = next(iter(corp.secrets))

    def token() -> str:
        return requests.get(f"{sandbox.url}/cgi-bin/gettoken", params={"corpid": corp.corp_id, "corpsecret": secret},
                            timeout=5).json()["access_token"]

    def call(path: str, body: dict | None = None, method: str = "POST", **params: Any) -> dict:
        url = f"{sandbox.url}/cgi-bin/{path}"
        response = requests.request(method, url, params={"access_token": token(), **params},
                                    json=body if method == "POST" else None, timeout=5)
        return response.json()

    requests.post(f"{sandbox.url}/_sandbox/seed", json={
        "staff": [{"userid": "zhangsan"}], "contacts": [{"userid": "zhangsan", "external_userid": "wmA", "name": "A"}],
        "kf_accounts": [{"open_kfid": "wkA"}]}, timeout=5)
    return call


def test_gettoken_checks_corp_and_secret(sandbox, corp):
    url = f"{sandbox.url}/cgi-bin/gettoken"
    assert requests.get(url, params={"corpid": "nope", "corpsecret": "x"}, timeout=5).json()["errcode"] == 40013
    assert requests.get(url, params={"corpid": corp.corp_id, "corpsecret": "x"}, timeout=5).json()["errcode"] == 40001


def test_token_and_method_errors(sandbox, api):
    assert requests.get(f"{sandbox.url}/cgi-bin/externalcontact/get", timeout=5).json()["errcode"] == 41001
    assert requests.get(f"{sandbox.url}/cgi-bin/externalcontact/get", params={"access_token": "forged"},
                        timeout=5).json()["errcode"] == 40014
    assert api("externalcontact/get", {"external_userid": "wmA"})["errcode"] == 43001  # GET-only endpoint
    assert api("externalcontact/get", method="GET", external_userid="wmZ")["errcode"] == 84061
    assert api("externalcontact/no_such_api")["errcode"] == 404


def test_welcome_code_is_single_use_and_lives_20_seconds(sandbox, api):
    code = requests.post(f"{sandbox.url}/_sandbox/contacts/add", json={"userid": "zhangsan"},
                         timeout=10).json()["welcome_code"]
    welcome = {"welcome_code": code, "text": {"content": "hi"}}
    assert api("externalcontact/send_welcome_msg", welcome)["errcode"] == 0
    assert api("externalcontact/send_welcome_msg", welcome)["errcode"] == 41051  # only the first caller sends
    late = requests.post(f"{sandbox.url}/_sandbox/contacts/add", json={"userid": "zhangsan"},
                         timeout=10).json()["welcome_code"]
    requests.post(f"{sandbox.url}/_sandbox/clock/advance", json={"seconds": 21}, timeout=5)
    assert api("externalcontact/send_welcome_msg", {"welcome_code": late, "text": {"content": "x"}})["errcode"] == 41050


def test_kf_window_48_hours_and_five_messages(sandbox, api, sandbox_state):
    send = lambda i: api("kf/send_msg", {"touser": "wmA", "open_kfid": "wkA", "msgtype": "text",  # noqa: E731
                                         "text": {"content": f"m{i}"}, "msgid": f"m{i}"})
    assert send(0)["errcode"] == 95018  # the customer never wrote
    requests.post(f"{sandbox.url}/_sandbox/kf/text", json={"open_kfid": "wkA", "external_userid": "wmA",
                                                             "content": "在吗"}, timeout=10)
    assert [send(i)["errcode"] for i in range(1, 7)] == [0] * 6  # WeCom accepts the 6th…
    assert send(1)["errcode"] == 40058  # msgid reuse
    fails = [m for m in sandbox_state.kf_messages["wkA"] if m["msgtype"] == "event"]
    last = fails[-1]["event"]  # …then reports the 6th as failed
    assert (last["event_type"], last["fail_type"], last["fail_msgid"]) == ("msg_send_fail", 6, "m6")
    requests.post(f"{sandbox.url}/_sandbox/clock/advance", json={"seconds": 48 * 3600 + 1}, timeout=5)
    assert send(9)["errcode"] == 95018


def test_mark_tag_validates_like_wecom(api):
    group = api("externalcontact/add_corp_tag", {"group_name": "会员等级", "tag": [{"name": "金卡"}]})
    tag_id = group["tag_group"]["tag"][0]["id"]
    assert api("externalcontact/mark_tag", {"userid": "zhangsan", "external_userid": "wmA"})["errcode"] == 40058
    assert api("externalcontact/mark_tag", {"userid": "zhangsan", "external_userid": "wmA",
                                            "add_tag": ["bogus"]})["errcode"] == 40068
    assert api("externalcontact/mark_tag", {"userid": "zhangsan", "external_userid": "wmA",
                                            "add_tag": [tag_id]})["errcode"] == 0
    contact = api("externalcontact/get", method="GET", external_userid="wmA")
    assert contact["follow_user"][0]["tags"][0]["tag_name"] == "金卡"


def test_mass_messages_count_bytes_split_tasks_per_member_and_page_results(sandbox, api):
    """add_msg_template: text.content ≤ 4000 bytes (1333 Chinese characters fit, 1334 do not), ≤ 9
    attachments; without a sender each customer is in one member's task; task and result lists come in
    pages of ``limit`` with next_cursor (WECOM.md §5)."""
    requests.post(f"{sandbox.url}/_sandbox/seed", json={"staff": [{"userid": "lisi"}], "contacts": [
        {"userid": "lisi", "external_userid": "wmB", "name": "B"}]}, timeout=5).raise_for_status()
    send = lambda **body: api("externalcontact/add_msg_template",  # noqa: E731
                              {"chat_type": "single", "external_userid": ["wmA", "wmB"], **body})
    assert send(text={"content": "字" * 1334})["errcode"] == 40058  # 4002 bytes
    assert send(text={"content": "字" * 1333 + "a"}, sender="zhangsan")["errcode"] == 0  # 4000 bytes
    assert send(text={"content": "hi"}, attachments=[{"msgtype": "image"}] * 10)["errcode"] == 40058
    msgid = send(text={"content": "hi"})["msgid"]
    first = api("externalcontact/get_groupmsg_task", {"msgid": msgid, "limit": 1})
    second = api("externalcontact/get_groupmsg_task", {"msgid": msgid, "limit": 1, "cursor": first["next_cursor"]})
    assert [t["userid"] for t in first["task_list"] + second["task_list"]] == ["lisi", "zhangsan"]
    assert first["next_cursor"] and second["next_cursor"] == ""
    results = {u: api("externalcontact/get_groupmsg_send_result", {"msgid": msgid, "userid": u})["send_list"]
               for u in ("zhangsan", "lisi")}
    assert {u: [r["external_userid"] for r in rows] for u, rows in results.items()} == {"zhangsan": ["wmA"],
                                                                                         "lisi": ["wmB"]}


def test_every_call_is_recorded_without_credentials(sandbox, api):
    api("externalcontact/get", method="GET", external_userid="wmA")
    calls = requests.get(f"{sandbox.url}/_sandbox/calls", timeout=5).json()
    assert [c["path"] for c in calls][-1] == "externalcontact/get"
    assert all("access_token" not in c["params"] and "corpsecret" not in c["params"] for c in calls)


def test_sandbox_cli_app_serves(corp):
    app = create_sandbox_app(SandboxState(corp))
    assert app.test_client().get("/_sandbox/state").json["corp_id"] == corp.corp_id
    time.sleep(0)
