"""The sidebar in real headless Chromium: a member signs in through the sandbox's authorize page,
the page registers the JS-SDK (the sandbox's stub checks both signatures), finds the chat's customer,
shows the tiers and why; a tapped tag reaches the database and WeCom (mark_tag); 发送 hands the next
best action to sendChatMessage; another member's customer is refused; a bad signature says which step
failed. Screenshots land in the test's tmp dir (``SCRM_UPDATE_SCREENSHOTS=1`` also writes
docs/img/sidebar.png)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from bot.campaigns.coupons import display_code
from bot.models import Coupon, Customer, CustomerTag, Follow, Tag
from tests.sidebar_support import OTHERS, OWN, SidebarWorld, serve_world

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]
DOCS_SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "img" / "sidebar.png"

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists() or find_spec("playwright") is None,
    reason="browser tests need Debian's chromium at /usr/bin/chromium and the playwright package "
           "(pip install -e '.[test]'; apt-get install chromium) — .ci/run installs both")


@pytest.fixture
def world(overrides, sandbox, sandbox_state) -> Iterator[SidebarWorld]:
    yield from serve_world(overrides, sandbox, sandbox_state)


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def phone(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, locale="zh-CN")
    context.set_default_timeout(15_000)
    yield context.new_page()
    context.close()


def open_as(page: Any, world: SidebarWorld, userid: str, contact: str) -> None:
    """Open the sidebar beside a chat with ``contact``; sign in on the sandbox's authorize page as ``userid``."""
    page.goto(f"{world.url}/sidebar/?sandbox_contact={contact}")
    if "/connect/oauth2/authorize" in page.url:
        page.click(f"a:has-text('({userid})')")
    page.wait_for_selector("#card[data-status]")


def test_a_member_sees_tags_and_sends_for_their_own_customer(world, phone, tmp_path):
    open_as(phone, world, "zhangsan", OWN)
    assert phone.get_attribute("#card", "data-status") == "200"
    card = phone.inner_text("#card")
    for text in ("陈小姐", "价值分层", "高价值", "重要价值", "满足高价值的条件", "得出「重要价值」", "专属客服"):
        assert text in card, text
    phone.screenshot(path=str(tmp_path / "sidebar-card.png"), full_page=True)
    if os.environ.get("SCRM_UPDATE_SCREENSHOTS"):
        DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        phone.screenshot(path=str(DOCS_SCREENSHOT), full_page=True)

    tag = phone.locator("button.tag", has_text="问过价格")
    tag.click()
    phone.wait_for_selector("button.tag[aria-pressed='true']:has-text('问过价格')")
    with world.db().begin() as session:
        row, wecom_id = session.execute(select(CustomerTag, Tag.wecom_tag_id).join(Tag)
                                        .where(Tag.name == "问过价格")).one()
        assert (row.source, row.added_by, row.removed_at) == ("staff", "zhangsan", None)
    marks = [c["body"] for c in world.state.calls if c["path"] == "externalcontact/mark_tag"]
    assert marks == [{"userid": "zhangsan", "external_userid": OWN, "add_tag": [wecom_id], "remove_tag": []}]
    assert any(t["tag_id"] == wecom_id for t in world.state.follows[OWN]["zhangsan"]["tags"])

    text = phone.inner_text("#nba-text").strip()
    phone.click("button[data-send]")
    phone.wait_for_selector("[data-send-status]:has-text('已发送到聊天')")
    sent = [c for c in phone.evaluate("window.__wecomCalls") if c["api"] == "sendChatMessage"]
    assert sent == [{"api": "sendChatMessage",
                     "args": {"msgtype": "text", "enterChat": True, "text": {"content": text}}}]
    phone.screenshot(path=str(tmp_path / "sidebar-sent.png"), full_page=True)
    apis = [c["api"] for c in phone.evaluate("window.__wecomCalls")]
    assert apis[:4] == ["config", "agentConfig", "getContext", "getCurExternalContact"]


def test_one_tap_records_a_customers_tuiding_and_another_undoes_it(world, phone, tmp_path):
    from bot.models import Customer

    open_as(phone, world, "zhangsan", OWN)
    assert phone.locator("[data-opt-flag]").is_hidden()
    phone.click("button[data-opt-out='true']")
    phone.wait_for_selector("[data-opt-status]:has-text('已退订')")
    assert phone.locator("[data-opt-flag]").is_visible()
    phone.screenshot(path=str(tmp_path / "sidebar-opted-out.png"), full_page=True)
    with world.db().begin() as session:
        assert session.scalar(select(Customer.opted_out).where(Customer.external_userid == OWN))
    phone.click("button[data-opt-out='false']")
    phone.wait_for_selector("[data-opt-status]:has-text('已恢复推送')")
    assert phone.locator("[data-opt-flag]").is_hidden()
    with world.db().begin() as session:
        assert not session.scalar(select(Customer.opted_out).where(Customer.external_userid == OWN))


def test_another_members_customer_is_refused_in_the_page(world, phone, tmp_path):
    open_as(phone, world, "zhangsan", OTHERS)
    assert phone.get_attribute("#card", "data-status") == "403"
    assert "无权查看该客户" in phone.inner_text("#card") and "刘先生" not in phone.content()
    phone.screenshot(path=str(tmp_path / "sidebar-refused.png"), full_page=True)


def test_a_bad_signature_shows_which_step_failed_and_what_to_check(world, phone, tmp_path):
    open_as(phone, world, "zhangsan", OWN)
    with world.state.lock:
        world.state.tickets.clear()  # WeCom no longer honours the tickets the bot has cached
    phone.goto(f"{world.url}/sidebar/?sandbox_contact={OWN}")
    phone.wait_for_selector("#problem:not([hidden])")
    assert phone.get_attribute("#problem", "data-failed-step") == "config"
    problem = phone.inner_text("#problem")
    assert "config:fail" in problem and "可信域名" in problem
    phone.screenshot(path=str(tmp_path / "sidebar-config-fail.png"), full_page=True)


def test_a_quick_reply_is_found_by_search_and_sent(world, phone, tmp_path):
    open_as(phone, world, "zhangsan", OWN)
    replies = phone.locator("[data-reply]")
    assert replies.count() >= 5
    phone.fill("[data-reply-filter]", "会员日")
    visible = [r.get_attribute("data-reply") for r in replies.all() if r.is_visible()]
    assert visible == ["member_day"]
    phone.fill("[data-reply-filter]", "没有这种话术")
    assert phone.is_visible("[data-reply-none]") and not any(r.is_visible() for r in replies.all())
    phone.fill("[data-reply-filter]", "会员日")
    text = phone.inner_text("#qr-member_day").strip()
    assert "陈小姐" in text
    phone.click("[data-reply='member_day'] button[data-send]")
    phone.wait_for_selector("[data-reply='member_day'] [data-send-status]:has-text('已发送到聊天')")
    sent = [c["args"] for c in phone.evaluate("window.__wecomCalls") if c["api"] == "sendChatMessage"]
    assert sent == [{"msgtype": "text", "enterChat": True, "text": {"content": text}}]
    phone.screenshot(path=str(tmp_path / "sidebar-quick-reply.png"), full_page=True)
    phone.fill("[data-reply-filter]", "")
    phone.locator("section.replies").screenshot(path=str(tmp_path / "sidebar-quick-replies.png"))


@pytest.fixture
def limited_world(overrides, sandbox, sandbox_state) -> Iterator[SidebarWorld]:
    yield from serve_world(overrides, sandbox, sandbox_state, daily_coupon_limit=1)


def test_a_coupon_is_issued_with_one_tap_sent_and_the_daily_limit_refuses_more(limited_world, phone, tmp_path):
    world = limited_world
    open_as(phone, world, "zhangsan", OWN)
    assert phone.inner_text("[data-coupon-count]") == "今天已发 0/1"
    phone.click("button[data-coupon='VIP']")
    phone.wait_for_selector("[data-coupon-status]:has-text('已发放')")
    with world.db().begin() as session:
        coupon, owner = session.execute(select(Coupon, Customer.external_userid).join(
            Customer, Customer.id == Coupon.customer_id).where(Coupon.issue_ref.like("staff:zhangsan:%"))).one()
        assert (coupon.definition, owner) == ("VIP", OWN)
        code = coupon.code
    assert display_code(code) in phone.inner_text("[data-coupon-status]")
    assert phone.inner_text("[data-coupon-count]") == "今天已发 1/1"
    phone.click("[data-coupon-sent] button[data-send]")
    phone.wait_for_selector("[data-coupon-sent] [data-send-status]:has-text('已发送到聊天')")
    sent = [c["args"]["text"]["content"] for c in phone.evaluate("window.__wecomCalls")
            if c["api"] == "sendChatMessage"]
    assert len(sent) == 1 and display_code(code) in sent[0]
    phone.screenshot(path=str(tmp_path / "sidebar-coupon.png"), full_page=True)

    phone.click("button[data-coupon='NEWBIE']")
    phone.wait_for_selector("[data-coupon-status].error")
    assert "上限" in phone.inner_text("[data-coupon-status]")
    with world.db().begin() as session:
        assert session.scalar(select(func.count()).select_from(Coupon).where(Coupon.issue_ref.like("staff:%"))) == 1
    phone.locator("section.coupons").screenshot(path=str(tmp_path / "sidebar-coupon-limit.png"))


def test_the_customers_pending_sequence_step_is_on_the_card(world, phone, tmp_path):
    with world.db().begin() as session:
        follow = session.scalar(select(Follow).join(Customer).where(Customer.external_userid == OWN))
        follow.added_at = datetime.now(UTC) - timedelta(days=1)
    open_as(phone, world, "zhangsan", OWN)
    steps = phone.locator("[data-step-pending]")
    assert steps.count() == 2
    assert "new_customer 第 3 天" in steps.first.inner_text() and "新客首单券" in steps.nth(1).inner_text()
    phone.locator("section.nba").screenshot(path=str(tmp_path / "sidebar-steps.png"))


@pytest.mark.parametrize("entry", ["group_chat_tools", "normal", "chat_attachment"])
def test_opened_outside_a_customer_chat_the_page_says_so(world, phone, tmp_path, entry):
    phone.goto(f"{world.url}/sidebar/?sandbox_contact={OWN}&sandbox_entry={entry}")
    if "/connect/oauth2/authorize" in phone.url:
        phone.click("a:has-text('(zhangsan)')")
    phone.wait_for_selector("#problem:not([hidden])")
    assert phone.get_attribute("#problem", "data-entry") == entry
    problem = phone.inner_text("#problem")
    assert "只在客户单聊中可用" in problem and entry in problem
    assert phone.inner_text("#card") == ""
    apis = [c["api"] for c in phone.evaluate("window.__wecomCalls")]
    assert "getCurExternalContact" not in apis
    phone.screenshot(path=str(tmp_path / f"sidebar-entry-{entry}.png"), full_page=True)


@pytest.mark.parametrize("entry", ["single_kf_tools", "contact_profile"])
def test_the_other_customer_entries_open_the_card(world, phone, entry):
    phone.goto(f"{world.url}/sidebar/?sandbox_contact={OWN}&sandbox_entry={entry}")
    if "/connect/oauth2/authorize" in phone.url:
        phone.click("a:has-text('(zhangsan)')")
    phone.wait_for_selector("#card[data-status]")
    assert phone.get_attribute("#card", "data-status") == "200" and "陈小姐" in phone.inner_text("#card")
