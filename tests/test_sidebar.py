"""The staff sidebar: JS-SDK signatures and tickets, OAuth2 sign-in, who may see which customer,
the customer card, tags and the next best action."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import requests
from sqlalchemy import select

from bot.models import CustomerTag, Tag
from bot.sandbox.state import WeComError
from bot.web.app import create_app
from bot.wecom.api import authorize_url, jsapi_signature
from bot.wecom.client import build_clients
from tests.sidebar_support import OTHERS, OWN, SidebarWorld, query_of, serve_world, sidebar_overrides, sign_in


@pytest.fixture
def world(overrides, sandbox, sandbox_state) -> Iterator[SidebarWorld]:
    yield from serve_world(overrides, sandbox, sandbox_state)


VECTOR_TICKET = "sM4AOVdWfPE4DxkXGEs8VMCPGGVi4C3VM0P37wVUCFvkVAy_90u5h9nbSlYy3-Sl-HhTdfl2fzFy1AOcHKP7qg"


# ---------------------------------------------------------------- JS-SDK


def test_signature_matches_the_published_jssdk_vector():
    """WECOM.md §11 vector 2; the fragment is never signed."""
    signature = "0f9de62fce790f9a083d5c99e95740ceb90c27ed"
    assert jsapi_signature(VECTOR_TICKET, "Wm3WZYTPz0wzccnW", 1414587457, "http://mp.weixin.qq.com?params=value") \
        == signature
    assert jsapi_signature(VECTOR_TICKET, "Wm3WZYTPz0wzccnW", "1414587457",
                           "http://mp.weixin.qq.com?params=value#top") == signature
    assert jsapi_signature(VECTOR_TICKET, "Wm3WZYTPz0wzccnW", 1414587457, "http://mp.weixin.qq.com") \
        == "f4d90daf4b3bca3078ab155816175ba34c443a7b"


def _ticket_fetches(state: Any) -> dict[str, int]:
    return {p: sum(1 for c in state.calls if c["path"] == p) for p in ("get_jsapi_ticket", "ticket/get")}


def test_tickets_are_cached_per_corp_and_per_app_and_renewed_before_expiry(overrides, sandbox, sandbox_state):
    settings = create_app(sidebar_overrides(overrides, sandbox.url), environ={}, start_worker=False)
    jsapi = build_clients(settings.extensions["scrm.settings"]).app.jsapi
    settings.extensions["scrm.db"].dispose()
    now = [1_000_000.0]
    jsapi.clock = lambda: now[0]
    corp = jsapi.get_jsapi_ticket()
    agent = jsapi.get_agent_jsapi_ticket(1000002)
    assert corp != agent
    assert [jsapi.get_jsapi_ticket() for _ in range(3)] == [corp] * 3
    assert jsapi.get_agent_jsapi_ticket(1000002) == agent
    assert _ticket_fetches(sandbox_state) == {"get_jsapi_ticket": 1, "ticket/get": 1}
    other_app = jsapi.get_agent_jsapi_ticket(1000003)  # a second app of the corp has its own ticket
    assert other_app != agent and _ticket_fetches(sandbox_state)["ticket/get"] == 2
    now[0] += 7200 - 600 - 1  # still outside the refresh margin
    assert jsapi.get_jsapi_ticket() == corp
    now[0] += 2  # within 600 s of expiry: fetched again, before WeCom would refuse the old one
    assert jsapi.get_jsapi_ticket() != corp
    assert _ticket_fetches(sandbox_state)["get_jsapi_ticket"] == 2


def test_sandbox_enforces_wecoms_hourly_ticket_limits(sandbox_state):
    for _ in range(100):
        sandbox_state.issue_ticket("agent")
    with pytest.raises(WeComError) as info:
        sandbox_state.issue_ticket("agent")
    assert info.value.errcode == 45009
    sandbox_state.offset += 3601
    assert sandbox_state.issue_ticket("agent")


# ---------------------------------------------------------------- sign-in


def test_authorize_url_is_wecoms_snsapi_base_redirect():
    url = authorize_url("https://open.weixin.qq.com/connect/oauth2/authorize", "wwcorp",
                        "https://scrm.example.com/sidebar/oauth", "abc123", 1000002)
    assert url == ("https://open.weixin.qq.com/connect/oauth2/authorize?appid=wwcorp&redirect_uri="
                   "https%3A%2F%2Fscrm.example.com%2Fsidebar%2Foauth&response_type=code&scope=snsapi_base"
                   "&state=abc123&agentid=1000002#wechat_redirect")


def test_opening_the_sidebar_signs_in_through_oauth_and_sets_a_short_strict_cookie(world, corp):
    browser = requests.Session()
    first = browser.get(f"{world.url}/sidebar/?sandbox_contact={OWN}", allow_redirects=False)
    assert first.status_code == 302
    location = first.headers["Location"]
    assert location.startswith(f"{world.sandbox_url}/connect/oauth2/authorize?")
    assert location.endswith("#wechat_redirect")
    q = query_of(location.split("#")[0])
    assert q["appid"] == corp.corp_id and q["scope"] == "snsapi_base" and q["agentid"] == str(corp.agent_id)
    assert q["redirect_uri"] == f"{world.url}/sidebar/oauth" and re.fullmatch(r"[A-Za-z0-9]{1,128}", q["state"])

    browser = sign_in(world, "zhangsan", f"/sidebar/?sandbox_contact={OWN}")
    cookie = next(c for c in browser.cookies if c.name == "scrm_session")
    assert cookie.has_nonstandard_attr("HttpOnly") and not cookie.secure
    assert cookie.get_nonstandard_attr("SameSite") == "Lax"
    assert cookie.expires is not None
    page = browser.get(f"{world.url}/sidebar/?sandbox_contact={OWN}")
    assert page.status_code == 200 and "客户侧边栏" in page.text
    assert page.headers["Cache-Control"] == "no-store"
    assert "script-src 'self' " + world.sandbox_url in page.headers["Content-Security-Policy"]


def _registration(html: str) -> dict[str, Any]:
    return json.loads(re.search(r'<script type="application/json" id="registration">(.*?)</script>', html, re.S)[1])


def test_page_signs_its_exact_url_with_the_corp_ticket_and_the_app_ticket(world):
    browser = sign_in(world, "zhangsan")
    url = f"{world.url}/sidebar/?sandbox_contact={OWN}&x=%E4%B8%AD"
    reg = _registration(browser.get(url).text)
    corp_ticket, = world.state.valid_tickets("corp")
    agent_ticket, = world.state.valid_tickets("agent")
    assert reg["signature"] == jsapi_signature(corp_ticket, reg["nonceStr"], reg["timestamp"], url)
    assert reg["agentSignature"] == jsapi_signature(agent_ticket, reg["nonceStr"], reg["timestamp"], url)
    assert reg["signature"] != reg["agentSignature"]
    for kind, signature in (("corp", reg["signature"]), ("agent", reg["agentSignature"])):
        check = requests.post(f"{world.sandbox_url}/_sandbox/jssdk/verify", json={
            "kind": kind, "url": url + "#ignored", "noncestr": reg["nonceStr"], "timestamp": reg["timestamp"],
            "signature": signature}).json()
        assert check == {"ok": True}
    browser.get(url)
    assert len(world.state.valid_tickets("corp")) == 1  # the second load reused the cached tickets


def test_public_url_behind_https_is_what_gets_signed_and_the_cookie_is_secure(overrides, sandbox, sandbox_state):
    app = create_app(sidebar_overrides({**overrides, "app": {**overrides["app"],
                                                             "public_url": "https://scrm.example.com"}},
                                       sandbox.url), environ={}, start_worker=False)
    client = app.test_client()
    first = client.get("/sidebar/")
    assert "redirect_uri=https%3A%2F%2Fscrm.example.com%2Fsidebar%2Foauth" in first.headers["Location"]
    assert app.config["SESSION_COOKIE_SECURE"] is True
    app.extensions["scrm.db"].dispose()


def _oauth_state(browser: requests.Session, world: SidebarWorld) -> str:
    """Open the sidebar signed out: the state the authorize redirect carries."""
    return query_of(browser.get(f"{world.url}/sidebar/", allow_redirects=False).headers["Location"]
                    .split("#")[0])["state"]


def test_a_used_code_asks_to_open_again(world):
    browser = requests.Session()
    state, code = _oauth_state(browser, world), world.state.issue_oauth_code("zhangsan")
    assert browser.get(f"{world.url}/sidebar/oauth?code={code}&state={state}", allow_redirects=False).status_code == 302
    other = requests.Session()
    again = other.get(f"{world.url}/sidebar/oauth?code={code}&state={_oauth_state(other, world)}")
    assert again.status_code == 400 and "请重新打开" in again.text


def test_a_code_older_than_five_minutes_is_refused(world):
    browser = requests.Session()
    state, code = _oauth_state(browser, world), world.state.issue_oauth_code("zhangsan")
    world.state.offset += 301
    answer = browser.get(f"{world.url}/sidebar/oauth?code={code}&state={state}")
    assert answer.status_code == 400 and "请重新打开" in answer.text


def test_a_non_member_is_refused_and_a_foreign_state_too(world):
    browser = requests.Session()
    state = _oauth_state(browser, world)
    outsider = world.state.issue_oauth_code(OWN)  # a customer opening the link: openid only
    refused = browser.get(f"{world.url}/sidebar/oauth?code={outsider}&state={state}")
    assert refused.status_code == 403 and "仅限企业成员" in refused.text
    assert browser.get(f"{world.url}/sidebar/", allow_redirects=False).status_code == 302  # not signed in
    forged = requests.get(f"{world.url}/sidebar/oauth?code={world.state.issue_oauth_code('zhangsan')}&state=abc")
    assert forged.status_code == 400


def test_the_session_ends_after_its_short_lifetime(world):
    browser = sign_in(world, "zhangsan")
    assert browser.get(f"{world.url}/sidebar/", allow_redirects=False).status_code == 200
    real = world.app.extensions["scrm.clock"]
    world.app.extensions["scrm.clock"] = lambda: real() + timedelta(minutes=31)
    assert browser.get(f"{world.url}/sidebar/", allow_redirects=False).status_code == 302
    assert browser.get(f"{world.url}/sidebar/customer/{OWN}").status_code == 401


# ---------------------------------------------------------------- who sees whom


def test_staff_see_their_own_customer_with_tiers_and_why(world):
    browser = sign_in(world, "zhangsan")
    card = browser.get(f"{world.url}/sidebar/customer/{OWN}")
    assert card.status_code == 200
    for text in ("陈小姐", "老客户", "张三", "live_0618", "高价值", "重要价值", "R/F/M 5/5/5", "超级", "活跃",
                 "100/100", "满足高价值的条件", "得出「重要价值」", "¥800.00", "专属优惠券", "客服消息",
                 "中价值 → 高价值", "专属客服", "最近下单", "天前",
                 '最近互动 <span class="muted">Asia/Shanghai</span>'):  # the times' zone, named
        assert text in card.text, text


def test_another_members_customer_is_refused_and_logged_without_personal_data(world, caplog):
    browser = sign_in(world, "zhangsan")
    with caplog.at_level(logging.WARNING, logger="bot.web.sidebar.views"):
        refused = browser.get(f"{world.url}/sidebar/customer/{OTHERS}")
    assert refused.status_code == 403 and "无权查看" in refused.text and "刘先生" not in refused.text
    line = next(r.getMessage() for r in caplog.records if "refused customer" in r.getMessage())
    assert "zhangsan" in line and OTHERS not in line and "刘先生" not in line
    assert browser.get(f"{world.url}/sidebar/customer/wmNoSuchCustomer").status_code == 404
    assert browser.get(f"{world.url}/sidebar/customer/bad%20id%3Cscript%3E").status_code == 400


def test_a_manager_sees_every_customer(world):
    boss = sign_in(world, "boss")
    assert boss.get(f"{world.url}/sidebar/customer/{OTHERS}").status_code == 200
    assert boss.get(f"{world.url}/sidebar/customer/{OWN}").status_code == 200


def test_an_ended_follow_no_longer_grants_access(world):
    from bot.models import Follow

    with world.db().begin() as session:
        for follow in session.scalars(select(Follow)):
            follow.ended_at = follow.added_at
    assert sign_in(world, "zhangsan").get(f"{world.url}/sidebar/customer/{OWN}").status_code == 403


# ---------------------------------------------------------------- tags


def _csrf(browser: requests.Session, world: Any) -> str:
    return re.search(r'data-csrf="([^"]+)"', browser.get(f"{world.url}/sidebar/").text)[1]


def _tag_id(world: Any, name: str) -> int:
    with world.db().begin() as session:
        return session.scalar(select(Tag.id).where(Tag.name == name))


def test_a_tap_tags_the_customer_as_the_member_and_pushes_it_to_wecom(world):
    browser = sign_in(world, "zhangsan")
    url, tag_id = f"{world.url}/sidebar/customer/{OWN}/tags", _tag_id(world, "问过价格")
    assert browser.post(url, json={"tag_id": tag_id, "checked": True}).status_code == 403  # no CSRF token
    assert browser.post(url, json={"tag_id": tag_id, "checked": True},
                        headers={"X-CSRF-Token": "forged"}).status_code == 403
    csrf = _csrf(browser, world)
    done = browser.post(url, json={"tag_id": tag_id, "checked": True}, headers={"X-CSRF-Token": csrf})
    assert done.status_code == 200 and done.json() == {"tag_id": tag_id, "checked": True, "pushed": True}
    with world.db().begin() as session:
        row = session.scalar(select(CustomerTag).where(CustomerTag.tag_id == tag_id))
        assert (row.source, row.added_by, row.removed_at, row.push_state) == ("staff", "zhangsan", None, None)
        wecom_id = session.get(Tag, tag_id).wecom_tag_id
    marks = [c for c in world.state.calls if c["path"] == "externalcontact/mark_tag"]
    assert marks[-1]["body"] == {"userid": "zhangsan", "external_userid": OWN, "add_tag": [wecom_id], "remove_tag": []}
    card = browser.get(f"{world.url}/sidebar/customer/{OWN}").text
    assert f'data-tag-id="{tag_id}" aria-pressed="true"' in card

    off = browser.post(url, json={"tag_id": tag_id, "checked": False}, headers={"X-CSRF-Token": csrf})
    assert off.json()["checked"] is False
    with world.db().begin() as session:
        row = session.scalar(select(CustomerTag).where(CustomerTag.tag_id == tag_id))
        assert row.removed_by == "zhangsan" and row.removed_at is not None
    assert [c for c in world.state.calls if c["path"] == "externalcontact/mark_tag"][-1]["body"]["remove_tag"] \
        == [wecom_id]


def test_a_body_larger_than_any_the_page_sends_is_refused_before_it_is_read(world):
    browser = sign_in(world, "zhangsan")
    url, tag_id = f"{world.url}/sidebar/customer/{OWN}/tags", _tag_id(world, "问过价格")
    padding = "x" * (64 * 1024)
    refused = browser.post(url, json={"tag_id": tag_id, "checked": True, "padding": padding},
                           headers={"X-CSRF-Token": _csrf(browser, world)})
    assert refused.status_code == 413 and refused.json() == {"error": "请求过大"}
    with world.db().begin() as session:
        assert session.scalar(select(CustomerTag).where(CustomerTag.tag_id == tag_id)) is None


def test_tags_of_another_members_customer_cannot_be_changed(world):
    browser = sign_in(world, "zhangsan")
    answer = browser.post(f"{world.url}/sidebar/customer/{OTHERS}/tags",
                          json={"tag_id": _tag_id(world, "问过价格"), "checked": True},
                          headers={"X-CSRF-Token": _csrf(browser, world)})
    assert answer.status_code == 403
    with world.db().begin() as session:
        assert session.scalar(select(CustomerTag)) is None


def test_a_customer_who_said_tuiding_in_the_members_chat_is_opted_out_from_the_sidebar(world):
    """退订 typed in a member's own chat never reaches 微信客服's word list: staff switch it here, for
    their own customers only, and the customer's history says who did."""
    from bot.models import Customer, Interaction

    browser = sign_in(world, "zhangsan")
    url = f"{world.url}/sidebar/customer/{OWN}/opt-out"
    assert browser.post(url, json={"opted_out": True}).status_code == 403  # no CSRF token
    csrf = _csrf(browser, world)
    assert browser.post(url, json={"opted_out": "yes"}, headers={"X-CSRF-Token": csrf}).status_code == 400
    assert browser.post(f"{world.url}/sidebar/customer/{OTHERS}/opt-out", json={"opted_out": True},
                        headers={"X-CSRF-Token": csrf}).status_code == 403
    done = browser.post(url, json={"opted_out": True}, headers={"X-CSRF-Token": csrf})
    assert done.status_code == 200 and done.json() == {"opted_out": True, "changed": True}
    card = browser.get(f"{world.url}/sidebar/customer/{OWN}").text
    assert 'data-opt-out="false"' in card and "恢复推送" in card
    with world.db().begin() as session:
        customer = session.scalar(select(Customer).where(Customer.external_userid == OWN))
        assert customer.opted_out and customer.opted_out_at is not None
        trail = session.scalar(select(Interaction).where(Interaction.kind == "opted_out"))
        assert trail.staff_userid == "zhangsan" and trail.detail == {"via": "sidebar"}
        other = session.scalar(select(Customer).where(Customer.external_userid == OTHERS))
        assert not other.opted_out
    again = browser.post(url, json={"opted_out": False}, headers={"X-CSRF-Token": csrf})
    assert again.json() == {"opted_out": False, "changed": True}


def _customer_writes(world: Any, out: bool) -> None:
    """The customer sends 退订 or 恢复订阅 to 微信客服 (what handlers/kf.py records)."""
    from datetime import UTC, datetime

    from bot.contacts.customers import set_opted_out
    from bot.models import Customer

    with world.db().begin() as session:
        customer = session.scalar(select(Customer).where(Customer.external_userid == OWN))
        set_opted_out(session, customer, out, datetime.now(UTC), via="kf")


def test_staff_cannot_undo_a_customers_own_tuiding_only_one_a_member_recorded(world):
    """The customer's own 退订 in 微信客服 is theirs to undo (恢复订阅 there); staff may still record an
    opt-out, and undo one that a member recorded."""
    from bot.models import Customer, Interaction

    browser = sign_in(world, "zhangsan")
    url, headers = f"{world.url}/sidebar/customer/{OWN}/opt-out", {"X-CSRF-Token": _csrf(browser, world)}

    def switch(out: bool) -> requests.Response:
        return browser.post(url, json={"opted_out": out}, headers=headers)

    refusal = {"error": "客户本人在微信客服发送了退订，只能由客户本人回复「恢复订阅」恢复推送", "opted_out": True}
    _customer_writes(world, out=True)
    refused = switch(False)
    assert (refused.status_code, refused.json()) == (409, refusal)
    assert switch(True).json() == {"opted_out": True, "changed": False}
    with world.db().begin() as session:
        assert session.scalar(select(Customer.opted_out).where(Customer.external_userid == OWN))
        assert session.scalar(select(Interaction).where(Interaction.kind == "opted_in")) is None
    _customer_writes(world, out=False)  # 恢复订阅: the customer's own word undoes it
    assert switch(True).json() == {"opted_out": True, "changed": True}  # a member records one …
    assert switch(False).json() == {"opted_out": False, "changed": True}  # … and a member may undo it
    assert switch(True).json() == {"opted_out": True, "changed": True}
    _customer_writes(world, out=True)  # the customer says 退订 too: from now on the opt-out is theirs
    again = switch(False)
    assert (again.status_code, again.json()) == (409, refusal)


def test_a_typed_alias_lands_on_its_canonical_tag_and_only_creators_make_new_tags(world):
    browser = sign_in(world, "zhangsan")
    url, headers = f"{world.url}/sidebar/customer/{OWN}/tags", {"X-CSRF-Token": _csrf(browser, world)}
    alias = browser.post(url, json={"name": "客户已下单", "checked": True}, headers=headers)  # config alias
    assert alias.status_code == 200 and alias.json()["tag_id"] == _tag_id(world, "客户首单")
    new = browser.post(url, json={"name": "意向/想要试用", "checked": True}, headers=headers)
    assert new.status_code == 403 and _tag_id(world, "想要试用") is None
    assert browser.post(url, json={"name": "x" * 40, "checked": True}, headers=headers).status_code == 400
    assert browser.post(url, json=["not", "an", "object"], headers=headers).status_code == 400
    assert browser.post(url, json={"tag_id": 999999, "checked": True}, headers=headers).status_code == 400


def test_a_tag_creator_may_make_a_new_tag(overrides, sandbox, sandbox_state):
    for w in serve_world(overrides, sandbox, sandbox_state, tag_creators=["zhangsan"]):
        browser = sign_in(w, "zhangsan")
        made = browser.post(f"{w.url}/sidebar/customer/{OWN}/tags", json={"name": "意向/想要试用", "checked": True},
                            headers={"X-CSRF-Token": _csrf(browser, w)})
        assert made.status_code == 200 and made.json()["pushed"] is True
        assert "想要试用" in {t["name"] for g in sandbox_state.tag_groups.values() for t in g["tag"]}


# ---------------------------------------------------------------- next best action


@pytest.mark.parametrize(("tiers", "template_words"), [
    ({"rfm_segment": "important_value", "value_tier": "high"}, "专属客服"),
    ({"rfm_segment": "important_retain", "value_tier": "mid"}, "回归礼券"),
    ({"rfm_segment": "general_keep", "value_tier": "mid"}, "限时折扣"),
    ({"rfm_segment": None, "value_tier": "low"}, "选购指南"),
    # 退订: no member-day invitation or coupon from the sidebar either, whatever the tier
    ({"rfm_segment": "important_value", "value_tier": "high", "opted_out": True}, "售后"),
])
def test_next_best_action_follows_the_tier(tiers, template_words):
    from types import SimpleNamespace

    from bot.outbox.messages import MessageTemplates
    from bot.web.sidebar.card import next_best_action

    customer = SimpleNamespace(name="陈小姐", external_userid=OWN, stage=None, **{"opted_out": False, **tiers})
    action = next_best_action(customer, MessageTemplates(), "好物店")  # type: ignore[arg-type]
    assert template_words in action.text and "陈小姐" in action.text and "好物店" in action.text
