"""The console's rules, greetings & coupons pages and the WeCom connectivity check: roles and CSRF on
every new POST, rule edits checked by the start-up validators (refused with the reason, audited with
before and after, picked up by the running inbox processor), the holiday calendar's per-tier previews,
coupon counts and redemption revenue, and the connectivity check against the sandbox."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import select

from bot.models import AuditEntry, Coupon, Order, RuleOverride
from tests.campaign_data import MORNING, seed_audience
from tests.console_support import csrf, signed_in

NEW_POSTS = ["/console/rules/kf.reply_rules", "/console/rules/kf.reply_rules/reset", "/console/system/wecom-check",
             "/console/rules/tags.rules/add", "/console/rules/contacts.channels/delete"]
REPLY_RULES = [{"name": "price", "keywords": ["多少钱"]}, {"name": "human", "keywords": ["人工", "客服"]}]


@pytest.fixture
def overrides(overrides, tmp_path):
    """Reply templates of the brand's own beside the shipped ones (a reply rule needs its template)."""
    (tmp_path / "reply").mkdir()
    for name in ("sample", "first", "second"):
        (tmp_path / "reply" / f"{name}.j2").write_text("小样请找客服领取～", encoding="utf-8")
    return {**overrides, "app": {**overrides["app"], "templates_dir": str(tmp_path)}}


@pytest.fixture
def console(app):
    app.extensions["scrm.clock"] = lambda: MORNING
    return app


def _save(client, key, value, raw=None):
    return client.post(f"/console/rules/{key}", data={"csrf_token": csrf(client),
                                                      "rules": raw if raw is not None else json.dumps(value)})


@pytest.mark.parametrize("path", NEW_POSTS)
def test_a_viewer_cannot_post_and_a_post_needs_its_csrf_token(console, db, path):
    viewer = signed_in(console, "vera", "viewer")
    assert viewer.post(path, data={"csrf_token": csrf(viewer), "rules": "[]"}).status_code == 403
    operator = signed_in(console, "olga", "operator")
    assert operator.post(path, data={"rules": "[]"}).status_code == 400
    with db.sessions() as s:
        assert s.scalars(select(RuleOverride)).all() == []


@pytest.mark.parametrize("page", ["/console/rules", "/console/greetings"])
def test_the_new_pages_need_a_sign_in_and_show_no_edit_form_to_a_viewer(console, client, page):
    assert client.get(page).status_code == 302
    viewer = signed_in(console, "vera", "viewer")
    body = viewer.get(page).get_data(as_text=True)
    assert viewer.get(page).status_code == 200 and "检查并保存" not in body


@pytest.mark.parametrize(("key", "value", "reason"), [
    ("tags.rules", [{"name": "x", "when": "on_sunday", "tag": "a/b"}], "tags.rules[0].when must be one of"),
    ("tags.rules", [{"name": "x", "when": "order_count", "gte": -1, "tag": "a/b"}], "non-negative whole number"),
    ("tags.rules", [{"name": "x", "when": "first_order", "tag": "a/" + "长" * 31}], "1–30 characters"),
    ("tags.rules", [{"name": "x", "when": "tier_entered", "dimension": "rfm_segment", "value": "important_valu",
                     "tag": "a/b"}], "rfm_segment has no value 'important_valu'"),
    ("kf.reply_rules", [{"name": "price", "keywords": []}], "non-empty keywords list"),
    ("kf.reply_rules", [{"name": "price", "keywords": ["x"]}, {"name": "price", "keywords": ["y"]}], "used twice"),
    ("kf.reply_rules", [{"name": "sampel", "keywords": ["x"]}], "no reply template for ['sampel']"),
    ("contacts.channels", {"live": {"tags": ["渠道/直播间"], "stage": "intent"}}, "stage must be one of"),
    ("contacts.channels", {"live": {"colour": "red"}}, "unknown keys ['colour']"),
    ("contacts.channels", [], "must be an object keyed by channel State"),
])
def test_an_invalid_rule_is_refused_with_the_reason_and_nothing_changes(console, db, key, value, reason):
    client = signed_in(console, "olga", "operator")
    response = _save(client, key, value)
    body = response.get_data(as_text=True)
    assert response.status_code == 400 and "未保存" in body
    assert reason.replace("'", "&#39;") in body
    with db.sessions() as s:
        assert s.scalars(select(RuleOverride)).all() == []
        assert s.scalars(select(AuditEntry).where(AuditEntry.action.like("rules.%"))).all() == []


def test_rules_are_added_and_deleted_with_forms_checked_like_json_and_audited(console, db):
    """Operators need no JSON for one rule: an auto-tag rule from its trigger's fields, a reply rule, a
    channel (replaced under its State); each checked with the rules in force, refused with the reason
    (the form keeps what was typed), and a delete names the rule it removes (a stale page is refused)."""
    client = signed_in(console, "olga", "operator")
    page = client.get("/console/rules").get_data(as_text=True)
    assert "添加一条规则" in page and "客服消息含关键词" in page and 'data-confirm="删除 asked_price？"' in page

    def add(key, **fields):
        return client.post(f"/console/rules/{key}/add", data={"csrf_token": csrf(client), "section": key, **fields})

    refused = add("tags.rules", name="big_order", when="order_count", gte="-2", tag="交易/大客户")
    body = refused.get_data(as_text=True)
    assert refused.status_code == 400 and "non-negative whole number" in body and 'value="交易/大客户"' in body
    assert add("tags.rules", name="x", when="order_amount", gte="lots", tag="a/b").status_code == 400
    assert add("tags.rules", name="trial", when="kf_keyword", keywords="试用、 样品,小样", tag="意向/要试用",
               state="ignored").status_code == 302
    assert add("tags.rules", name="big_order", when="order_amount", gte="2999.5", tag="交易/大客户").status_code == 302
    assert add("kf.reply_rules", name="order_status", keywords="退货、退款").status_code == 400  # name used twice
    assert add("kf.reply_rules", name="sample", keywords="样品、小样").status_code == 302
    assert add("contacts.channels", state="expo", tags="渠道/展会、意向/到场", stage="new",
               welcome="").status_code == 302
    assert add("contacts.channels", state="expo", tags="渠道/展会2026", stage="").status_code == 302  # replaced
    with db.sessions() as s:
        stored = {row.key: row.value for row in s.scalars(select(RuleOverride))}
    assert stored["tags.rules"][-2:] == [
        {"name": "trial", "when": "kf_keyword", "tag": "意向/要试用", "keywords": ["试用", "样品", "小样"]},
        {"name": "big_order", "when": "order_amount", "tag": "交易/大客户", "gte": 2999.5}]
    assert stored["kf.reply_rules"][-1] == {"name": "sample", "keywords": ["样品", "小样"]}
    assert stored["contacts.channels"] == {"expo": {"tags": ["渠道/展会2026"]}}

    rules = stored["tags.rules"]
    index = len(rules) - 1
    stale = client.post("/console/rules/tags.rules/delete", data={"csrf_token": csrf(client), "name": "trial",
                                                                  "index": str(index)})
    assert stale.status_code == 409 and "reload the page" in stale.get_data(as_text=True)
    assert client.post("/console/rules/tags.rules/delete", data={"csrf_token": csrf(client), "name": "trial",
                                                                 "index": str(index - 1)}).status_code == 302
    assert client.post("/console/rules/contacts.channels/delete", data={"csrf_token": csrf(client),
                                                                        "name": "expo"}).status_code == 302
    with db.sessions() as s:
        stored = {row.key: row.value for row in s.scalars(select(RuleOverride))}
        actions = [a.action for a in s.scalars(select(AuditEntry).where(AuditEntry.action.like("rules.%"))
                                                .order_by(AuditEntry.id))]
    assert [r["name"] for r in stored["tags.rules"]][-1] == "big_order" and "trial" not in str(stored["tags.rules"])
    assert stored["contacts.channels"] == {}
    assert actions == ["rules.add"] * 5 + ["rules.delete"] * 2
    settings = console.extensions["scrm.rules"].refresh()  # the running processes see the edits
    assert settings.contacts.channels == {} and settings.tags.rules[-1]["name"] == "big_order"


def test_two_operators_saving_from_the_same_page_cannot_both_win(console, db):
    """Each form carries the revision its page showed; a save over a list that moved on since is refused
    (409, nothing changed) instead of silently dropping the other operator's rule."""
    olga, oscar = signed_in(console, "olga", "operator"), signed_in(console, "oscar", "operator")

    def add(client, name, revision):
        return client.post("/console/rules/kf.reply_rules/add", data={
            "csrf_token": csrf(client), "section": "kf.reply_rules", "revision": revision, "name": name,
            "keywords": name})

    assert 'name="revision" value="0"' in olga.get("/console/rules").get_data(as_text=True)
    assert add(olga, "first", "0").status_code == 302
    late = add(oscar, "second", "0")  # oscar's page still shows the config file's list
    assert late.status_code == 409 and "another edit was saved" in late.get_data(as_text=True)
    assert add(oscar, "second", "1").status_code == 302
    stale_json = olga.post("/console/rules/kf.reply_rules", data={
        "csrf_token": csrf(olga), "revision": "1", "rules": json.dumps(REPLY_RULES)})
    assert stale_json.status_code == 409 and json.dumps(REPLY_RULES, ensure_ascii=False)[:20] in \
        stale_json.get_data(as_text=True).replace("&#34;", '"')  # the draft is kept
    with db.sessions() as s:
        row = s.get(RuleOverride, "kf.reply_rules")
        assert row.revision == 2 and [r["name"] for r in row.value][-2:] == ["first", "second"]


@pytest.mark.parametrize(("gte", "reason"), [("inf", "finite number"), ("nan", "finite number"),
                                             ("-Infinity", "finite number"), ("1e309", "at most 1,000,000,000,000")])
def test_a_threshold_that_is_not_a_finite_number_is_refused(console, db, gte, reason):
    client = signed_in(console, "olga", "operator")
    response = client.post("/console/rules/tags.rules/add", data={
        "csrf_token": csrf(client), "section": "tags.rules", "name": "x", "when": "order_count", "gte": gte,
        "tag": "a/b"})
    assert response.status_code == 400 and reason in response.get_data(as_text=True)
    as_json = _save(client, "tags.rules", None, raw='[{"name": "x", "when": "order_amount", "gte": Infinity, '
                                                     '"tag": "a/b"}]')
    assert as_json.status_code == 400 and "non-negative number" in as_json.get_data(as_text=True)
    with db.sessions() as s:
        assert s.scalars(select(RuleOverride)).all() == []


def test_text_that_is_not_json_is_refused_with_its_position(console):
    client = signed_in(console, "olga", "operator")
    response = _save(client, "kf.reply_rules", None, raw='[{"name": "price",]')
    assert response.status_code == 400 and "not valid JSON (line 1" in response.get_data(as_text=True)


def test_an_edit_is_stored_audited_and_picked_up_by_the_running_inbox_processor(console, db, processor):
    default = console.extensions["scrm.settings"].kf.reply_rules
    client = signed_in(console, "olga", "operator")
    response = _save(client, "kf.reply_rules", REPLY_RULES)
    assert response.status_code == 302
    page = client.get("/console/rules").get_data(as_text=True)
    assert "控制台修改（olga" in page and "人工、客服" in page
    with db.sessions() as s:
        entry = s.scalar(select(AuditEntry).where(AuditEntry.action == "rules.update"))
        assert (entry.actor, entry.target) == ("olga", "rules:kf.reply_rules")
        assert entry.before == {"value": default} and entry.after == {"value": REPLY_RULES}
    processor._current_rules()
    assert processor.settings.kf.reply_rules == REPLY_RULES

    channels = {"live_0618": {"tags": ["渠道/直播间"], "stage": "new", "welcome": "default"}}
    assert _save(client, "contacts.channels", channels).status_code == 302
    tag_rules = [{"name": "from_live", "when": "channel", "state": "live_0618", "tag": "渠道/直播"}]
    assert _save(client, "tags.rules", tag_rules).status_code == 302
    processor._current_rules()
    assert processor.settings.contacts.channels == channels
    assert [r.name for r in processor.tag_rules.rules] == ["from_live"]

    assert client.post("/console/rules/kf.reply_rules/reset", data={"csrf_token": csrf(client)}).status_code == 302
    processor._current_rules()
    assert processor.settings.kf.reply_rules == default and processor.settings.contacts.channels == channels
    with db.sessions() as s:
        reset = s.scalar(select(AuditEntry).where(AuditEntry.action == "rules.reset"))
        assert reset.before == {"value": REPLY_RULES} and reset.after["value"] == default


def test_a_stored_override_a_new_config_refuses_is_skipped_not_fatal(console, db):
    from bot.startup import RuleReloader

    with db.begin() as s:
        s.add(RuleOverride(key="contacts.channels", value={"live": {"stage": "intent"}}, updated_by="x"))
        s.add(RuleOverride(key="kf.reply_rules", value=REPLY_RULES, updated_by="x"))
    settings = RuleReloader(db, console.extensions["scrm.settings"]).refresh()
    assert settings.contacts.channels == {} and settings.kf.reply_rules == REPLY_RULES


def test_the_greetings_page_previews_each_holiday_per_tier(console):
    client = signed_in(console, "olga", "operator")
    page = client.get("/console/greetings").get_data(as_text=True)
    assert "2026 年节日问候" in page and "2026-09-25" in page  # 中秋 2026 falls on 25 September
    assert "作为我们的高价值会员" in page and "holiday/mid_autumn.high.j2" in page
    assert "月圆人团圆，本店祝您阖家安康" in page and "holiday/mid_autumn.j2" in page


def test_coupon_counts_and_redemption_revenue_come_from_sql(console, db):
    ids = seed_audience(db, {"high": 2, "mid": 2})
    later, earlier = MORNING + timedelta(days=5), MORNING - timedelta(days=1)
    with db.begin() as s:
        s.add_all([Order(order_id="o1", customer_id=ids[0], amount_fen=45000, paid_at=MORNING,
                         paid_day=MORNING.date().toordinal(), status="paid"),
                   Order(order_id="o2", customer_id=ids[1], amount_fen=9900, paid_at=MORNING,
                         paid_day=MORNING.date().toordinal(), status="refunded")])
        for n, (status, expires, order) in enumerate([("redeemed", later, "o1"), ("redeemed", later, "o2"),
                                                      ("issued", later, None), ("issued", earlier, None),
                                                      ("withdrawn", later, None)]):
            s.add(Coupon(code=f"CODE{n:08d}", definition="VIP", title="专属优惠券", customer_id=ids[n % 4],
                         issue_ref=f"test:{n}", value_fen=5000, status=status, expires_at=expires, order_id=order,
                         redeemed_at=MORNING if status == "redeemed" else None))
        s.add(Coupon(code="GONE00000000", definition="OLDONE", title="旧券", customer_id=ids[0], issue_ref="t",
                     status="expired", expires_at=earlier))
    client = signed_in(console, "olga", "operator")
    page = client.get("/console/greetings").get_data(as_text=True)
    row = page[page.index('<td class="code">VIP</td>'):].split("</tr>")[0]
    cells = [c.split(">", 1)[1].split("<")[0] for c in row.split("<td")[1:]]
    # issued, outstanding, redeemed, rate, expired, withdrawn (not issued: its message did not go out), paid
    # orders, revenue: the refunded order earns nothing
    assert cells[6:] == ["4", "1", "2", "50.0%", "1", "1", "1", "450.00"]
    assert "旧券" in page and "配置中已删除" in page


def test_the_wecom_check_says_ok_against_the_sandbox(wired):
    client = signed_in(wired, "olga", "operator")
    page = client.post("/console/system/wecom-check", data={"csrf_token": csrf(client)}).get_data(as_text=True)
    check = page[page.index('id="wecom-check"'):page.index("</section>", page.index('id="wecom-check"'))]
    assert check.count("正常") == 3 and "失败" not in check
    assert "getcallbackip" in check and "externalcontact/get_follow_user_list" in check
    assert "与自建应用共用同一个 Secret（wecom.kf_secret 未单独配置）" in check


def test_the_wecom_check_names_the_error_code_and_what_to_check(overrides, sandbox):
    from bot.web.app import create_app

    settings = {**overrides, "wecom": {**overrides["wecom"], "api_base_url": f"{sandbox.url}/cgi-bin/",
                                       "contact_secret": "not-the-secret"}}
    app = create_app(settings, environ={}, start_worker=False)
    client = signed_in(app, "olga", "operator")
    page = client.post("/console/system/wecom-check", data={"csrf_token": csrf(client)}).get_data(as_text=True)
    assert "40001" in page and "检查 wecom.contact_secret" in page and "正常" in page
    app.extensions["scrm.db"].dispose()

    unreachable = create_app(overrides, environ={}, start_worker=False)  # api_base_url: port 9, nothing listens
    client = signed_in(unreachable, "oskar", "operator")
    page = client.post("/console/system/wecom-check", data={"csrf_token": csrf(client)}).get_data(as_text=True)
    assert "连接失败" in page and "检查 wecom.api_base_url（http://127.0.0.1:9/cgi-bin/）" in page
    unreachable.extensions["scrm.db"].dispose()


def _seed_two_channels(db) -> None:
    """Two customers came by the live stream, one by the Shanghai store, the rest by no channel."""
    from sqlalchemy import update

    from bot.models import Follow
    from tests.console_support import seed_console

    ids = seed_console(db)
    with db.begin() as s:
        s.execute(update(Follow).where(Follow.customer_id.in_(ids[:2])).values(state="live_0618"))
        s.execute(update(Follow).where(Follow.customer_id == ids[2]).values(state="store_sh"))


def test_customers_filter_by_channel_and_export_the_same_list(console, db):
    _seed_two_channels(db)
    client = signed_in(console, "vera", "viewer")
    page = client.get("/console/customers", query_string={"channel": "live_0618"}).get_data(as_text=True)
    shown = [f"wm{n:06d}" for n in range(12) if f"wm{n:06d}" in page]
    assert shown == ["wm000000", "wm000001"] and 'value="store_sh"' in page and "（无渠道）" in page
    both = client.get("/console/customers?channel=live_0618&channel=store_sh&value_tiers=high").get_data(as_text=True)
    assert [f"wm{n:06d}" for n in range(12) if f"wm{n:06d}" in both] == ["wm000000", "wm000001", "wm000002"]
    none = client.get("/console/customers", query_string={"channel": "~none"}).get_data(as_text=True)
    assert "wm000000" not in none and "wm000003" in none and "wm000011" in none
    csv_text = client.get("/console/customers.csv", query_string={"channel": "store_sh"}).get_data(as_text=True)
    assert "wm000002" in csv_text and "wm000000" not in csv_text
    assert client.get("/console/customers", query_string={"channel": "x" * 65}).status_code == 400


def test_a_broadcast_audience_can_be_a_channel_in_the_builder_and_the_cli(console, db):
    from bot.campaigns.audience import Audience, AudienceError
    from bot.models import Broadcast

    _seed_two_channels(db)
    client = signed_in(console, "olga", "operator")
    builder = client.get("/console/broadcasts/new").get_data(as_text=True)
    assert 'name="channels" value="live_0618"' in builder and "（无渠道）" in builder
    count = client.get("/console/broadcasts/count.json?channels=live_0618&channels=store_sh").get_json()
    assert count["total"] == 3
    assert client.get("/console/broadcasts/count.json", query_string={"channels": "x" * 65}).status_code == 400
    form = {"csrf_token": csrf(client), "name": "直播间回访", "channels": ["live_0618"],
            "tpl_default": "{{ brand }} 直播间专享", "send_at": "2026-11-24T11:00", "holdout": "0"}
    preview = client.post("/console/broadcasts/new", data={**form, "intent": "preview"}).get_data(as_text=True)
    assert "直播间专享" in preview
    assert client.post("/console/broadcasts/new", data={**form, "intent": "schedule"}).status_code == 302
    with db.sessions() as s:
        assert s.scalar(select(Broadcast.audience).where(Broadcast.name == "直播间回访")) == {"channels": ["live_0618"]}
    assert Audience.parse({"channels": ["live_0618", "~none"]}).describe() == "channels=['live_0618', '~none']"
    with pytest.raises(AudienceError, match="channels"):
        Audience.parse({"channels": [f"c{n}" for n in range(51)]})


def test_the_report_by_tier_compares_each_tier_with_its_own_held_out_customers(console, db):
    from bot.campaigns.broadcasts import BroadcastSpec, create_broadcast, dispatch_due, effect_report, run_ref
    from bot.campaigns.effect import effect_by_tier
    from bot.models import Broadcast, CustomerTier, OutboxMessage, TierChange
    from tests.console_support import seed_console

    seed_console(db)
    settings = console.extensions["scrm.settings"]
    with db.begin() as s:
        spec = BroadcastSpec("分层", {"value_tiers": ["high", "mid"]}, {"default": "{{ brand }} 好礼"},
                             MORNING + timedelta(hours=1), None, 50, None)
        broadcast = create_broadcast(s, settings, spec, MORNING)
        [run] = dispatch_due(s, settings, MORNING + timedelta(hours=1, minutes=1))
        rows = s.execute(select(OutboxMessage.customer_id, OutboxMessage.status, CustomerTier.value_tier)
                         .join(CustomerTier, CustomerTier.customer_id == OutboxMessage.customer_id)
                         .where(OutboxMessage.trigger_ref == run_ref(run.id), OutboxMessage.status != "skipped")).all()
        sent = {tier: [c for c, st, t in rows if t == tier and st == "pending"] for tier in ("high", "mid")}
        held = {tier: [c for c, st, t in rows if t == tier and st == "held_out"] for tier in ("high", "mid")}
        paid_at = MORNING + timedelta(days=1)
        for n, customer in enumerate([sent["high"][0], sent["mid"][0], held["mid"][0]]):
            s.add(Order(order_id=f"after-{n}", customer_id=customer, amount_fen=10000 * (n + 1), paid_at=paid_at,
                        paid_day=paid_at.date().toordinal(), status="paid"))
        # a re-tier after the run moves a high recipient to low: the report keeps them in high
        s.get(CustomerTier, sent["high"][0]).value_tier = "low"
        s.add(TierChange(customer_id=sent["high"][0], dimension="value_tier", from_value="high", to_value="low",
                         as_of=paid_at.date(), created_at=MORNING + timedelta(days=2)))
    later = MORNING + timedelta(days=3)
    with db.sessions() as s:
        broadcast = s.get(Broadcast, broadcast.id)
        tiers = effect_by_tier(s, broadcast, 30, settings.tz, later, ("high", "mid", "low"))
        whole = effect_report(s, broadcast, 30, later)
    assert [t.tier for t in tiers] == ["high", "mid"]
    high, mid = tiers
    assert (high.sent.customers, high.held_out.customers) == (len(sent["high"]), len(held["high"]))
    assert (high.sent.converters, high.sent.revenue_fen, high.held_out.converters) == (1, 10000, 0)
    assert (mid.sent.converters, mid.sent.revenue_fen, mid.held_out.converters, mid.held_out.revenue_fen) == \
        (1, 20000, 1, 30000)
    assert high.conversion_lift.difference == pytest.approx(1 / len(sent["high"]))
    assert sum(t.sent.customers for t in tiers) == whole.sent.customers
    assert sum(t.held_out.revenue_fen for t in tiers) == whole.held_out.revenue_fen

    console.extensions["scrm.clock"] = lambda: later
    client = signed_in(console, "vera", "viewer")
    page = client.get(f"/console/broadcasts/{broadcast.id}").get_data(as_text=True)
    assert 'data-chart="tiers"' in page and "分层效果" in page
    table = page[page.index('<table class="list tiers">'):]
    assert "高价值（high）" in table and "中价值（mid）" in table and "低价值" not in table.split("</table>")[0]


def test_cli_commands_and_scheduled_jobs_use_the_operators_rules(console, db, monkeypatch, database_url):
    from bot.cli.context import CliContext
    from bot.schedule.jobs import Runtime
    from bot.startup import RuleReloader

    tag_rules = [{"name": "big", "when": "order_amount", "gte": 50, "tag": "交易/大单"}]
    client = signed_in(console, "olga", "operator")
    assert _save(client, "tags.rules", tag_rules).status_code == 302
    monkeypatch.setenv("SCRM_DATABASE_URL", database_url)
    cli = CliContext(None)
    try:
        assert cli.rule_settings().tags.rules == tag_rules
        assert cli.settings().tags.rules != tag_rules  # the config file's value stays the default seed
    finally:
        cli.close()
    base = console.extensions["scrm.settings"]
    runtime = Runtime(base, db, reloader=RuleReloader(db, base))
    assert runtime.rule_settings().tags.rules == tag_rules
