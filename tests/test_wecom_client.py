"""The WeCom client against the sandbox: base URL, token cache, refresh, back-off, roles, added APIs."""

from __future__ import annotations

import os
from typing import Any

import pytest
import requests
from wechatpy.exceptions import WeChatClientException

from bot.startup import load_settings
from bot.wecom.client import ApiBlocked, WeComClient, build_clients
from tests.support import REDIS_URL, secret_for


def calls(sandbox, path: str | None = None) -> list[dict[str, Any]]:
    return requests.get(f"{sandbox.url}/_sandbox/calls", params={"path": path} if path else None, timeout=5).json()


def control(sandbox, path: str, payload: dict[str, Any]) -> dict[str, Any]:
    response = requests.post(f"{sandbox.url}/_sandbox/{path}", json=payload, timeout=10)
    response.raise_for_status()
    return response.json()


@pytest.fixture
def settings(corp, sandbox):
    return load_settings(overrides={"wecom": {"corp_id": corp.corp_id, "secret": secret_for(corp, "app"),
                                              "contact_secret": secret_for(corp, "contact"),
                                              "api_base_url": f"{sandbox.url}/cgi-bin/", "busy_backoff_seconds": 0.5,
                                              "agent_id": corp.agent_id}}, environ={})


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def clients(settings, sleeps):
    return build_clients(settings, sleep=sleeps.append)


@pytest.fixture
def seeded(sandbox):
    control(sandbox, "seed", {"staff": [{"userid": "zhangsan"}],
                              "contacts": [{"userid": "zhangsan", "external_userid": "wmA", "name": "李四"}],
                              "kf_accounts": [{"open_kfid": "wkA", "name": "客服"}]})


def test_all_calls_go_to_the_configured_base_url_with_one_token(clients, sandbox, seeded):
    clients.contact.external_contact.get("wmA")
    clients.contact.external_contact.get("wmA")
    clients.contact.external_contact.get_follow_user_list()
    paths = [c["path"] for c in calls(sandbox)]
    assert paths == ["gettoken", "externalcontact/get", "externalcontact/get", "externalcontact/get_follow_user_list"]


def test_each_app_role_uses_its_own_secret(clients, sandbox, seeded, corp):
    clients.contact.external_contact.get("wmA")
    clients.app.message.send_text(corp.agent_id, "zhangsan", "hello")
    roles = {c["path"]: c["role"] for c in calls(sandbox)}
    assert roles["externalcontact/get"] == "contact"
    assert roles["message/send"] == "app"
    assert clients.kf is clients.app  # no separate kf secret configured: the self-built app's


def test_a_contact_followed_past_one_page_is_read_whole(clients, sandbox):
    """Past 500 followers WeCom pages follow_user (next_cursor); wechatpy's get read the first page only, and
    tags held on the later follows were taken for removed."""
    members = [f"member{i}" for i in range(5)]
    follows = [{"userid": u, "external_userid": "wmWIDE", "name": "王五"} for u in members]
    control(sandbox, "seed", {"staff": [{"userid": u} for u in members], "contacts": follows})
    control(sandbox, "contacts/page_limit", {"limit": 2})
    contact = clients.contact.external_contact.get("wmWIDE")
    assert sorted(f["userid"] for f in contact["follow_user"]) == members and "next_cursor" not in contact
    assert [c["params"].get("cursor") for c in calls(sandbox, "externalcontact/get")] == [None, "2", "4"]


def test_expired_token_is_refreshed_once_and_the_call_repeated(clients, sandbox, seeded):
    clients.contact.external_contact.get("wmA")
    control(sandbox, "tokens/expire", {})
    assert clients.contact.external_contact.get("wmA")["external_contact"]["name"] == "李四"
    assert [(c["path"], c["errcode"]) for c in calls(sandbox)] == [
        ("gettoken", 0), ("externalcontact/get", 0), ("externalcontact/get", 42001), ("gettoken", 0),
        ("externalcontact/get", 0)]


def test_token_errors_do_not_loop_forever(clients, sandbox, seeded):
    control(sandbox, "faults", {"path": "externalcontact/get", "errcode": 40014, "count": 5})
    with pytest.raises(WeChatClientException) as info:
        clients.contact.external_contact.get("wmA")
    assert info.value.errcode == 40014
    assert len(calls(sandbox, "externalcontact/get")) == 2


@pytest.mark.parametrize("errcode", [45033, -1])
def test_busy_answers_back_off_and_retry(clients, sandbox, seeded, sleeps, errcode):
    control(sandbox, "faults", {"path": "externalcontact/get", "errcode": errcode, "count": 2})
    assert clients.contact.external_contact.get("wmA")["external_contact"]["external_userid"] == "wmA"
    assert sleeps == [0.5, 1.0]


def test_busy_retries_are_bounded(clients, sandbox, seeded, sleeps):
    control(sandbox, "faults", {"path": "externalcontact/get", "errcode": -1, "count": 10})
    with pytest.raises(WeChatClientException) as info:
        clients.contact.external_contact.get("wmA")
    assert info.value.errcode == -1 and len(sleeps) == 3


def test_calls_that_create_something_are_not_retried_blindly_when_busy(clients, sandbox, seeded, sleeps):
    """A busy answer may come after WeCom made the message: the caller looks the outcome up instead."""
    control(sandbox, "faults", {"path": "externalcontact/add_msg_template", "errcode": -1, "count": 1})
    with pytest.raises(WeChatClientException) as info:
        clients.contact.external_contact.add_msg_template(
            {"chat_type": "single", "external_userid": ["wmA"], "sender": "zhangsan", "text": {"content": "hi"}})
    assert info.value.errcode == -1 and sleeps == [] and len(calls(sandbox, "externalcontact/add_msg_template")) == 1


@pytest.mark.parametrize("path", ["externalcontact/transfer_customer", "externalcontact/resigned/transfer_customer",
                                  "externalcontact/groupchat/transfer", "externalcontact/add_corp_tag"])
def test_hand_overs_and_new_tags_are_not_retried_blindly_when_busy(clients, sandbox, seeded, sleeps, path):
    """Retried after WeCom acted, they are refused (40129, 90508, 40071) as if they had failed."""
    control(sandbox, "faults", {"path": path, "errcode": -1, "count": 1})
    with pytest.raises(WeChatClientException) as info:
        clients.contact.post(path, data={})
    assert info.value.errcode == -1 and sleeps == [] and len(calls(sandbox, path)) == 1


def test_calls_that_create_something_are_retried_when_refused_for_concurrency(clients, sandbox, seeded, sleeps):
    """45033 (too many concurrent calls) is refused before anything is done, unlike -1: retried for every call."""
    control(sandbox, "faults", {"path": "externalcontact/add_msg_template", "errcode": 45033, "count": 1})
    answer = clients.contact.external_contact.add_msg_template(
        {"chat_type": "single", "external_userid": ["wmA"], "sender": "zhangsan", "text": {"content": "hi"}})
    assert answer["msgid"] and sleeps == [0.5] and len(calls(sandbox, "externalcontact/add_msg_template")) == 2


def test_over_the_frequency_limit_is_raised_at_once_with_when_to_try_again(clients, sandbox, seeded, sleeps):
    """45009 blocks the API for a minute (WECOM.md §9): a retry within seconds is refused again and holds
    the thread, so the caller gets it at once and reschedules."""
    control(sandbox, "faults", {"path": "externalcontact/get", "errcode": 45009, "count": 2})
    with pytest.raises(ApiBlocked) as info:
        clients.contact.external_contact.get("wmA")
    assert info.value.errcode == 45009 and info.value.retry_after >= 60 and sleeps == []
    assert len(calls(sandbox, "externalcontact/get")) == 1


def test_gettoken_has_the_clients_timeout_and_its_busy_retries(settings, sandbox, seeded, sleeps):
    """wechatpy's own token fetch has no timeout: a stalled gettoken held the worker thread for good."""
    import time

    client = WeComClient(settings.wecom.corp_id, settings.wecom.secret, api_base_url=settings.wecom.api_base_url,
                         timeout=0.5, busy_backoff_seconds=0.5, sleep=sleeps.append)
    control(sandbox, "delays", {"path": "gettoken", "seconds": 3})
    started = time.monotonic()
    with pytest.raises(requests.Timeout):
        client.fetch_access_token()
    assert time.monotonic() - started < 2.5
    control(sandbox, "delays", {"path": "gettoken", "seconds": 0})
    control(sandbox, "faults", {"path": "gettoken", "errcode": -1, "count": 1})
    assert client.fetch_access_token()["access_token"] and sleeps == [0.5]


def test_a_token_refused_as_40001_is_refreshed_once(clients, sandbox, seeded):
    clients.contact.external_contact.get("wmA")
    control(sandbox, "faults", {"path": "externalcontact/get", "errcode": 40001, "count": 1})
    assert clients.contact.external_contact.get("wmA")["external_contact"]["name"] == "李四"
    assert [c["path"] for c in calls(sandbox)][-3:] == ["externalcontact/get", "gettoken", "externalcontact/get"]


def test_wrong_secret_is_an_error_not_a_retry_loop(settings, sandbox):
    client = WeComClient(settings.wecom.corp_id, "wrong-secret", api_base_url=settings.wecom.api_base_url)
    for _ in range(3):
        with pytest.raises(WeChatClientException) as info:
            client.external_contact.get("wmA")
        assert info.value.errcode == 40001
    # One gettoken per call: a refused gettoken is not "a stale token" to refresh (WeCom blocks an IP
    # after many bad gettoken calls), and the call itself never went out.
    assert len(calls(sandbox, "gettoken")) == 3 and calls(sandbox, "externalcontact/get") == []


def test_kf_sync_msg_takes_open_kfid_and_pages_with_cursor(clients, sandbox, seeded):
    for text in ("你好", "多少钱", "谢谢"):
        token = control(sandbox, "kf/text", {"open_kfid": "wkA", "external_userid": "wmA", "content": text})["token"]
    pages = list(clients.kf.kf.gen_sync_msg(token=token, open_kfid="wkA", limit=2))
    assert [len(p["msg_list"]) for p in pages] == [2, 1]
    assert [m["text"]["content"] for p in pages for m in p["msg_list"]] == ["你好", "多少钱", "谢谢"]
    body = calls(sandbox, "kf/sync_msg")[0]["body"]
    assert body["open_kfid"] == "wkA" and body["token"] == token and "cursor" not in body
    resumed = clients.kf.kf.sync_msg(token=token, open_kfid="wkA", cursor=pages[0]["next_cursor"])
    assert [m["text"]["content"] for m in resumed["msg_list"]] == ["谢谢"]


def test_remark_groupmsg_moments_and_oauth(clients, sandbox, seeded):
    ec = clients.contact.external_contact
    ec.remark("zhangsan", "wmA", remark="VIP 李四", description="likes tea")
    assert ec.get("wmA")["follow_user"][0]["remark"] == "VIP 李四"
    with pytest.raises(ValueError):
        ec.remark("zhangsan", "wmA", remark="x" * 21)
    msgid = ec.add_msg_template({"external_userid": ["wmA"], "sender": "zhangsan", "text": {"content": "hi"}})["msgid"]
    assert ec.get_groupmsg_task(msgid)["task_list"] == [{"userid": "zhangsan", "status": 0}]
    assert list(ec.gen_groupmsg_send_result(msgid, "zhangsan"))[0]["external_userid"] == "wmA"
    for _ in range(3):
        ec.remind_groupmsg_send(msgid)
    with pytest.raises(WeChatClientException):
        ec.remind_groupmsg_send(msgid)  # at most 3 per 24 h
    assert clients.contact.moment.get_moment_list(0, 86400)["moment_list"] == []
    with pytest.raises(ValueError):
        clients.contact.moment.get_moment_list(0, 31 * 86400)
    assert clients.app.oauth.get_user_info("code-for-zhangsan")["userid"] == "zhangsan"
    assert [c["path"] for c in calls(sandbox) if c["path"].startswith("auth/")] == ["auth/getuserinfo"]


@pytest.mark.skipif(not REDIS_URL, reason="SCRM_TEST_REDIS_URL not set (CI sets it)")
def test_redis_token_cache_is_shared_between_processes(corp, sandbox, seeded):
    import redis

    prefix = "scrmtest" + os.urandom(4).hex()
    settings = load_settings(overrides={
        "redis": {"url": REDIS_URL, "key_prefix": prefix},
        "wecom": {"corp_id": corp.corp_id, "secret": secret_for(corp, "app"),
                  "contact_secret": secret_for(corp, "contact"), "api_base_url": f"{sandbox.url}/cgi-bin/"}},
        environ={})
    first, second = build_clients(settings), build_clients(settings)  # two processes sharing one Redis
    admin = redis.Redis.from_url(REDIS_URL)
    try:
        first.contact.external_contact.get("wmA")
        second.contact.external_contact.get("wmA")
        assert [c["path"] for c in calls(sandbox)].count("gettoken") == 1
        keys = [k.decode() for k in admin.keys(f"{prefix}:*")]
        assert keys and not any(secret_for(corp, "contact")[:10] in k for k in keys)
    finally:
        for key in admin.keys(f"{prefix}:*"):
            admin.delete(key)
        for client in (admin, first.app.session.redis, second.app.session.redis):
            client.close()
