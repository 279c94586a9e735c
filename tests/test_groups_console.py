"""The console's 客户群 pages: the list with each group's tier mix, one group with its members, for
signed-in operators only; in real Chromium on a laptop and a phone (screenshots in the tmp dir)."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from datetime import timedelta
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from bot.contacts.groups import record_changes, upsert_group
from bot.models import Customer
from bot.web.serving import BackgroundServer
from tests.campaign_data import MORNING
from tests.console_support import PASSWORD, add_user, csrf, seed_console, signed_in

CHROMIUM = Path("/usr/bin/chromium")


def seed_groups(db: Any) -> None:
    ids = seed_console(db)
    with db.begin() as s:
        external = dict(s.execute(select(Customer.id, Customer.external_userid)).all())

        def member(customer_id: int) -> dict[str, Any]:
            return {"userid": external[customer_id], "type": 2, "join_time": int(MORNING.timestamp()),
                    "join_scene": 3, "state": "vip_group"}

        vip = {"chat_id": "wrVIP0001", "name": "VIP会员群", "owner": "zhangsan", "member_version": "v1",
               "member_list": [{"userid": "zhangsan", "type": 1, "join_time": int(MORNING.timestamp()) - 86400}]
               + [member(i) for i in ids[:4]]
               + [{"userid": "wmStranger", "type": 2, "join_time": int(MORNING.timestamp()), "join_scene": 1,
                   "invitor": {"userid": "zhangsan"}, "name": "路人"}],
               "admin_list": [{"userid": "zhangsan"}]}
        group, changes = upsert_group(s, vip, MORNING)
        record_changes(s, group, changes, None)
        group.tags, group.join_qr_code, group.join_state = ["会员"], "https://example.invalid/qr.png", "vip_group"
        upsert_group(s, {"chat_id": "wrLOW0001", "name": "打卡群<script>", "owner": "lisi",
                         "member_list": [member(i) for i in ids[7:12]]}, MORNING)


def test_list_and_detail_show_the_tier_mix(app):
    seed_groups(app.extensions["scrm.db"])
    client = signed_in(app, "vera", "viewer")
    page = client.get("/console/groups/").get_data(as_text=True)
    assert "VIP会员群" in page and "高价值 3" in page and "中价值 1" in page
    assert "打卡群&lt;script&gt;" in page and "<script>" not in page.split("</header>")[1].split("<script src")[0]
    assert client.get("/console/groups/?owner=lisi").get_data(as_text=True).count("打卡群") == 1
    detail = client.get("/console/groups/1").get_data(as_text=True)
    assert "4 位是客户" in detail and "重要价值" in detail and "扫码" in detail and "vip_group" in detail
    assert client.get("/console/groups/999").status_code == 404
    anonymous = app.test_client().get("/console/groups/")
    assert anonymous.status_code == 302 and "/console/login" in anonymous.headers["Location"]


def test_the_list_pages_past_a_hundred_groups_and_searches_by_name(app):
    """No group is left out past the first page: 下一页 walks on (keyset), a name search and the owner
    filter narrow it, and the total is shown."""
    from bot.models import CustomerGroup

    db = app.extensions["scrm.db"]
    with db.begin() as s:
        s.add_all([CustomerGroup(chat_id=f"wrP{n:04d}", name=f"门店{n:03d}群_a%", tags=[],
                                 owner_userid="wang" if n % 2 else "li") for n in range(1, 206)])
    client = signed_in(app, "vera", "viewer")
    seen: list[str] = []
    url: str | None = "/console/groups/"
    while url:
        page = client.get(url).get_data(as_text=True)
        assert "共 205 个群" in page
        seen += re.findall(r">(门店\d{3})群", page)
        url = html.unescape(m[1]) if (m := re.search(r'id="next-page" href="([^"]+)"', page)) else None
    assert seen == [f"门店{n:03d}" for n in range(1, 206)]
    found = client.get("/console/groups/", query_string={"q": "门店12", "owner": "wang"}).get_data(as_text=True)
    assert "共 5 个群" in found and re.findall(r">(门店\d{3})群", found) == ["门店121", "门店123", "门店125",
                                                                            "门店127", "门店129"]
    assert "next-page" not in found
    literal = client.get("/console/groups/", query_string={"q": "群_a%"}).get_data(as_text=True)
    assert "共 205 个群" in literal  # the text itself, not LIKE wildcards
    assert "共 0 个群" in client.get("/console/groups/", query_string={"q": "群_b"}).get_data(as_text=True)
    assert client.get("/console/groups/", query_string={"after": "x"}).status_code == 400


def test_operators_set_a_groups_tier_and_labels_audited_viewers_cannot(app):
    from bot.models import AuditEntry, CustomerGroup

    db = app.extensions["scrm.db"]
    seed_groups(db)
    with db.sessions() as s:
        low = s.scalar(select(CustomerGroup).where(CustomerGroup.chat_id == "wrLOW0001"))
    viewer = signed_in(app, "vera", "viewer")
    assert 'name="tier"' not in viewer.get(f"/console/groups/{low.id}").get_data(as_text=True)
    assert viewer.post(f"/console/groups/{low.id}/settings",
                       data={"tier": "high", "csrf_token": csrf(viewer)}).status_code == 403
    olga = signed_in(app, "olga", "operator")
    page = olga.get(f"/console/groups/{low.id}").get_data(as_text=True)
    assert 'name="tier"' in page and "按成员多数" in page and "重要价值（important_value）" in page
    url = f"/console/groups/{low.id}/settings"
    assert olga.post(url, data={"tier": "high", "tags": "打卡群"}).status_code == 400  # no form token
    assert olga.post(url, data={"tier": "gold", "csrf_token": csrf(olga)}).status_code == 400
    assert olga.post(url, data={"tags": "x" * 31, "csrf_token": csrf(olga)}).status_code == 400
    for label in ("a\x00b", "\u202eabc", "会员\u200b"):  # control, bidi override, zero-width space
        refused = olga.post(url, data={"tags": f"打卡群、{label}", "csrf_token": csrf(olga)})
        assert refused.status_code == 400 and "must not contain control characters" in refused.get_data(as_text=True)
    saved = olga.post(url, data={"tier": "important_value", "tags": "打卡群、种草群, 打卡群，VIP 福利群、{{ config }}",
                                 "csrf_token": csrf(olga)}, follow_redirects=True)
    assert saved.status_code == 200 and "已保存群层级与群标签" in saved.get_data(as_text=True)
    assert "重要价值（设定）" in saved.get_data(as_text=True)
    with db.sessions() as s:
        group = s.get(CustomerGroup, low.id)
        assert (group.tier, group.tags) == ("important_value", ["打卡群", "种草群", "VIP 福利群", "{{ config }}"])
        entry = s.scalar(select(AuditEntry).where(AuditEntry.action == "groups.update"))
        assert entry.actor == "olga" and entry.before == {"tier": None, "tags": []}
        assert entry.after["tier"] == "important_value"
    # A tier the config no longer has stays selected and is kept by a save of the labels; a field left
    # out of the form keeps its value.
    with db.begin() as s:
        s.get(CustomerGroup, low.id).tier = "gold"
    page = olga.get(f"/console/groups/{low.id}").get_data(as_text=True)
    assert '<option value="gold" selected>gold（已不在配置中）</option>' in page
    olga.post(url, data={"tier": "gold", "tags": "打卡群", "csrf_token": csrf(olga)})
    olga.post(url, data={"tags": "打卡群、早起", "csrf_token": csrf(olga)})
    with db.sessions() as s:
        assert (s.get(CustomerGroup, low.id).tier, s.get(CustomerGroup, low.id).tags) == ("gold", ["打卡群", "早起"])
    olga.post(url, data={"tier": "", "tags": "", "csrf_token": csrf(olga)})
    with db.sessions() as s:
        assert (s.get(CustomerGroup, low.id).tier, s.get(CustomerGroup, low.id).tags) == (None, [])
        assert s.scalar(select(func.count()).select_from(AuditEntry).where(AuditEntry.action == "groups.update")) == 4


@pytest.fixture
def served(app: Any) -> Iterator[str]:
    app.extensions["scrm.clock"] = lambda: MORNING + timedelta(hours=1)
    seed_groups(app.extensions["scrm.db"])
    add_user(app.extensions["scrm.db"], "olga", "operator")
    from bot.campaigns import group_broadcasts as gb
    from bot.campaigns.group_sop import create_sop

    settings = app.extensions["scrm.settings"]
    with app.extensions["scrm.db"].begin() as s:
        spec = gb.GroupBroadcastSpec("周末活动", {"tiers": ["high"]}, {"default": "周末活动开始啦"},
                                     cron="0 10 * * 6")
        gb.create(s, settings, spec, MORNING)
        create_sop(s, settings, "新群七天", {}, [{"day": 1, "template": "group_sop/rules"},
                                              {"day": 7, "template": "group_sop/checkin"}], MORNING)
    with BackgroundServer(app) as server:
        yield server.url


@pytest.mark.skipif(not CHROMIUM.exists() or find_spec("playwright") is None,
                    reason="browser tests need /usr/bin/chromium and playwright (.ci/run installs both)")
def test_group_pages_in_chromium(served, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
        for name, viewport in (("laptop", {"width": 1360, "height": 800}), ("phone", {"width": 390, "height": 844})):
            tab = browser.new_context(viewport=viewport, locale="zh-CN").new_page()
            problems: list[str] = []
            tab.on("pageerror", lambda e, problems=problems: problems.append(str(e)))
            tab.goto(f"{served}/console/login")
            tab.fill("input[name=name]", "olga")
            tab.fill("input[name=password]", PASSWORD)
            tab.click("button[type=submit]")
            tab.click("text=客户群")
            tab.wait_for_selector("table.groups")
            assert tab.locator(".mixcell .seg.t-high").first.inner_text() == "高价值 3"
            tab.screenshot(path=str(tmp_path / f"groups-{name}.png"), full_page=True)
            tab.fill("input[name=q]", "打卡")
            tab.click(".groupfilter button[type=submit]")
            tab.wait_for_selector("p.count:has-text('共 1 个群')")
            assert tab.locator("table.groups tr").count() == 2  # the header and 打卡群
            tab.screenshot(path=str(tmp_path / f"groups-search-{name}.png"), full_page=True)
            tab.click("text=客户群")
            tab.click("text=VIP会员群")
            tab.wait_for_selector(".mixbar")
            tab.select_option("select[name=tier]", "high")
            tab.fill("input[name=tags]", "会员、福利群")
            tab.click("#settings button[type=submit]")
            tab.wait_for_selector("p.flash")
            assert "高价值（设定）" in tab.inner_text("table.kv") and "会员、福利群" in tab.inner_text("table.kv")
            tab.screenshot(path=str(tmp_path / f"group-{name}.png"), full_page=True)
            tab.click("text=客户群")
            tab.click("text=群群发与群 SOP →")
            tab.wait_for_selector("#group-sops")
            tab.screenshot(path=str(tmp_path / f"group-campaigns-{name}.png"), full_page=True)
            tab.click("text=新建群群发 →")
            tab.fill("input[name=name]", f"周末群活动-{name}")
            tab.fill("textarea[name=tpl_default]", "{{ brand }}周末活动，群里见")
            tab.select_option("select[name=mix_tier]", "high")
            tab.fill("input[name=send_at]", "2026-11-25T10:00")
            tab.click("button[value=preview]")
            tab.wait_for_selector("#preview")
            assert tab.inner_text("#preview-to-send") == "1"
            tab.screenshot(path=str(tmp_path / f"group-broadcast-new-{name}.png"), full_page=True)
            tab.click("text=← 群群发与群 SOP")
            tab.click("text=新建群 SOP →")
            tab.fill("input[name=name]", f"新群七天-{name}")
            tab.fill("input[name=day_0]", "1")
            tab.select_option("select[name=template_0]", "group_sop/rules")
            tab.click("button[value=preview]")
            tab.wait_for_selector("#preview")
            assert int(tab.inner_text("#preview-groups")) >= 1
            tab.screenshot(path=str(tmp_path / f"group-sop-new-{name}.png"), full_page=True)
            assert problems == []
        browser.close()


def test_the_sidebar_offers_the_tiers_group_code(app):
    from bot.models import CustomerGroup
    from bot.web.sidebar.card import CardSources, build_card

    db = app.extensions["scrm.db"]
    seed_groups(db)
    settings = app.extensions["scrm.settings"]
    with db.begin() as s:
        s.scalar(select(CustomerGroup).where(CustomerGroup.chat_id == "wrVIP0001")).tier = "important_value"
    with db.sessions() as s:
        vip = s.scalar(select(Customer).where(Customer.external_userid == "wm000000"))
        plain = s.scalar(select(Customer).where(Customer.external_userid == "wm000008"))
        card = build_card(s, vip, "zhangsan", settings, MORNING, CardSources.from_settings(settings))
        assert "会员专属群「VIP会员群」" in card.action.text and "https://example.invalid/qr.png" in card.action.text
        other = build_card(s, plain, "zhangsan", settings, MORNING, CardSources.from_settings(settings))
        assert "qr.png" not in other.action.text
        assert "入群" in [i["what"] for i in card.interactions]


def test_tier_mix_counts_churn_risk_where_predictions_exist(app):
    from bot.contacts.groups import tier_mix
    from bot.models import CustomerGroup, CustomerPrediction

    db = app.extensions["scrm.db"]
    seed_groups(db)
    with db.begin() as s:
        external = dict(s.execute(select(Customer.external_userid, Customer.id)).all())
        for customer, risk in (("wm000000", "high"), ("wm000001", "high"), ("wm000002", "low")):
            s.add(CustomerPrediction(customer_id=external[customer], run_id=1, p_alive=0.5, churn_risk=risk,
                                     expected_purchases=1.0, expected_spend_fen=100, predicted_value_fen=100))
    with db.sessions() as s:
        group = s.scalar(select(CustomerGroup).where(CustomerGroup.chat_id == "wrVIP0001"))
        mix = tier_mix(s, [group.id])[group.id]
    assert mix.churn_risks == {"high": 2, "low": 1}
    client = signed_in(app, "vera", "viewer")
    assert "高 2、低 1" in client.get(f"/console/groups/{group.id}").get_data(as_text=True)


def test_joining_a_group_feeds_activity(app):
    from bot.contacts.groups import upsert_group
    from bot.models import Interaction
    from segments.policy import TierPolicy

    db = app.extensions["scrm.db"]
    seed_console(db)
    settings = app.extensions["scrm.settings"]
    assert dict(TierPolicy.from_settings(settings.tiers).activity_weights)["group_join"] == 1
    with db.begin() as s:
        group, changes = upsert_group(s, {"chat_id": "wrA", "name": "A", "owner": "zhangsan", "member_list": [
            {"userid": "wm000011", "type": 2, "join_time": int(MORNING.timestamp())}]}, MORNING)
        record_changes(s, group, changes, None)
        customer = s.scalar(select(Customer).where(Customer.external_userid == "wm000011"))
        assert customer.last_interaction_at == MORNING
        assert s.scalar(select(Interaction.kind).where(Interaction.customer_id == customer.id)) == "group_join"
