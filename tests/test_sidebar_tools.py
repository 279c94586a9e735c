"""The sidebar's tools beside the card: the 话术库 (quick replies by tier), coupons issued by a member
within a daily limit, the customer's pending sequence steps, and the why read from the last re-tier."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import func, select

from bot.models import AuditEntry, Coupon, Customer, Follow, Order, OutboxMessage, TierRun
from bot.outbox.messages import MessageTemplates
from bot.outbox.quick_replies import QuickReplyError, load_quick_replies, quick_replies_for
from templates import MESSAGES_DIR
from tests.sidebar_support import OTHERS, OWN, SidebarWorld, serve_world, sign_in


@pytest.fixture
def world(overrides, sandbox, sandbox_state) -> Iterator[SidebarWorld]:
    yield from serve_world(overrides, sandbox, sandbox_state)


def _customer(**tiers: Any) -> SimpleNamespace:
    return SimpleNamespace(name="陈小姐", external_userid=OWN, stage=None, **tiers)


TIER_SAMPLES = [
    {"value_tier": "high", "rfm_segment": "important_value"},
    {"value_tier": "mid", "rfm_segment": "important_retain"},
    {"value_tier": "mid", "rfm_segment": "general_keep"},
    {"value_tier": "low", "rfm_segment": None},
    {"value_tier": None, "rfm_segment": None},
]

# ---------------------------------------------------------------- 话术库


@pytest.mark.parametrize("tiers", TIER_SAMPLES)
def test_every_quick_reply_renders_for_every_tier_it_is_meant_for(tiers):
    templates = MessageTemplates()
    replies = quick_replies_for(_customer(**tiers), templates, "好物店")
    assert replies, tiers
    for reply in replies:
        assert reply.text and "{{" not in reply.text and reply.template.startswith(f"quick_reply/{reply.name}")
    names = {r.name for r in replies}
    assert {"greeting", "price", "shipping", "after_sales"} <= names  # for everyone


def test_quick_replies_follow_the_tier_and_the_tier_variant_of_the_text():
    templates = MessageTemplates()
    high = {r.name: r for r in quick_replies_for(_customer(**TIER_SAMPLES[0]), templates, "好物店")}
    mid = {r.name for r in quick_replies_for(_customer(**TIER_SAMPLES[2]), templates, "好物店")}
    assert "member_day" in high and "flash_sale" not in high and "new_guide" not in high
    assert "flash_sale" in mid and "member_day" not in mid
    assert high["price"].template == "quick_reply/price.high.j2" and "会员价" in high["price"].text
    assert "陈小姐" in high["greeting"].text and "好物店" in high["greeting"].text
    every_template = {p.name.split(".")[0] for p in (MESSAGES_DIR / "quick_reply").glob("*.j2")}
    assert every_template == {r.name for r in load_quick_replies(templates)}  # nothing unlisted, nothing missing


def _library(tmp_path: Path, index: str, **texts: str) -> MessageTemplates:
    folder = tmp_path / "quick_reply"
    folder.mkdir(exist_ok=True)
    (folder / "index.toml").write_text(index, encoding="utf-8")
    for name, text in texts.items():
        (folder / f"{name}.j2").write_text(text, encoding="utf-8")
    return MessageTemplates(str(tmp_path))


def test_an_operators_library_replaces_the_shipped_one(tmp_path):
    templates = _library(tmp_path, '[[reply]]\nname = "hello"\ntitle = "你好"\n', hello="{{ customer.name }}，你好")
    replies = quick_replies_for(_customer(**TIER_SAMPLES[0]), templates, "店")
    assert [(r.title, r.text) for r in replies] == [("你好", "陈小姐，你好")]


@pytest.mark.parametrize(("index", "texts", "error"), [
    ('[[reply]]\nname = "gone"\ntitle = "没有模板"\n', {}, "no template"),
    ('[[reply]]\nname = "x"\ntitle = "t"\ncolour = "red"\n', {"x": "hi"}, "unknown key"),
    ('[[reply]]\nname = "X Y"\ntitle = "t"\n', {}, "name must be"),
    ('[[reply]]\nname = "x"\ntitle = ""\n', {"x": "hi"}, "title must be"),
    ('[[reply]]\nname = "x"\ntitle = "t"\ntiers = "high"\n', {"x": "hi"}, "tiers must be"),
    ('[[reply]]\nname = "x"\ntitle = "t"\n[[reply]]\nname = "x"\ntitle = "u"\n', {"x": "hi"}, "share a name"),
    ('[[reply]\n', {}, "index.toml"),
    ('[[reply]]\nname = "x"\ntitle = "t"\n', {"x": "{% if %}"}, "TemplateSyntaxError"),
])
def test_a_broken_library_says_where_and_why(tmp_path, index, texts, error):
    with pytest.raises(QuickReplyError, match=error):
        load_quick_replies(_library(tmp_path, index, **texts))


def test_the_card_offers_the_customers_quick_replies(world):
    card = sign_in(world, "zhangsan").get(f"{world.url}/sidebar/customer/{OWN}").text
    assert "话术库" in card and "会员日邀请" in card and "限时折扣提醒" not in card
    assert 'data-send="qr-greeting"' in card and 'data-reply-filter' in card


# ---------------------------------------------------------------- coupons


def _csrf(browser: Any, world: SidebarWorld) -> str:
    return re.search(r'data-csrf="([^"]+)"', browser.get(f"{world.url}/sidebar/").text)[1]


def _issue(browser: Any, world: SidebarWorld, definition: str, key: str, customer: str = OWN,
           csrf: str | None = None) -> Any:
    return browser.post(f"{world.url}/sidebar/customer/{customer}/coupons", json={"definition": definition, "key": key},
                        headers={"X-CSRF-Token": csrf if csrf is not None else _csrf(browser, world)})


def _staff_coupons(world: SidebarWorld) -> list[Coupon]:
    with world.db().begin() as session:
        rows = list(session.scalars(select(Coupon).where(Coupon.issue_ref.like("staff:%")).order_by(Coupon.id)))
        session.expunge_all()
        return rows


def test_the_card_lists_only_the_coupons_the_customers_tier_may_have(world):
    card = sign_in(world, "zhangsan").get(f"{world.url}/sidebar/customer/{OWN}").text
    offered = set(re.findall(r'data-coupon="([A-Z_]+)"', card))
    assert offered == {"THANKS", "VIP", "WINBACK", "BIRTHDAY", "NEWBIE"}  # FLASH is for mid only
    assert "今天已发 0/20" in card


def test_a_tap_issues_one_coupon_audited_as_the_member_and_a_retry_returns_it(world):
    browser = sign_in(world, "zhangsan")
    done = _issue(browser, world, "VIP", "tap-0001")
    assert done.status_code == 200, done.text
    answer = done.json()
    assert answer["created"] is True and answer["title"] == "专属优惠券" and answer["issued_today"] == 1
    assert answer["code"] in answer["text"] and "陈小姐" in answer["text"]  # coupon/vip.j2, ready to send
    again = _issue(browser, world, "VIP", "tap-0001").json()  # a retried request: the same coupon
    assert (again["created"], again["code"], again["issued_today"]) == (False, answer["code"], 1)
    coupon, = _staff_coupons(world)
    assert (coupon.definition, coupon.issue_ref, coupon.status) == ("VIP", "staff:zhangsan:tap-0001", "issued")
    with world.db().begin() as session:
        audit, = session.scalars(select(AuditEntry))
        assert (audit.actor, audit.action, audit.after["definition"], audit.after["source"]) \
            == ("staff:zhangsan", "sidebar.coupon_issue", "VIP", "staff")
        assert abs((audit.at - datetime.now(UTC)).total_seconds()) < 60
    second = _issue(browser, world, "VIP", "tap-0002").json()  # a new tap is a new coupon
    assert second["created"] is True and second["code"] != answer["code"] and second["issued_today"] == 2


def test_coupons_are_refused_without_csrf_for_others_customers_and_outside_the_tier(world):
    browser = sign_in(world, "zhangsan")
    assert _issue(browser, world, "VIP", "tap-0001", csrf="forged").status_code == 403
    assert _issue(browser, world, "VIP", "tap-0001", customer=OTHERS).status_code == 403
    flash = _issue(browser, world, "FLASH", "tap-0001")
    assert flash.status_code == 403 and "分层" in flash.json()["error"]
    assert _issue(browser, world, "NOPE", "tap-0001").status_code == 400
    assert _issue(browser, world, "VIP", "short").status_code == 400
    assert _issue(browser, world, "VIP", "bad key with spaces").status_code == 400
    bad = browser.post(f"{world.url}/sidebar/customer/{OWN}/coupons", json=["VIP"],
                       headers={"X-CSRF-Token": _csrf(browser, world)})
    assert bad.status_code == 400
    assert _staff_coupons(world) == []


def test_over_the_daily_limit_nothing_is_issued_and_the_next_day_it_may_again(overrides, sandbox, sandbox_state):
    for world in serve_world(overrides, sandbox, sandbox_state, daily_coupon_limit=2):
        browser = sign_in(world, "zhangsan")
        assert [_issue(browser, world, "NEWBIE", f"tap-000{i}").status_code for i in range(2)] == [200, 200]
        refused = _issue(browser, world, "VIP", "tap-0009")
        assert refused.status_code == 429
        assert "上限" in refused.json()["error"] and "未发放" in refused.json()["error"]
        assert len(_staff_coupons(world)) == 2
        assert _issue(browser, world, "NEWBIE", "tap-0001").json()["created"] is False  # a retry still answers
        boss = sign_in(world, "boss")  # the limit is per member
        assert _issue(boss, world, "VIP", "tap-0009").status_code == 200
        real = world.app.extensions["scrm.clock"]
        world.app.extensions["scrm.clock"] = lambda real=real: real() + timedelta(days=1)
        browser = sign_in(world, "zhangsan")
        assert _issue(browser, world, "VIP", "tap-0010").status_code == 200


def test_a_limit_of_zero_turns_sidebar_coupons_off(overrides, sandbox, sandbox_state):
    for world in serve_world(overrides, sandbox, sandbox_state, daily_coupon_limit=0):
        browser = sign_in(world, "zhangsan")
        assert "发券未开启" in browser.get(f"{world.url}/sidebar/customer/{OWN}").text
        off = _issue(browser, world, "VIP", "tap-0001")
        assert off.status_code == 429 and "未开启" in off.json()["error"]
        assert _staff_coupons(world) == []


# ---------------------------------------------------------------- pending sequence steps


def _restart_follow(world: SidebarWorld, days_ago: float) -> None:
    with world.db().begin() as session:
        follow = session.scalar(select(Follow).join(Customer).where(Customer.external_userid == OWN))
        follow.added_at = datetime.now(UTC) - timedelta(days=days_ago)


def test_the_card_shows_the_customers_pending_sequence_steps(world):
    browser = sign_in(world, "zhangsan")
    added = datetime.now(UTC) - timedelta(days=1)
    _restart_follow(world, 1)
    card = browser.get(f"{world.url}/sidebar/customer/{OWN}").text
    steps = re.findall(r"<p class=\"step\" data-step-pending>(.*?)</p>", card)
    tz = world.app.extensions["scrm.settings"].tz
    assert len(steps) == 2, card
    assert (added + timedelta(days=3)).astimezone(tz).date().isoformat() in steps[0]
    assert "new_customer 第 3 天" in steps[0] and "sequence/new_customer_guide" in steps[0]
    assert "第 7 天" in steps[1] and "新客首单券" in steps[1]

    with world.db().begin() as session:  # the first step is planned: no longer pending
        customer = session.scalar(select(Customer).where(Customer.external_userid == OWN))
        started = added.astimezone(tz).date().isoformat()
        session.add(OutboxMessage(dedupe_key=f"sequence:new_customer:0:{started}:{customer.id}",
                                  channel="mass_message", customer_id=customer.id, recipient=OWN,
                                  trigger_kind="sequence", trigger_ref=f"new_customer:0:{started}",
                                  content={"text": "t"}, status="pending", scheduled_at=datetime.now(UTC)))
    card = browser.get(f"{world.url}/sidebar/customer/{OWN}").text
    assert len(re.findall(r"data-step-pending>", card)) == 1 and "第 7 天" in card

    with world.db().begin() as session:  # an order since the start ends the flow (exit_on_order)
        customer = session.scalar(select(Customer).where(Customer.external_userid == OWN))
        now = datetime.now(UTC) - timedelta(hours=1)
        session.add(Order(order_id="o-after", customer_id=customer.id, amount_fen=100, paid_at=now,
                          paid_day=now.date().toordinal()))
    card = browser.get(f"{world.url}/sidebar/customer/{OWN}").text
    assert "data-step-pending>" not in card and "没有待发送的跟进步骤" in card


def test_steps_long_past_are_not_pending(world):
    _restart_follow(world, 40)
    card = sign_in(world, "zhangsan").get(f"{world.url}/sidebar/customer/{OWN}").text
    assert "没有待发送的跟进步骤" in card


# ---------------------------------------------------------------- why from the stored re-tier


def test_the_why_uses_the_last_re_tiers_stored_statistics(world, monkeypatch):
    import segments.explain

    day = datetime.now(world.app.extensions["scrm.settings"].tz).date()  # the card's as-of day (local)
    with world.db().begin() as session:
        session.add(TierRun(as_of=day, policy_digest="x", full=True, max_interaction_id=0, recomputed=5,
                            started_at=datetime.now(UTC), seconds=0.1,
                            stats={"n": 5, "sum_last_day": 5 * (day.toordinal() - 30), "sum_orders": 10,
                                   "sum_amount_fen": 5 * 77700, "cuts_last_day": [1, 2, 3, 4],
                                   "cuts_orders": [1, 1, 2, 3], "cuts_amount_fen": [1, 2, 3, 4]}))

    def scan(*_: Any) -> None:
        raise AssertionError("the card scanned every buyer instead of reading the stored statistics")

    monkeypatch.setattr(segments.explain, "aggregate_stats", scan)
    monkeypatch.setattr(segments.explain, "population_stats", scan)
    card = sign_in(world, "zhangsan").get(f"{world.url}/sidebar/customer/{OWN}")
    assert card.status_code == 200
    assert "平均 777.00 元" in card.text and "平均 2.00 笔" in card.text and "平均 30.0 天" in card.text


def test_without_a_stored_run_the_why_is_computed(world):
    card = sign_in(world, "zhangsan").get(f"{world.url}/sidebar/customer/{OWN}").text
    with world.db().begin() as session:
        assert session.scalar(select(func.count()).select_from(TierRun)) == 0
    assert "得出「重要价值」" in card


def test_the_why_says_when_todays_data_points_past_the_stored_tier(world):
    """Tiers change at the re-tier; orders since then move the reasons. The card shows the stored tier and
    says what the next re-tier will make of it, not a reason that argues for another tier unannounced."""
    from bot.models import CustomerTier

    with world.db().begin() as session:
        customer = session.scalar(select(Customer).where(Customer.external_userid == OWN))
        tier = session.get(CustomerTier, customer.id)
        tier.rfm_segment, tier.value_tier, tier.engagement = "general_develop", "low", "churned"
    card = sign_in(world, "zhangsan").get(f"{world.url}/sidebar/customer/{OWN}").text
    assert "得出「重要价值」（显示的「一般发展」来自上次重算；依据最新数据，下次重算后为「重要价值」）" in card
    assert "（显示的「低价值」来自上次重算；依据最新数据，下次重算后为「高价值」）" in card
    assert "（显示的「流失」来自上次重算；依据最新数据，下次重算后为「活跃」）" in card
    with world.db().begin() as session:
        customer = session.scalar(select(Customer).where(Customer.external_userid == OWN))
        session.delete(session.get(CustomerTier, customer.id))
    untiered = sign_in(world, "zhangsan").get(f"{world.url}/sidebar/customer/{OWN}").text
    assert "（尚未分层：下次重算后为「高价值」）" in untiered


def test_taps_at_the_same_moment_stay_within_the_limit(overrides, sandbox, sandbox_state):
    from concurrent.futures import ThreadPoolExecutor

    import requests

    for world in serve_world(overrides, sandbox, sandbox_state, daily_coupon_limit=3):
        browser = sign_in(world, "zhangsan")
        headers, cookies = {"X-CSRF-Token": _csrf(browser, world)}, browser.cookies.get_dict()
        url = f"{world.url}/sidebar/customer/{OWN}/coupons"

        def tap(i: int, url: str = url, headers: dict = headers, cookies: dict = cookies) -> int:
            return requests.post(url, json={"definition": "NEWBIE", "key": f"tap-{i:04d}"}, headers=headers,
                                 cookies=cookies).status_code

        with ThreadPoolExecutor(max_workers=8) as pool:
            codes = list(pool.map(tap, range(12)))
        assert sorted(codes) == [200] * 3 + [429] * 9
        assert len(_staff_coupons(world)) == 3


def test_a_broken_library_stops_the_start_with_one_line(tmp_path):
    from bot.core.config import ConfigError
    from bot.startup import load_settings

    _library(tmp_path, '[[reply]]\nname = "gone"\ntitle = "没有模板"\n')
    with pytest.raises(ConfigError, match="quick_reply/gone"):
        load_settings(overrides={"app": {"templates_dir": str(tmp_path)}}, environ={})


def test_a_reply_that_fails_to_render_costs_the_library_not_the_card(overrides, sandbox, sandbox_state, tmp_path,
                                                                    caplog):
    _library(tmp_path, '[[reply]]\nname = "oops"\ntitle = "坏话术"\n', oops="{{ customer.phone }}")
    broken = {**overrides, "app": {**overrides["app"], "templates_dir": str(tmp_path)}}
    for world in serve_world(broken, sandbox, sandbox_state):
        card = sign_in(world, "zhangsan").get(f"{world.url}/sidebar/customer/{OWN}")
        assert card.status_code == 200 and "话术库暂时不可用" in card.text and "陈小姐" in card.text
        assert any("quick replies unavailable" in r.getMessage() for r in caplog.records)


def test_a_coupon_message_that_fails_to_render_still_issues_the_coupon(overrides, sandbox, sandbox_state, tmp_path):
    (tmp_path / "coupon").mkdir()
    (tmp_path / "coupon" / "vip.j2").write_text("{{ coupon.nope }}", encoding="utf-8")
    broken = {**overrides, "app": {**overrides["app"], "templates_dir": str(tmp_path)}}
    for world in serve_world(broken, sandbox, sandbox_state):
        browser = sign_in(world, "zhangsan")
        done = _issue(browser, world, "VIP", "tap-0001")
        assert done.status_code == 200 and done.json()["text"] == "" and done.json()["created"] is True
        assert len(_staff_coupons(world)) == 1
        missing = _issue(browser, world, "VIP", "tap-0002", customer="wmNoSuchCustomer")
        assert missing.status_code == 404 and missing.json()["error"] == "系统里还没有这位客户"
