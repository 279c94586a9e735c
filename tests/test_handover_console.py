"""The console's 渠道 and 交接 pages: the channel report as charts and a table, hand-over batches
with their refusals, and the dry-run plan form; in the test client and in headless Chromium."""

from __future__ import annotations

import re
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from bot.models import Channel, Follow, Transfer
from bot.web.serving import BackgroundServer
from tests.campaign_data import MORNING
from tests.console_support import PASSWORD, add_user, csrf, seed_console, sign_in, signed_in

CHROMIUM = Path("/usr/bin/chromium")


def _seed(app: Any) -> list[int]:
    app.extensions["scrm.clock"] = lambda: MORNING
    db = app.extensions["scrm.db"]
    ids = seed_console(db)  # 3 high, 4 mid, 5 low, all followed by zhangsan
    with db.begin() as s:
        s.add_all([Channel(state="live", name="直播间", members=["zhangsan"], tags=[], welcome="default",
                           cost_fen=600_000, config_id="cfg-live", qr_code="https://example.invalid/qr"),
                   Channel(state="store", name="门店<b>码</b>", members=["zhangsan"], tags=[], welcome="default")])
        for n, customer_id in enumerate(ids):
            state = "live" if n % 2 == 0 else "store"
            s.execute(update(Follow).where(Follow.customer_id == customer_id).values(
                state=state, added_at=MORNING - timedelta(days=n % 3)))
        s.add_all([Transfer(batch="b1", kind="onjob", customer_id=ids[0], external_userid="wm000000",
                            handover_userid="zhangsan", takeover_userid="lisi", why="in turn", status="succeeded",
                            created_at=MORNING),
                   Transfer(batch="b1", kind="onjob", customer_id=ids[1], external_userid="wm000001",
                            handover_userid="zhangsan", takeover_userid="lisi", why="in turn", status="refused",
                            fail_reason="customer_refused", created_at=MORNING)])
    return ids


def test_channel_and_transfer_pages(app):
    _seed(app)
    anonymous = app.test_client().get("/console/channels")
    assert anonymous.status_code == 302 and "/console/login" in anonymous.headers["Location"]
    client = signed_in(app, "vera", "viewer")
    page = client.get("/console/channels").get_data(as_text=True)
    assert "直播间" in page and "门店&lt;b&gt;码&lt;/b&gt;" in page  # escaped
    assert "2 / 2 / 2" in page and "1 / 2 / 3" in page  # live: every other of 3 high, 4 mid, 5 low; store the rest
    assert "3,000.00" in page  # live's cost per high-tier customer: 6000 元 / 2
    assert "data-chart=\"stacked\"" in page and "6,000.00" in page
    transfers = client.get("/console/transfers").get_data(as_text=True)
    assert "b1" in transfers and "wm000001" in transfers and "客户拒绝" in transfers
    plan = client.get("/console/transfers", query_string={"from": "zhangsan", "to": "lisi,wangwu",
                                                          "rule": "value:high=senior"}).get_data(as_text=True)
    assert "规则 value:high" in plan and "senior" in plan and "其余客户，轮流" in plan
    bad = client.get("/console/transfers", query_string={"from": "zhangsan", "to": "lisi", "rule": "nonsense"})
    assert bad.status_code == 200 and "bad rule" in bad.get_data(as_text=True)
    with app.extensions["scrm.db"].sessions() as s:  # the plan form wrote nothing
        assert len(s.scalars(select(Transfer)).all()) == 2


@pytest.mark.skipif(not CHROMIUM.exists() or find_spec("playwright") is None, reason="needs chromium + playwright")
def test_channel_charts_render_in_chromium(app, tmp_path):
    from playwright.sync_api import sync_playwright

    _seed(app)
    add_user(app.extensions["scrm.db"], "olga", "operator")
    with BackgroundServer(app) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"],
                                    headless=True)
        page = browser.new_page(viewport={"width": 1360, "height": 900}, locale="zh-CN")
        problems: list[str] = []
        page.on("console", lambda m: m.type == "error" and problems.append(m.text))
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(f"{server.url}/console/login")
        page.fill("input[name=name]", "olga")
        page.fill("input[name=password]", PASSWORD)
        page.click("button:has-text('登录')")
        page.wait_for_url(f"{server.url}/console/")
        page.click("nav a[href='/console/channels']")
        for chart in ("#chart-channel-adds", "#chart-channel-mix"):
            page.wait_for_selector(f"{chart}[data-rendered] canvas")
        page.screenshot(path=str(tmp_path / "console-channels.png"), full_page=True)
        page.click("a[href='/console/channels?edit=live#new-channel']")
        page.wait_for_selector("h3:has-text('修改渠道')")
        assert page.input_value("input[name=members]") == "zhangsan"
        page.screenshot(path=str(tmp_path / "console-channel-edit.png"), full_page=True)
        page.click("nav a[href='/console/transfers']")
        page.fill("input[name=from]", "zhangsan")
        page.fill("input[name=to]", "lisi,wangwu")
        page.click("button:has-text('试算')")
        page.wait_for_selector("td:has-text('轮流')")
        page.screenshot(path=str(tmp_path / "console-transfers.png"), full_page=True)
        browser.close()
    assert problems == []


def test_an_operator_creates_and_deletes_a_channel_code_in_wecom(wired, sandbox):
    from bot.models import AuditEntry
    from tests.support import control, read

    control(sandbox, "seed", {"staff": [{"userid": u, "name": u} for u in ("zhangsan", "lisi")]})
    wired.extensions["scrm.clock"] = lambda: MORNING
    viewer = signed_in(wired, "vera", "viewer")
    page = viewer.get("/console/channels").get_data(as_text=True)
    assert "新建渠道活码" not in page  # viewers read only
    assert viewer.post("/console/channels/new", data={"csrf_token": csrf(viewer), "state": "expo"}).status_code == 403

    client = signed_in(wired, "olga", "operator")
    form = {"csrf_token": csrf(client), "state": "expo2026", "name": "车展<b>", "members": "zhangsan、lisi",
            "tags": "来源/车展", "stage": "repeat", "welcome": "default", "cost": "6,000.50", "expires": ""}
    for bad, reason in (({"cost": "=1+1"}, "not an amount"), ({"cost": "-1"}, "at most two decimals"),
                        ({"expires": "2020-01-01"}, "already past"), ({"expires": "明天"}, "not a day"),
                        ({"members": ""}, "1 to"), ({"welcome": "../x"}, "letters, digits"),
                        ({"state": "a b"}, "spaces"), ({"members": "nobody"}, "WeCom refused: 60111")):
        refused = client.post("/console/channels/new", data={**form, **bad})
        text = refused.get_data(as_text=True)
        assert refused.status_code == 400 and "未创建" in text and reason in text, (bad, text[:300])
        assert 'value="车展&lt;b&gt;"' in text  # the form comes back as typed, escaped
    assert read(sandbox, "contact_ways") == []

    done = client.post("/console/channels/new", data=form)
    assert done.status_code == 302
    [way] = read(sandbox, "contact_ways")
    assert (way["type"], way["state"], way["user"], way["skip_verify"], way["remark"]) == (
        2, "expo2026", ["zhangsan", "lisi"], True, "车展<b>")
    db = wired.extensions["scrm.db"]
    with db.sessions() as s:
        row = s.scalar(select(Channel).where(Channel.state == "expo2026"))
        assert (row.members, row.tags, row.stage, row.cost_fen, row.config_id) == (
            ["zhangsan", "lisi"], ["来源/车展"], "repeat", 600_050, way["config_id"])
        audit = s.scalar(select(AuditEntry).where(AuditEntry.action == "channels.create"))
        assert (audit.actor, audit.target, audit.after["members"]) == ("olga", "channel:expo2026", ["zhangsan", "lisi"])
    page = client.get("/console/channels").get_data(as_text=True)
    assert "已创建渠道 expo2026" in page and "zhangsan、lisi" in page and way["qr_code"] in page
    assert "还没有欢迎语模板" not in page
    client.post("/console/channels/new", data={**form, "state": "poster", "welcome": "does_not_exist"})
    page = client.get("/console/channels").get_data(as_text=True)  # made, with a note: the file may come later
    assert "已创建渠道 poster" in page and "还没有欢迎语模板 welcome/does_not_exist.j2" in page
    again = client.post("/console/channels/new", data=form)
    assert again.status_code == 400 and "exists already" in again.get_data(as_text=True)

    refused = viewer.post("/console/channels/delete", data={"csrf_token": csrf(viewer), "state": "expo2026"})
    assert refused.status_code == 403
    gone = client.post("/console/channels/delete", data={"csrf_token": csrf(client), "state": "expo2026"})
    assert gone.status_code == 302 and [w["state"] for w in read(sandbox, "contact_ways")] == ["poster"]
    with db.sessions() as s:
        assert s.scalar(select(Channel.status).where(Channel.state == "expo2026")) == "deleted"
        assert s.scalar(select(AuditEntry.before).where(AuditEntry.action == "channels.delete"))["config_id"] \
            == way["config_id"]
    missing = client.post("/console/channels/delete", data={"csrf_token": csrf(client), "state": "expo2026"},
                          follow_redirects=True)
    assert "未删除" in missing.get_data(as_text=True)


def test_without_wecom_the_create_form_says_why(app):
    app.extensions["scrm.processor"].clients = None
    client = signed_in(app, "olga", "operator")
    page = client.get("/console/channels").get_data(as_text=True)
    assert "WeCom 未配置" in page and "disabled" in page
    refused = client.post("/console/channels/new", data={"csrf_token": csrf(client), "state": "k", "members": "a"})
    assert refused.status_code == 400 and "WeCom is not configured" in refused.get_data(as_text=True)


def _zhangsans_customers(wired: Any, sandbox: Any, tmp_path: Path, prefix: str, n: int) -> None:
    """zhangsan's ``n`` customers in the sandbox and, synced, in the database; lisi and wangwu to take them."""
    from tests.handover_support import scrm_runner
    from tests.support import control

    ids = [f"wm{prefix}{i:03d}" for i in range(n)]
    control(sandbox, "seed", {"staff": [{"userid": u} for u in ("zhangsan", "lisi", "wangwu")],
                              "contacts": [{"userid": "zhangsan", "external_userid": e, "name": f"客户{i}"}
                                           for i, e in enumerate(ids)]})
    scrm_runner(wired, tmp_path)("sync", "contacts", "--no-progress")


def test_an_operator_runs_the_hand_over_the_plan_showed_audited(wired, sandbox, tmp_path):
    from bot.models import AuditEntry
    from tests.support import read

    _zhangsans_customers(wired, sandbox, tmp_path, "HO", 5)
    wired.extensions["scrm.clock"] = lambda: MORNING
    viewer = signed_in(wired, "vera", "viewer")
    query = {"from": "zhangsan", "to": "lisi,wangwu"}
    assert "执行交接" not in viewer.get("/console/transfers", query_string=query).get_data(as_text=True)
    form = {"csrf_token": csrf(viewer), **query, "rule": "", "expected": "?"}
    assert viewer.post("/console/transfers/run", data=form).status_code == 403

    client = signed_in(wired, "olga", "operator")
    page = client.get("/console/transfers", query_string=query).get_data(as_text=True)
    assert "执行交接（5 位客户）" in page
    assert "请核对接替成员：<code>lisi</code>、<code>wangwu</code> 在这里没有跟进任何客户" in page
    digest = re.search(r'name="expected" value="([0-9a-f]{16})"', page)[1]
    form = {**form, "csrf_token": csrf(client), "expected": digest}
    stale = client.post("/console/transfers/run", data={**form, "to": "wangwu,lisi"}, follow_redirects=True)
    assert "试算后交接名单有变化（现在 5 位客户）" in stale.get_data(as_text=True)  # the same count, sent elsewhere
    assert read(sandbox, "calls", path="externalcontact/transfer_customer") == []
    long = client.post("/console/transfers/run", data={**form, "message": "长" * 201}, follow_redirects=True)
    assert "最多 200 个字" in long.get_data(as_text=True)

    done = client.post("/console/transfers/run", data={**form, "message": "您好，新的顾问来了"}, follow_redirects=True)
    text = done.get_data(as_text=True)
    assert "5 位客户开始交接" in text
    calls = read(sandbox, "calls", path="externalcontact/transfer_customer")
    assert sorted(c["body"]["takeover_userid"] for c in calls) == ["lisi", "wangwu"]
    assert sum(len(c["body"]["external_userid"]) for c in calls) == 5
    assert {c["body"]["transfer_success_msg"] for c in calls} == {"您好，新的顾问来了"}
    with wired.extensions["scrm.db"].sessions() as s:
        assert s.scalar(select(func.count()).select_from(Transfer)) == 5
        audit = s.scalar(select(AuditEntry).where(AuditEntry.action == "transfers.run"))
    assert (audit.actor, audit.target, audit.after["customers"], audit.after["started"]) == (
        "olga", "staff:zhangsan", 5, 5)
    again = client.post("/console/transfers/run", data=form, follow_redirects=True)  # a reload, a double click
    assert "试算后交接名单有变化（现在 0 位客户）" in again.get_data(as_text=True)
    assert sum(len(c["body"]["external_userid"])
               for c in read(sandbox, "calls", path="externalcontact/transfer_customer")) == 5


def test_three_submits_of_one_hand_over_at_once_run_it_once(wired, sandbox, tmp_path):
    """A double (triple) submit: one batch starts the customers, the others are refused, none is
    recorded as failed because WeCom answered 40129 (客户正在转接中)."""
    from tests.support import read

    _zhangsans_customers(wired, sandbox, tmp_path, "DS", 5)
    wired.extensions["scrm.clock"] = lambda: MORNING
    add_user(wired.extensions["scrm.db"], "olga", "operator")
    clients = [wired.test_client() for _ in range(3)]
    for client in clients:
        assert sign_in(client, "olga").status_code == 302
    query = {"from": "zhangsan", "to": "lisi", "rule": ""}
    page = clients[0].get("/console/transfers", query_string=query).get_data(as_text=True)
    digest = re.search(r'name="expected" value="([0-9a-f]{16})"', page)[1]
    forms = [{"csrf_token": csrf(client), **query, "expected": digest} for client in clients]
    start = threading.Barrier(3)

    def submit(n: int) -> str:
        start.wait()
        return clients[n].post("/console/transfers/run", data=forms[n], follow_redirects=True).get_data(as_text=True)

    with ThreadPoolExecutor(3) as pool:
        pages = list(pool.map(submit, range(3)))
    assert sum("5 位客户开始交接" in p for p in pages) == 1, pages
    assert sum("未交接" in p for p in pages) == 2
    calls = read(sandbox, "calls", path="externalcontact/transfer_customer")
    assert sum(len(c["body"]["external_userid"]) for c in calls) == 5
    with wired.extensions["scrm.db"].sessions() as s:
        assert s.scalars(select(Transfer.status)).all() == ["waiting"] * 5


def test_channel_forms_refuse_what_urls_and_databases_cannot_hold_and_a_silent_wecom(wired, sandbox):
    from tests.support import control, read

    control(sandbox, "seed", {"staff": [{"userid": "zhangsan", "name": "zhangsan"}]})
    client = signed_in(wired, "olga", "operator")
    form = {"csrf_token": csrf(client), "name": "x", "members": "zhangsan", "welcome": "default"}
    for state, reason in (("a/b", "other than /"), ("..", "other than /"), ("nul\x00", "control characters"),
                          ("zw\u200b", "control characters")):
        page = client.post("/console/channels/new", data={**form, "state": state})
        assert page.status_code == 400 and reason in page.get_data(as_text=True), state
    for field, value, reason in (("tags", "来源/\x00", "control characters"), ("members", "g" * 65, "at most 64")):
        page = client.post("/console/channels/new", data={**form, "state": "ok1", field: value})
        assert page.status_code == 400 and reason in page.get_data(as_text=True), field
    assert read(sandbox, "contact_ways") == []
    control(sandbox, "delays", {"path": "externalcontact/add_contact_way", "seconds": 1.5})
    wired.extensions["scrm.processor"].clients.contact.timeout = 0.5  # WeCom answers after the client gave up
    page = client.post("/console/channels/new", data={**form, "state": "slow"})
    assert page.status_code == 400 and "no answer from WeCom" in page.get_data(as_text=True)
    assert "scrm channels sync" in page.get_data(as_text=True)


def test_the_hand_over_plan_refuses_what_is_no_userid(app):
    _seed(app)
    client = signed_in(app, "olga", "operator")
    for query, reason in (({"from": "zhangsan\x00", "to": "lisi"}, "not a member&#39;s userid"),
                          ({"from": "zhangsan", "to": "g" * 65}, "not a member&#39;s userid"),
                          ({"from": "zhangsan", "to": "lisi", "rule": "tag:a\x00=lisi"}, "no control characters"),
                          ({"from": "zhangsan", "to": "ZhangSan"}, "to themselves"),
                          ({"from": "zhangsan", "to": "lisi", "rule": "value:hgih=staff02"},
                           "unknown value tier &#39;hgih&#39;: one of high, mid, low"),
                          ({"from": "zhangsan", "to": "lisi", "rule": "stage:suepr=staff02"}, "unknown stage"),
                          ({"from": "zhangsan", "to": "lisi", "rule": "tag:不存在的标签=staff02"},
                           "of an existing tag, e.g. 客户等级/VIP")):
        page = client.get("/console/transfers", query_string=query)
        assert page.status_code == 200 and reason in page.get_data(as_text=True), query


def test_an_operator_plans_and_runs_a_departed_members_hand_over_with_their_groups(wired, sandbox, tmp_path):
    from bot.models import AuditEntry
    from tests.support import control, read

    _zhangsans_customers(wired, sandbox, tmp_path, "DP", 4)
    control(sandbox, "handover/groups", {"owner": "zhangsan", "name": "VIP群", "chat_id": "wrVIP"})
    control(sandbox, "staff/zhangsan/resign", {})
    wired.extensions["scrm.clock"] = lambda: MORNING
    query = {"kind": "departed", "to": "lisi、wangwu", "members": "", "rule": ""}
    viewer = signed_in(wired, "vera", "viewer")
    seen = viewer.get("/console/transfers", query_string=query).get_data(as_text=True)
    assert "离职继承试算结果" in seen and "执行交接" not in seen  # viewers see the plan, cannot run it

    client = signed_in(wired, "olga", "operator")
    page = client.get("/console/transfers", query_string=query).get_data(as_text=True)
    assert "执行交接（4 位客户、1 个客户群）" in page and "客户群：1 个转交新群主（lisi 1）" in page
    assert 'name="message"' not in page  # WeCom sends no message for departed members
    digest = re.search(r'name="expected" value="([0-9a-f]{16})"', page)[1]
    form = {"csrf_token": csrf(client), **query, "nogroups": "", "from": "", "expected": digest}
    worded = client.post("/console/transfers/run", data={**form, "message": "您好"}, follow_redirects=True)
    assert "离职继承时 WeCom 不向客户发送消息" in worded.get_data(as_text=True)
    alone = client.post("/console/transfers/run", data={**form, "nogroups": "1"}, follow_redirects=True)
    assert "试算后交接名单有变化（现在 4 位客户、0 个客户群）" in alone.get_data(as_text=True)
    assert read(sandbox, "calls", path="externalcontact/resigned/transfer_customer") == []

    done = client.post("/console/transfers/run", data=form, follow_redirects=True).get_data(as_text=True)
    assert "4 位客户开始交接" in done and "客户群转交 1 个，失败 0 个" in done
    calls = read(sandbox, "calls", path="externalcontact/resigned/transfer_customer")
    assert sorted(c["body"]["takeover_userid"] for c in calls) == ["lisi", "wangwu"]
    assert {g["chat_id"]: g["owner"] for g in read(sandbox, "handover/groups")} == {"wrVIP": "lisi"}
    with wired.extensions["scrm.db"].sessions() as s:
        audit = s.scalar(select(AuditEntry).where(AuditEntry.action == "transfers.run"))
    assert (audit.actor, audit.target, audit.after["kind"], audit.after["customers"], audit.after["groups_moved"]) \
        == ("olga", "departed:*", "departed", 4, 1)
    again = client.post("/console/transfers/run", data=form, follow_redirects=True)  # a reload, a double click
    assert "试算后交接名单有变化（现在 0 位客户、0 个客户群）" in again.get_data(as_text=True)
    assert len(read(sandbox, "calls", path="externalcontact/resigned/transfer_customer")) == len(calls)

    control(sandbox, "faults", {"path": "externalcontact/get_unassigned_list", "errcode": 48002})
    refused = client.get("/console/transfers", query_string=query).get_data(as_text=True)
    assert "WeCom refused: 48002" in refused and "执行交接" not in refused
    bad = client.get("/console/transfers", query_string={**query, "members": "zhang san"}).get_data(as_text=True)
    assert "not a member&#39;s userid" in bad
    wired.extensions["scrm.processor"].clients = None
    unset = client.get("/console/transfers", query_string=query).get_data(as_text=True)
    assert "WeCom is not configured" in unset


def test_an_operator_changes_a_channel_code_and_only_what_changed_goes_to_wecom(wired, sandbox):
    from bot.models import AuditEntry
    from tests.support import control, read

    control(sandbox, "seed", {"staff": [{"userid": u, "name": u} for u in ("zhangsan", "lisi", "wangwu")]})
    wired.extensions["scrm.clock"] = lambda: MORNING
    client = signed_in(wired, "olga", "operator")
    form = {"csrf_token": csrf(client), "state": "expo", "name": "车展", "members": "zhangsan、lisi",
            "tags": "来源/车展", "stage": "", "welcome": "default", "cost": "6000", "expires": "2026-12-31"}
    assert client.post("/console/channels/new", data=form).status_code == 302
    edit = client.get("/console/channels", query_string={"edit": "expo"}).get_data(as_text=True)
    assert "修改渠道 <code>expo</code>" in edit and 'value="zhangsan、lisi"' in edit and 'value="6000.00"' in edit
    assert 'value="2026-12-31"' in edit and "保存修改" in edit
    viewer = signed_in(wired, "vera", "viewer")
    assert "修改渠道" not in viewer.get("/console/channels?edit=expo").get_data(as_text=True)

    same = client.post("/console/channels/update", data={**form, "cost": "6,000.00"}, follow_redirects=True)
    assert "渠道 expo 没有改动" in same.get_data(as_text=True)
    assert read(sandbox, "calls", path="externalcontact/update_contact_way") == []

    form.update(tags="来源/车展、高意向", cost="7000")
    local = client.post("/console/channels/update", data=form, follow_redirects=True)
    assert "已修改渠道 expo：标签、成本" in local.get_data(as_text=True)
    assert read(sandbox, "calls", path="externalcontact/update_contact_way") == []  # rules stay here

    single = client.post("/console/channels/update", data={**form, "members": "wangwu"})
    assert single.status_code == 400 and "未修改" in single.get_data(as_text=True)
    assert "single-member" in single.get_data(as_text=True)
    moved = client.post("/console/channels/update", data={**form, "members": "lisi、wangwu", "name": "车展二期"},
                        follow_redirects=True)
    assert "已修改渠道 expo：名称、接待成员" in moved.get_data(as_text=True)
    [way] = read(sandbox, "contact_ways")
    assert (way["user"], way["remark"]) == (["lisi", "wangwu"], "车展二期")
    with wired.extensions["scrm.db"].sessions() as s:
        row = s.scalar(select(Channel).where(Channel.state == "expo"))
        assert (row.members, row.tags, row.cost_fen) == (["lisi", "wangwu"], ["来源/车展", "高意向"], 700_000)
        audits = s.scalars(select(AuditEntry).where(AuditEntry.action == "channels.update")
                           .order_by(AuditEntry.id)).all()
    assert [(a.before["members"], a.after["members"]) for a in audits] == [
        (["zhangsan", "lisi"], ["zhangsan", "lisi"]), (["zhangsan", "lisi"], ["lisi", "wangwu"])]
    gone = client.post("/console/channels/update", data={**form, "state": "nope"})
    assert gone.status_code == 400 and "no channel" in gone.get_data(as_text=True)


def test_a_departed_members_groups_moved_without_an_answer_are_recorded_and_the_batch_is_listed(wired, sandbox):
    """Groups only (no customers): the batch is still listed; a move WeCom did not answer is recorded as
    unknown, audited, and the page says nothing about customers refusing (departed hand-overs cannot be)."""
    from bot.models import AuditEntry, GroupTransfer
    from tests.support import control

    control(sandbox, "seed", {"staff": [{"userid": u} for u in ("zhangsan", "lisi")]})
    control(sandbox, "handover/groups", {"owner": "zhangsan", "name": "VIP群", "chat_id": "wrVIP"})
    control(sandbox, "staff/zhangsan/resign", {})
    wired.extensions["scrm.clock"] = lambda: MORNING
    client = signed_in(wired, "olga", "operator")
    query = {"kind": "departed", "to": "lisi"}
    page = client.get("/console/transfers", query_string=query).get_data(as_text=True)
    assert "执行交接（0 位客户、1 个客户群）" in page
    digest = re.search(r'name="expected" value="([0-9a-f]{16})"', page)[1]
    control(sandbox, "delays", {"path": "externalcontact/groupchat/transfer", "seconds": 1.5})
    wired.extensions["scrm.processor"].clients.contact.timeout = 0.5  # WeCom answers after the client gave up
    done = client.post("/console/transfers/run", data={"csrf_token": csrf(client), **query, "expected": digest},
                       follow_redirects=True)
    text = done.get_data(as_text=True)
    assert done.status_code == 200 and "客户群转交 0 个，失败 0 个，未得到答复 1 个" in text
    assert "（客户 24 小时内可拒绝）" not in text and "（24 小时后自动接替）" in text
    assert "<td>离职继承</td>" in text and "未得到答复 1<" in text  # the batch row, groups only
    with wired.extensions["scrm.db"].sessions() as s:
        assert s.scalar(select(GroupTransfer.status)) == "unknown"
        assert s.scalar(select(AuditEntry).where(AuditEntry.action == "transfers.run")).after["groups_unknown"] == 1
