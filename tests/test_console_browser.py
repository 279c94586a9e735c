"""The console in real headless Chromium, against the sandbox WeCom: an operator signs in, the
dashboard's charts render (a canvas each, no console errors), a broadcast for two tiers is built with
the live count, previewed and scheduled; the due job plans its run and the outbox delivers it to the
sandbox in-process (as `scrm demo` does), the sandbox's log shows the hold-out customers got nothing,
and its report page charts the effect, overall and by tier. Then the rules page refuses an invalid
rule with the reason and saves a valid one, the greetings & coupons page shows its previews, and the
system page's WeCom check answers OK. Screenshots land in the test's tmp dir (docs/img/console.png is
the same dashboard over the demo's data: `scrm demo`, then sign in with the login it prints)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from bot.campaigns.broadcasts import dispatch_due, run_ref
from bot.models import Broadcast, Customer, Follow, Order, OutboxMessage, RuleOverride
from bot.outbox.mass import poll_mass_results, submit_mass_messages
from bot.outbox.policy import ContactPolicy
from tests.campaign_data import MORNING
from tests.console_support import PASSWORD, add_user, seed_console
from tests.support import control, read

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists() or find_spec("playwright") is None,
    reason="browser tests need Debian's chromium at /usr/bin/chromium and the playwright package "
           "(pip install -e '.[test]'; apt-get install chromium) — .ci/run installs both")


@pytest.fixture
def app(wired: Any) -> Any:
    """The bot served on a real port with its WeCom client pointed at the sandbox."""
    return wired


@pytest.fixture
def served(app: Any, sandbox: Any) -> Iterator[str]:
    app.extensions["scrm.clock"] = lambda: MORNING - timedelta(days=1)
    seed_console(app.extensions["scrm.db"])
    with app.extensions["scrm.db"].begin() as s:  # added two days ago: the daily chart shows them
        s.execute(update(Follow).values(added_at=MORNING - timedelta(days=2)))
    add_user(app.extensions["scrm.db"], "olga", "operator")
    control(sandbox, "seed", {"staff": [{"userid": "zhangsan"}], "contacts": [
        {"userid": "zhangsan", "external_userid": f"wm{i:06d}", "name": f"客户{i}"} for i in range(12)]})
    yield app.extensions["bot.url"]


@pytest.fixture
def page() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1360, "height": 900}, locale="zh-CN")
        context.set_default_timeout(15_000)
        tab = context.new_page()
        tab.problems = []  # console errors and uncaught exceptions, asserted empty
        tab.on("console", lambda m: m.type == "error" and tab.problems.append(f"{m.text} {m.location}"))
        tab.on("pageerror", lambda e: tab.problems.append(str(e)))
        yield tab
        context.close()
        browser.close()


def sign_in_on_the_page(page: Any, url: str) -> None:
    """Open ``url`` signed out, sign in as olga on the page it redirects to, and land back on ``url``."""
    page.goto(url)
    assert "/console/login" in page.url
    page.fill("input[name=name]", "olga")
    page.fill("input[name=password]", PASSWORD)
    page.click("button:has-text('登录')")
    page.wait_for_url(url)


def test_an_operator_builds_previews_schedules_and_measures_a_tiered_broadcast(app, sandbox, served, page, tmp_path):
    from playwright.sync_api import expect

    sign_in_on_the_page(page, f"{served}/console/")

    charts = [f"#{el.get_attribute('id')}" for el in page.query_selector_all("[data-chart]")]
    assert {"#chart-value", "#chart-stage", "#chart-engagement", "#chart-flows", "#chart-new"} <= set(charts)
    for chart in charts:
        page.wait_for_selector(f"{chart}[data-rendered] canvas")
    assert "重要价值" in page.inner_text(".rfm")
    page.screenshot(path=str(tmp_path / "console-dashboard.png"), full_page=True)

    page.click("nav a:has-text('群发')")
    page.click("a:has-text('新建群发')")
    expect(page.locator("#live-total")).to_have_text("12")
    page.check("#builder input[name=value_tiers][value=high]")
    expect(page.locator("#live-total")).to_have_text("3")
    page.check("#builder input[name=value_tiers][value=mid]")
    expect(page.locator("#live-total")).to_have_text("7")
    counts = page.inner_text("#live-count")
    assert "高价值（high）\t3" in counts and "中价值（mid）\t4" in counts
    page.fill("#builder input[name=p_alive_below]", "0.5")  # every filter counts (no prediction fitted: none)
    expect(page.locator("#live-total")).to_have_text("0")
    page.fill("#builder input[name=p_alive_below]", "")
    expect(page.locator("#live-total")).to_have_text("7")

    page.fill("input[name=name]", "双十二预热")
    page.fill("textarea[name=tpl_default]", "{{ brand }} 双十二预热开始啦")
    page.fill("textarea[name=tpl_high]", "尊敬的{{ tier_name }}客户{{ customer.name }}，专属礼遇已备好")
    page.fill("input[name=send_at]", "2026-11-24T10:00")
    page.fill("input[name=holdout]", "50")
    page.click("button:has-text('预览')")
    page.wait_for_selector("#preview")
    preview = page.inner_text("#preview")
    assert "尊敬的高价值客户客户0，专属礼遇已备好" in preview and "本店 双十二预热开始啦" in preview
    assert "已退订" in preview
    page.screenshot(path=str(tmp_path / "console-preview.png"), full_page=True)

    page.click("button:has-text('排期发送')")
    page.wait_for_selector("text=已排期")
    page.screenshot(path=str(tmp_path / "console-scheduled.png"), full_page=True)
    db, settings = app.extensions["scrm.db"], app.extensions["scrm.settings"]
    with db.begin() as s:  # the scheduler's due job, at the chosen time
        broadcast = s.scalar(select(Broadcast))
        assert (broadcast.name, broadcast.audience) == ("双十二预热", {"value_tiers": ["high", "mid"]})
        [run] = dispatch_due(s, settings, MORNING + timedelta(minutes=1))
    # the outbox hands the run to WeCom (the sandbox), one add_msg_template per text and sender
    contact = app.extensions["scrm.processor"].clients.contact
    at = MORNING + timedelta(minutes=1)
    outcome = submit_mass_messages(db, contact, ContactPolicy.from_settings(settings), now=at)
    for message in read(sandbox, "sent")["mass_messages"]:
        control(sandbox, f"mass_messages/{message['msgid']}/confirm")
    assert poll_mass_results(db, contact)["confirmed"] == outcome["submitted"]
    with db.sessions() as s:
        by_status = {status: set(ids) for status, ids in _recipients(s, run_ref(run.id)).items()}
    delivered = {u for m in read(sandbox, "sent")["mass_messages"] for u in m["external_userid"]}
    # 7 in the audience, 1 opted out (skipped); half of each tier's sendable customers are held out
    assert len(by_status["skipped"]) == 1 and len(by_status["held_out"]) >= 2
    assert len(by_status["sent"]) + len(by_status["held_out"]) == 6
    assert delivered == by_status["sent"] and not delivered & (by_status["held_out"] | by_status["skipped"])
    calls = [c for c in read(sandbox, "calls") if c["path"] == "externalcontact/add_msg_template"]
    called = {u for c in calls for u in c["body"]["external_userid"]}
    assert called == delivered  # the sandbox's call log: no call ever named a held-out customer

    with db.begin() as s:  # one recipient orders the next day
        buyer = s.scalar(select(Customer.id).where(Customer.external_userid == sorted(delivered)[0]))
        paid_at = MORNING + timedelta(days=1)
        s.add(Order(order_id="o-after-broadcast", customer_id=buyer, amount_fen=29900, paid_at=paid_at,
                    paid_day=paid_at.date().toordinal(), status="paid"))
    app.extensions["scrm.clock"] = lambda: MORNING + timedelta(days=3)

    sign_in_on_the_page(page, f"{served}/console/broadcasts/{broadcast.id}")  # three days on: the session ended
    page.wait_for_selector("#chart-report[data-rendered] canvas")
    page.wait_for_selector("#chart-tiers[data-rendered] canvas")
    report = page.inner_text("main")
    sent = len(by_status["sent"])
    assert f"发送组 {sent} 人" in report and f"转化提升：{100 / sent:+.2f} 个百分点" in report
    tiers = page.inner_text("table.tiers")
    assert "高价值（high）" in tiers and "中价值（mid）" in tiers
    page.screenshot(path=str(tmp_path / "console-report.png"), full_page=True)

    page.click("nav a:has-text('客户')")
    page.fill("input[name=q]", "VIP")
    page.click("button:has-text('筛选')")
    page.screenshot(path=str(tmp_path / "console-customers.png"), full_page=True)
    page.click("a:has-text('客户4')")
    assert "客户等级/VIP" in page.inner_text("main") and "价值分层：" in page.inner_text("main")
    page.screenshot(path=str(tmp_path / "console-customer.png"), full_page=True)
    page.click("nav a:has-text('操作日志')")
    assert "broadcast.create" in page.inner_text("main")
    page.screenshot(path=str(tmp_path / "console-audit.png"), full_page=True)
    page.click("nav a[href='/console/tags']")
    page.screenshot(path=str(tmp_path / "console-tags.png"), full_page=True)

    page.click("nav a:has-text('规则')")
    section = page.locator("section[id='kf.reply_rules']")
    section.locator("summary").click()
    section.locator("textarea").fill('[{"name": "price", "keywords": []}]')
    section.locator("button:has-text('检查并保存')").click()
    assert "未保存：kf.reply_rules[0] needs a name" in page.inner_text("section[id='kf.reply_rules'] .error")
    page.screenshot(path=str(tmp_path / "console-rules-refused.png"), full_page=True)
    refused = [p for p in page.problems if "status of 400" in p and "/console/rules/kf.reply_rules" in p]
    assert len(refused) == 1  # the refusal is a 400 page, which Chromium logs; nothing else went wrong
    page.problems.remove(refused[0])
    section = page.locator("section[id='kf.reply_rules']")
    section.locator("textarea").fill('[{"name": "price", "keywords": ["多少钱", "价格"]}]')
    section.locator("button:has-text('检查并保存')").click()
    page.wait_for_selector("text=已保存客服自动回复规则")
    assert "控制台修改（olga" in page.inner_text("section[id='kf.reply_rules']")
    with db.sessions() as s:
        assert s.get(RuleOverride, "kf.reply_rules").value == [{"name": "price", "keywords": ["多少钱", "价格"]}]
    tags = page.locator("section[id='tags.rules'] form.ruleform")  # one rule from a form, no JSON
    tags.locator("input[name=name]").fill("trial")
    tags.locator("select[name=when]").select_option("kf_keyword")
    tags.locator("input[name=keywords]").fill("试用、小样")
    tags.locator("input[name=tag]").fill("意向/要试用")
    tags.locator("button:has-text('添加')").click()
    page.wait_for_selector("text=已添加到自动打标签规则")
    assert "意向/要试用" in page.inner_text("section[id='tags.rules'] table")
    page.screenshot(path=str(tmp_path / "console-rules.png"), full_page=True)
    page.once("dialog", lambda dialog: dialog.accept())  # 删除 asks first
    page.locator("section[id='tags.rules'] tr:has-text('trial') button:has-text('删除')").click()
    page.wait_for_selector("text=已从自动打标签规则删除 trial")
    assert "意向/要试用" not in page.inner_text("section[id='tags.rules'] table")

    page.click("nav a:has-text('问候与优惠券')")
    assert "作为我们的高价值会员" in page.inner_text("table.greetings")
    page.screenshot(path=str(tmp_path / "console-greetings.png"), full_page=True)

    page.click("nav a[href='/console/system']")
    page.click("button:has-text('检查连通性')")
    check = page.inner_text("#wecom-check")
    assert check.count("正常") == 3 and "失败" not in check
    page.screenshot(path=str(tmp_path / "console-system.png"), full_page=True)
    assert page.problems == []


def _recipients(session: Any, ref: str) -> dict[str, list[str]]:
    """The run's outbox rows' recipients by outcome: sent (submitted / confirmed), held_out, skipped."""
    out: dict[str, list[str]] = {"sent": [], "held_out": [], "skipped": []}
    for status, recipient in session.execute(select(OutboxMessage.status, OutboxMessage.recipient)
                                             .where(OutboxMessage.trigger_ref == ref)):
        out["sent" if status in ("submitted", "confirmed", "sent") else status].append(recipient)
    return out


def test_the_customer_page_shows_churn_risk_and_predicted_value_in_the_browser(app, served, page, tmp_path):
    from datetime import date

    from bot.models import CustomerPrediction, PredictionRun
    from tests.console_support import PASSWORD

    db = app.extensions["scrm.db"]
    with db.begin() as s:
        customer_id = s.scalar(select(func.min(Follow.customer_id)))
        run = PredictionRun(as_of=date(2026, 11, 22), horizon_days=365, discount_rate=0.1, status="fitted",
                            customers=1, repeat_customers=1, seconds=0.1)
        s.add(run)
        s.flush()
        s.add(CustomerPrediction(customer_id=customer_id, run_id=run.id, p_alive=0.18, churn_risk="high",
                                 expected_purchases=1.25, expected_spend_fen=12000, predicted_value_fen=14300,
                                 next_order_on=date(2027, 1, 5)))
    page.goto(f"{served}/console/login")
    page.fill("input[name=name]", "olga")
    page.fill("input[name=password]", PASSWORD)
    page.click("button:has-text('登录')")
    page.wait_for_url(f"{served}/console/")
    page.goto(f"{served}/console/customers/{customer_id}")
    table = page.inner_text("table.kv")
    assert "流失风险\t高: P(alive) 0.18" in table and "¥143.00（365 天，按年 10% 折现）" in table
    page.screenshot(path=str(tmp_path / "console-customer-prediction.png"), full_page=True)
    assert page.problems == []


def test_an_admin_adds_an_operator_and_disables_them_on_the_accounts_page(app, served, page, tmp_path):
    add_user(app.extensions["scrm.db"], "root", "admin")
    page.goto(f"{served}/console/login")
    page.fill("input[name=name]", "root")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.click("nav a:has-text('账号')")
    page.fill("form[action$='/users/add'] input[name=name]", "新同事")
    page.select_option("form[action$='/users/add'] select[name=role]", "viewer")
    page.fill("form[action$='/users/add'] input[name=password]", "a long enough secret")
    page.click("form[action$='/users/add'] button")
    assert "已添加 新同事（只读）" in page.inner_text("main")
    row = page.locator("table.users tr", has_text="新同事")
    row.locator("select[name=active]").select_option("0")
    row.locator("button:has-text('保存')").click()
    assert "已停用" in page.locator("table.users tr", has_text="新同事").inner_text()
    page.screenshot(path=str(tmp_path / "console-users.png"), full_page=True)
    assert page.problems == []
