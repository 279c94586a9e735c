"""The operator console: accounts, sign-in and its throttle, session cookie, CSRF, roles, the audit
log, and each page's content over a small seeded audience."""

from __future__ import annotations

import csv
import io
import re
from datetime import date, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from bot.cli import main
from bot.models import (
    AuditEntry,
    Broadcast,
    CustomerAggregate,
    CustomerTag,
    CustomerTier,
    Follow,
    InboxEvent,
    LoginFailure,
    Operator,
    OutboxMessage,
    Tag,
    TagGroup,
    TierChange,
    TierRun,
)
from tests.campaign_data import MORNING, seed_audience
from tests.console_support import PASSWORD, add_user, csrf, seed_console, sign_in, signed_in

PAGES = ["/console/", "/console/customers", "/console/broadcasts", "/console/broadcasts/new", "/console/audit",
         "/console/broadcasts/count.json", "/console/system", "/console/tags"]


@pytest.fixture
def console(app):
    app.extensions["scrm.clock"] = lambda: MORNING - timedelta(days=1)
    return app


@pytest.fixture
def seeded(console, db):
    return seed_console(db)


def _cli(*args, env, stdin=None):
    from click.testing import CliRunner

    return CliRunner(env={"SCRM_CONFIG": None, **env}).invoke(main, list(args), input=stdin)


# ---------------------------------------------------------------- accounts


def test_user_add_hashes_the_password_and_audits(cli_env, database_url, db):
    result = _cli("user", "add", "alice", "--role", "operator", "--password-stdin", env=cli_env,
                  stdin=PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    with db.sessions() as s:
        alice = s.scalar(select(Operator).where(Operator.name == "alice"))
        entry = s.scalar(select(AuditEntry).where(AuditEntry.action == "user.add"))
    assert alice.role == "operator" and PASSWORD not in alice.password_hash
    assert alice.password_hash.startswith(("scrypt:", "pbkdf2:"))
    assert (entry.actor, entry.target, entry.after) == ("cli", "operator:alice", {"name": "alice", "role": "operator"})
    again = _cli("user", "add", "alice", "--role", "viewer", "--password-stdin", env=cli_env, stdin=PASSWORD + "\n")
    assert again.exit_code == 1 and "exists already" in again.output
    short = _cli("user", "add", "bob", "--role", "viewer", "--password-stdin", env=cli_env, stdin="short\n")
    assert short.exit_code == 1 and "password needs" in short.output
    bad_role = _cli("user", "add", "bob", "--role", "root", "--password-stdin", env=cli_env, stdin=PASSWORD + "\n")
    assert bad_role.exit_code == 2
    listed = _cli("user", "list", env=cli_env)
    assert "alice" in listed.output and "operator" in listed.output and PASSWORD not in listed.output


def test_sign_in_sets_a_strict_session_cookie_and_signs_out(console, db):
    add_user(db, "alice", "operator")
    client = console.test_client()
    response = sign_in(client, "alice")
    assert response.status_code == 302 and response.headers["Location"].endswith("/console/")
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    assert client.get("/console/").status_code == 200
    assert client.post("/console/logout", data={"csrf_token": csrf(client)}).status_code == 302
    assert client.get("/console/").status_code == 302


def test_the_cookie_is_secure_over_https(console, db):
    add_user(db, "alice", "operator")
    client = console.test_client()
    client.get("/console/login", base_url="https://console.example")
    with client.session_transaction(base_url="https://console.example") as session:
        token = session["csrf"]
    response = client.post("/console/login", base_url="https://console.example",
                           data={"name": "alice", "password": PASSWORD, "csrf_token": token})
    assert response.status_code == 302 and "Secure" in response.headers["Set-Cookie"]


def test_wrong_passwords_are_throttled_per_name_and_address(console, db):
    add_user(db, "alice", "operator")
    client = console.test_client()
    for _ in range(5):
        assert sign_in(client, "alice", "wrong password!").status_code == 401
    assert sign_in(client, "alice").status_code == 429  # even the right password, for 15 minutes
    assert sign_in(console.test_client(), "alice", ip="10.0.0.2").status_code == 302  # another address
    console.extensions["scrm.clock"] = lambda: MORNING + timedelta(minutes=16)
    assert sign_in(client, "alice").status_code == 302


def test_parallel_guesses_are_counted_before_any_password_is_checked(console, db):
    """100 parallel tries checked 18 passwords past a limit of 5 (count, then check for 90 ms, then record)."""
    import threading

    add_user(db, "alice", "operator")
    clients = [console.test_client() for _ in range(24)]
    tokens = [csrf(client) for client in clients]
    start, statuses = threading.Barrier(len(clients)), []

    def guess(client: Any, token: str) -> None:
        start.wait()
        statuses.append(client.post("/console/login", data={"name": "alice", "password": "wrong password!",
                                                            "csrf_token": token},
                                    environ_base={"REMOTE_ADDR": "10.0.0.9"}).status_code)

    threads = [threading.Thread(target=guess, args=pair) for pair in zip(clients, tokens, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses.count(401) <= 5 and statuses.count(401) + statuses.count(429) == len(clients)
    with db.sessions() as s:  # each password checked is a failure on record; the refused ones checked none
        assert s.scalar(select(func.count()).select_from(LoginFailure)) == statuses.count(401)


def test_one_name_guessed_from_many_addresses_stops_until_an_admin_unlocks_it(console, db, cli_env):
    add_user(db, "alice", "operator")
    for n in range(20):
        assert sign_in(console.test_client(), "alice", "wrong password!", ip=f"10.1.0.{n}").status_code == 401
    assert sign_in(console.test_client(), "alice", ip="10.2.0.1").status_code == 429
    result = _cli("user", "unlock", "alice", env=cli_env)
    assert result.exit_code == 0 and "20 failed sign-ins forgotten" in result.output
    assert sign_in(console.test_client(), "alice", ip="10.2.0.1").status_code == 302
    with db.sessions() as s:
        assert s.scalar(select(AuditEntry.target).where(AuditEntry.action == "user.unlock")) == "operator:alice"
    assert "nothing to unlock" in _cli("user", "unlock", "alice", env=cli_env).output


def test_behind_a_trusted_proxy_the_throttle_counts_the_visitor_not_the_proxy(overrides, db):
    """Every request came from the proxy's address: five wrong passwords from anyone locked the operator out."""
    from bot.web.app import create_app

    app = create_app({**overrides, "app": {**overrides["app"], "trusted_proxies": 1}}, environ={},
                     start_worker=False)
    try:
        add_user(db, "alice", "operator")
        for _ in range(5):
            client = app.test_client()
            assert client.post("/console/login", data={"name": "alice", "password": "wrong password!",
                                                       "csrf_token": csrf(client)},
                               headers={"X-Forwarded-For": "203.0.113.7"}).status_code == 401
        client = app.test_client()
        token = csrf(client)
        assert client.post("/console/login", data={"name": "alice", "password": PASSWORD, "csrf_token": token},
                           headers={"X-Forwarded-For": "198.51.100.1"}).status_code == 302
        with db.sessions() as s:
            assert s.scalar(select(AuditEntry.ip).where(AuditEntry.action == "login")) == "198.51.100.1"
    finally:
        app.extensions["scrm.db"].dispose()


def test_signing_out_ends_the_session_a_copied_cookie_too(console, db):
    client = signed_in(console, "alice", "operator")
    copied = client.get_cookie("scrm_session").value
    assert client.post("/console/logout", data={"csrf_token": csrf(client)}).status_code == 302
    client.set_cookie("scrm_session", copied)
    assert client.get("/console/").status_code == 302


def test_a_session_in_use_lasts_and_an_idle_one_ends_after_thirty_minutes(console, db):
    """Reading pages wrote nothing into the cookie, so it lapsed 30 minutes after sign-in however busy."""
    from unittest import mock

    client = signed_in(console, "alice", "operator")
    real = __import__("time").time()
    for minutes in (20, 40, 60):  # reading a page every 20 minutes
        with mock.patch("time.time", return_value=real + minutes * 60):
            assert client.get("/console/").status_code == 200
    with mock.patch("time.time", return_value=real + 60 * 60 + 31 * 60):  # then 31 minutes idle
        assert client.get("/console/").status_code == 302


def test_a_session_ends_twelve_hours_after_its_sign_in_however_active(console, db):
    client = signed_in(console, "alice", "operator")
    console.extensions["scrm.clock"] = lambda: MORNING - timedelta(days=1) + timedelta(hours=11, minutes=59)
    assert client.get("/console/").status_code == 200
    console.extensions["scrm.clock"] = lambda: MORNING - timedelta(days=1) + timedelta(hours=12, minutes=1)
    assert client.get("/console/").status_code == 302


def test_unknown_names_and_disabled_operators_cannot_sign_in(console, db):
    add_user(db, "alice", "operator")
    with db.begin() as s:
        s.scalar(select(Operator).where(Operator.name == "alice")).active = False
    assert sign_in(console.test_client(), "alice").status_code == 401
    assert sign_in(console.test_client(), "nobody").status_code == 401


def test_a_session_ends_when_the_operator_is_disabled(console, db):
    client = signed_in(console, "alice", "operator")
    with db.begin() as s:
        s.scalar(select(Operator).where(Operator.name == "alice")).active = False
    assert client.get("/console/").status_code == 302


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "/elsewhere"])
def test_sign_in_never_redirects_off_the_console(console, db, target):
    add_user(db, "alice", "operator")
    client = console.test_client()
    response = client.post(f"/console/login?next={target}",
                           data={"name": "alice", "password": PASSWORD, "csrf_token": csrf(client)})
    assert response.headers["Location"] == "/console/"


# ---------------------------------------------------------------- guard: auth, CSRF, roles


@pytest.mark.parametrize("path", PAGES)
def test_pages_need_a_signed_in_operator(console, path):
    response = console.test_client().get(path)
    if path.endswith(".json"):
        assert response.status_code == 401
    else:
        assert response.status_code == 302 and "/console/login" in response.headers["Location"]


@pytest.mark.parametrize("role", ["admin", "operator", "viewer"])
@pytest.mark.parametrize("path", PAGES)
def test_every_role_reads_every_page(seeded, console, role, path):
    client = signed_in(console, "someone", role)
    response = client.get(path)
    assert response.status_code == 200, response.data[:300]
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    if not path.endswith(".json"):  # every script, style and link from the console itself: no CDN
        sources = re.findall(r'(?:src|href)="([^"]*)"', response.get_data(as_text=True))
        assert sources and all(src.startswith("/") and not src.startswith("//") or src == "data:,"
                               for src in sources), sources


POSTS = ["/console/broadcasts/new", "/console/broadcasts/1/cancel", "/console/logout", "/console/login",
         "/console/system/inbox/1/retry", "/console/tags/merge", "/console/channels/new",
         "/console/channels/delete", "/console/transfers/run"]


@pytest.mark.parametrize("path", POSTS)
def test_a_post_without_the_csrf_token_is_refused(seeded, console, path):
    client = signed_in(console, "alice", "admin")
    assert client.post(path, data={"name": "x", "intent": "preview"}).status_code == 400
    assert client.post(path, data={"csrf_token": "forged", "intent": "preview"}).status_code == 400


def test_a_body_larger_than_any_page_takes_is_refused_unread(seeded, console):
    client = signed_in(console, "alice", "admin")
    # A file part is not bound by the form-memory limit: unchecked, it would be spooled to disk.
    body = (b'--B\r\nContent-Disposition: form-data; name="file"; filename="huge.csv"\r\n\r\n'
            + b"x" * (8 * 1024 * 1024) + b"\r\n--B--\r\n")
    response = client.post("/console/rules/tags", data=body, content_type="multipart/form-data; boundary=B")
    assert response.status_code == 413


@pytest.mark.parametrize("path", ["/console/broadcasts/new", "/console/broadcasts/1/cancel",
                                  "/console/system/inbox/1/retry", "/console/tags/merge", "/console/channels/new",
                                  "/console/channels/delete"])
def test_viewers_change_nothing(seeded, console, db, path):
    _schedule_one(console, db)
    viewer = signed_in(console, "vera", "viewer")
    response = viewer.post(path, data={"csrf_token": csrf(viewer), "intent": "schedule", "name": "v",
                                       "tpl_default": "hi", "send_at": "2026-11-24T10:00"})
    assert response.status_code == 403
    with db.sessions() as s:
        assert [b.status for b in s.scalars(select(Broadcast))] == ["scheduled"]
    assert viewer.post("/console/logout", data={"csrf_token": csrf(viewer)}).status_code == 302


# ---------------------------------------------------------------- dashboard


def test_dashboard_counts_tiers_rfm_and_the_latest_flows(seeded, console, db):
    from bot.web.console.figures import dashboard

    with db.sessions() as s:
        d = dashboard(s, MORNING, 14)
    assert d.customers == 12
    assert [(t["code"], t["count"]) for t in d.value_tiers] == [("high", 3), ("mid", 4), ("low", 5)]
    rfm = {c.code: c for c in d.rfm}
    assert len(rfm) == 8 and rfm["important_value"].customers == 3 and rfm["general_retain"].customers == 9
    # revenue (10000 fen × 1..12): the first three pay 1+2+3 of 78 parts
    assert rfm["important_value"].revenue_share == pytest.approx(6 / 78)
    assert (rfm["important_value"].r_high, rfm["important_value"].f_high, rfm["important_value"].m_high) == (
        True, True, True)
    # the latest day's moves (the day before's mid → low is not one), and who stayed in each tier
    assert {(link["source"], link["target"], link["value"]) for link in d.flows["links"]} == {
        ("之前·中价值", "之后·高价值", 2), ("之前·高价值", "之后·低价值", 1),
        ("之前·高价值", "之后·高价值", 1), ("之前·中价值", "之后·中价值", 4), ("之前·低价值", "之后·低价值", 4)}
    assert d.flows["moved"] == 3
    assert d.flows["as_of"] == "2026-11-20"
    assert [(s["code"], s["count"]) for s in d.engagement] == [("active", 12)]
    page = signed_in(console, "alice", "viewer").get("/console/").get_data(as_text=True)
    assert "重要价值" in page and 'data-chart="sankey"' in page and "echarts.min.js" in page


def test_dashboard_counts_codes_of_an_older_policy_too(seeded, db):
    """The figures count known codes in one pass; any other value is grouped apart, not lost."""
    from bot.web.console.figures import dashboard

    with db.begin() as s:
        s.get(CustomerTier, seeded[0]).value_tier = "legacy"
        s.get(CustomerTier, seeded[1]).rfm_segment = "old_segment"
        s.get(CustomerTier, seeded[2]).engagement = None
    with db.sessions() as s:
        d = dashboard(s, MORNING, 14)
    assert [(t["code"], t["count"]) for t in d.value_tiers] == [("high", 2), ("mid", 4), ("low", 5), ("legacy", 1)]
    assert [(t["code"], t["count"]) for t in d.engagement] == [("active", 11), ("", 1)]
    rfm = {c.code: c for c in d.rfm}
    assert rfm["important_value"].customers == 2  # the old segment keeps its revenue in the total
    assert rfm["important_value"].revenue_share == pytest.approx((1 + 3) / 78)


def test_echarts_is_served_from_the_package(console):
    client = signed_in(console, "alice", "viewer")
    response = client.get("/console/static/echarts.min.js")
    assert response.status_code == 200 and len(response.data) > 500_000
    response.close()


# ---------------------------------------------------------------- customers


def _names(html: str, ids: list[str]) -> list[str]:
    return [i for i in ids if i in html]


def test_customers_search_by_name_id_and_tag(seeded, console):
    client = signed_in(console, "alice", "viewer")
    by_name = client.get("/console/customers", query_string={"q": "客户1"}).get_data(as_text=True)
    assert "wm000001" in by_name and "wm000010" in by_name and "wm000002" not in by_name
    by_id = client.get("/console/customers", query_string={"q": "wm000003"}).get_data(as_text=True)
    assert _names(by_id, [f"wm{n:06d}" for n in range(12)]) == ["wm000003"]
    by_tag = client.get("/console/customers", query_string={"q": "VIP"}).get_data(as_text=True)
    assert _names(by_tag, [f"wm{n:06d}" for n in range(12)]) == ["wm000004"]
    wildcard = client.get("/console/customers", query_string={"q": "%"}).get_data(as_text=True)
    assert "没有符合条件的客户" in wildcard  # a LIKE wildcard is searched for, not obeyed


def test_customers_filter_by_tiers_and_opt_out(seeded, console):
    client = signed_in(console, "alice", "viewer")
    all_ids = [f"wm{n:06d}" for n in range(12)]
    high = client.get("/console/customers", query_string={"value_tiers": "high"}).get_data(as_text=True)
    assert _names(high, all_ids) == ["wm000000", "wm000001", "wm000002"]
    mixed = client.get("/console/customers?value_tiers=mid&rfm_segments=general_retain&opted_out=no")
    assert _names(mixed.get_data(as_text=True), all_ids) == ["wm000003", "wm000004", "wm000005"]
    opted = client.get("/console/customers", query_string={"opted_out": "yes"}).get_data(as_text=True)
    assert _names(opted, all_ids) == ["wm000006"]
    assert client.get("/console/customers", query_string={"value_tiers": "gold"}).status_code == 400
    assert client.get("/console/customers", query_string={"tag": "nope"}).status_code == 400
    refused = client.get("/console/customers", query_string={"after": "x"},
                         headers={"Referer": "http://localhost/console/customers?value_tiers=high"})
    page = refused.get_data(as_text=True)  # a console page in Chinese with the way back, not Werkzeug's
    assert refused.status_code == 400 and "请求有误" in page and "after must be a customer id" in page
    assert 'href="/console/customers?value_tiers=high"' in page and "客户分层 · 运营控制台" in page
    stale = client.post("/console/broadcasts/new", data={"csrf_token": "from-before-a-restart"})
    assert stale.status_code == 400 and "表单已过期" in stale.get_data(as_text=True)
    counted = client.get("/console/broadcasts/count.json", query_string={"value_tiers": "gold"})
    assert counted.status_code == 400 and "gold" in counted.get_json()["error"]


def test_customer_pages_are_keyset_pages(console, db):
    seed_audience(db, {"mid": 120})
    client = signed_in(console, "alice", "viewer")
    first = client.get("/console/customers").get_data(as_text=True)
    assert "wm000000" in first and "wm000049" in first and "wm000050" not in first
    next_url = re.search(r'id="next-page" href="([^"]+)"', first).group(1).replace("&amp;", "&")
    second = client.get(next_url).get_data(as_text=True)
    assert "wm000050" in second and "wm000099" in second and "wm000049" not in second
    third = client.get(re.search(r'id="next-page" href="([^"]+)"', second).group(1).replace("&amp;", "&"))
    assert 'id="next-page"' not in third.get_data(as_text=True)


def test_csv_export_streams_the_filtered_list_formula_safe(seeded, console, db):
    with db.begin() as s:
        s.get(CustomerAggregate, seeded[3]).last_order_at = MORNING  # stored as UTC
    client = signed_in(console, "alice", "viewer")
    response = client.get("/console/customers.csv", query_string={"value_tiers": "mid"})
    assert response.status_code == 200 and response.mimetype == "text/csv" and response.is_streamed
    assert "attachment" in response.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert [r["external_userid"] for r in rows] == ["wm000003", "wm000004", "wm000005", "wm000006"]
    assert rows[2]["name"] == "'=HYPERLINK(\"x\")"
    assert rows[0]["last_order_at"] == "2026-11-24T10:00:00+08:00"  # app.timezone's, with its offset
    assert client.get("/console/customers.csv", query_string={"stages": "nope"}).status_code == 400


def test_the_customer_page_shows_tiers_why_and_history(seeded, console):
    client = signed_in(console, "alice", "viewer")
    page = client.get(f"/console/customers/{seeded[0]}").get_data(as_text=True)
    assert "高价值（high）" in page and "价值分层：累计实付" in page and "客户等级" not in page
    assert "得出「" in page and "截至 " in page and "value tier:" not in page
    assert "value_tier" in page and "2026-11-20" in page
    assert client.get("/console/customers/999999").status_code == 404


# ---------------------------------------------------------------- broadcasts


def _schedule_one(console, db, **form):
    client = signed_in(console, "olga", "operator")
    data = {"csrf_token": csrf(client), "intent": "schedule", "name": "双十二", "value_tiers": ["high", "mid"],
            "tpl_default": "{{ brand }} 双十二", "tpl_high": "尊敬的{{ tier_name }}客户 {{ customer.name }}",
            "send_at": "2026-11-24T10:00", "holdout": "20", **form}
    return client, client.post("/console/broadcasts/new", data=data)


def test_the_live_count_is_per_tier_and_uses_the_audience_model(seeded, console):
    client = signed_in(console, "alice", "viewer")
    body = client.get("/console/broadcasts/count.json?value_tiers=high&value_tiers=low").get_json()
    assert body == {"total": 8, "per_tier": [{"code": "high", "label": "高价值（high）", "count": 3},
                                             {"code": "low", "label": "低价值（low）", "count": 5}]}
    assert client.get("/console/broadcasts/count.json?tag=VIP").get_json()["total"] == 1
    assert client.get("/console/broadcasts/count.json?has_ordered=no").get_json()["total"] == 0
    refused = client.get("/console/broadcasts/count.json?rfm_segments=best")
    assert refused.status_code == 400 and "rfm_segments" in refused.get_json()["error"]


def test_preview_renders_samples_and_writes_nothing(seeded, console, db):
    client = signed_in(console, "olga", "operator")
    response = client.post("/console/broadcasts/new", data={
        "csrf_token": csrf(client), "intent": "preview", "name": "p", "value_tiers": ["high", "mid"],
        "tpl_default": "{{ brand }} 双十二", "tpl_high": "尊敬的{{ tier_name }}客户 {{ customer.name }}",
        "send_at": "2026-11-24T10:00"})
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "尊敬的高价值客户 客户0" in page and "本店 双十二" in page
    assert "已退订" in page  # wm000006 (mid) is skipped, and the page says why
    assert "每位客户一条群发任务" in page  # {{ customer.name }}: members confirm a task per customer
    with db.sessions() as s:
        assert s.scalar(select(Broadcast)) is None


def test_an_unknown_tag_and_a_viewers_change_are_refused_in_chinese(seeded, console, db):
    client = signed_in(console, "olga", "operator")
    page = client.post("/console/broadcasts/new", data={
        "csrf_token": csrf(client), "intent": "preview", "name": "p", "tag": "意向/问过价格",
        "tpl_default": "hi", "send_at": "2026-11-24T10:00"}).get_data(as_text=True)
    assert "未知标签 &#39;意向/问过价格&#39;（标签库见「标签」页" in page
    counted = client.get("/console/broadcasts/count.json", query_string={"tag": "意向/问过价格"})
    assert counted.status_code == 400 and counted.get_json()["error"].startswith("未知标签")
    viewer = signed_in(console, "alice", "viewer")
    refused = viewer.post("/console/broadcasts/new", data={"csrf_token": csrf(viewer), "intent": "preview"})
    assert refused.status_code == 403 and "只读账号" in refused.get_data(as_text=True)
    assert "viewers cannot" not in refused.get_data(as_text=True)


def test_a_viewer_sees_the_builders_actions_disabled_and_why(seeded, console):
    """Every POST of a viewer's is refused, so 预览 / 排期发送 / 创建 are disabled for one, not offered to fail."""
    viewer, operator = signed_in(console, "alice", "viewer"), signed_in(console, "olga", "operator")
    for path in ("/console/broadcasts/new", "/console/groups/broadcasts/new", "/console/groups/sops/new"):
        seen = viewer.get(path).get_data(as_text=True)
        assert seen.count(" disabled>") == 2 and "只读账号" in seen, path
        assert " disabled>" not in operator.get(path).get_data(as_text=True), path


def test_schedule_creates_audits_and_cancel_is_audited(seeded, console, db):
    client, response = _schedule_one(console, db)
    assert response.status_code == 302
    with db.sessions() as s:
        b = s.scalar(select(Broadcast))
        created = s.scalar(select(AuditEntry).where(AuditEntry.action == "broadcast.create"))
    assert (b.name, b.holdout_percent, b.status) == ("双十二", 20, "scheduled")
    assert b.audience == {"value_tiers": ["high", "mid"]} and set(b.templates) == {"default", "high"}
    assert created.actor == "olga" and created.before is None and created.after["name"] == "双十二"
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "已排期" in page and "2026-11-24 10:00" in page and "时区 Asia/Shanghai" in page
    cancelled = client.post(f"/console/broadcasts/{b.id}/cancel", data={"csrf_token": csrf(client)})
    assert cancelled.status_code == 302
    with db.sessions() as s:
        assert s.get(Broadcast, b.id).status == "cancelled"
        entry = s.scalar(select(AuditEntry).where(AuditEntry.action == "broadcast.cancel"))
    assert (entry.before["status"], entry.after["status"]) == ("scheduled", "cancelled")
    again = client.post(f"/console/broadcasts/{b.id}/cancel", data={"csrf_token": csrf(client)})
    assert again.status_code == 409
    audit = client.get("/console/audit").get_data(as_text=True)
    assert "broadcast.cancel" in audit and "olga" in audit and "双十二" in audit
    assert entry.before["send_at"] == "2026-11-24T02:00:00+00:00"  # recorded in UTC, and left so
    assert "2026-11-24T10:00:00+08:00" in audit and "+00:00" not in audit  # shown in app.timezone
    assert "时间（Asia/Shanghai）" in audit and audit.count("时区 Asia/Shanghai") == 1  # the zone is named


def test_a_broadcasts_status_reads_the_same_in_chinese_on_every_page(seeded, console, db):
    client, response = _schedule_one(console, db)
    header = re.search(r"<h1>.*?</h1>", client.get(response.headers["Location"]).get_data(as_text=True), re.S)
    assert "已排期" in header.group(0) and "scheduled<" not in header.group(0)
    dashboard_page = client.get("/console/").get_data(as_text=True)
    listed = client.get("/console/broadcasts").get_data(as_text=True)
    assert ">已排期</span></td>" in dashboard_page and ">scheduled<" not in dashboard_page
    assert ">已排期</span></td>" in listed


def test_with_no_revenue_in_either_group_the_report_says_so_instead_of_a_zero_interval(seeded, console, db,
                                                                                     cli_env):
    from bot.campaigns.broadcasts import dispatch_due

    _, response = _schedule_one(console, db)
    with db.begin() as s:  # no order after the run: neither group has revenue yet
        assert dispatch_due(s, console.extensions["scrm.settings"], now=MORNING + timedelta(days=1))
    console.extensions["scrm.clock"] = lambda: MORNING + timedelta(days=1, hours=1)
    page = signed_in(console, "oscar", "operator").get(response.headers["Location"]).get_data(as_text=True)
    assert "两组都还没有收入" in page and "+0.00 元，95% 区间 +0.00 ~ +0.00" not in page
    runner = _cli("broadcast", "report", "双十二", env=cli_env)
    assert "no revenue in either group yet" in runner.output and "+0.00 … +0.00" not in runner.output


@pytest.mark.parametrize(("form", "message"), [
    ({"tpl_default": "{{ nope }}"}, "unknown variable"),
    ({"tpl_default": "{% if %}"}, "syntax error"),
    ({"tpl_default": "{{ 'x'|center(200000000) }}"}, "the center filter makes more than 10000 characters"),
    ({"send_at": ""}, "choose a send time"),
    ({"send_at": "2026-11-01T10:00"}, "has passed"),
    ({"send_at": "tomorrow"}, "YYYY-MM-DD"),
    ({"holdout": "80"}, "hold-out"),
    ({"holdout": "-1"}, "hold-out"),
    ({"name": ""}, "name"),
])
def test_a_bad_broadcast_is_refused_with_the_reason(seeded, console, db, form, message):
    _, response = _schedule_one(console, db, **form)
    assert response.status_code == 400
    assert message in response.get_data(as_text=True)
    with db.sessions() as s:
        assert s.scalar(select(Broadcast)) is None


def test_the_report_page_charts_sent_against_held_out(seeded, console, db):
    client, response = _schedule_one(console, db)
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert 'data-chart="report"' in page and "对照组" in page
    assert client.get("/console/broadcasts/999").status_code == 404


def test_tier_figures_are_reused_until_something_they_count_changes(seeded, db):
    from bot.web.console.figures import FiguresCache, dashboard

    cache = FiguresCache()
    with db.sessions() as s:
        assert dashboard(s, MORNING, 14, cache).customers == 12
    with db.begin() as s:  # a tier edited outside a re-tier: no key moves, so the cached figures stand
        s.get(CustomerTier, seeded[0]).value_tier = "low"
    with db.sessions() as s:
        assert dashboard(s, MORNING, 14, cache).value_tiers[0]["count"] == 3
        fresh = dashboard(s, MORNING + cache.ttl, 14, cache)  # ... for at most the TTL
    assert [(t["code"], t["count"]) for t in fresh.value_tiers] == [("high", 2), ("mid", 4), ("low", 6)]
    seed_audience(db, {"high": 1}, start=100)  # a new customer moves the key
    with db.sessions() as s:
        assert dashboard(s, MORNING + cache.ttl, 14, cache).customers == 13
    with db.begin() as s:  # so does a tier change
        s.add(TierChange(customer_id=seeded[2], dimension="value_tier", from_value="high", to_value="mid",
                         as_of=date(2026, 11, 22)))
    with db.sessions() as s:
        assert dashboard(s, MORNING + cache.ttl, 14, cache).flows["as_of"] == "2026-11-22"


def test_after_the_baseline_retier_the_flows_say_so_instead_of_asking_for_a_retier(seeded, console, db):
    from bot.web.console.figures import dashboard

    with db.begin() as s:
        s.execute(TierChange.__table__.delete())
    with db.sessions() as s:
        assert dashboard(s, MORNING, 14).flows["baseline"] is None  # never re-tiered: 暂无重分层记录
    with db.begin() as s:  # the first run: every customer gets a tier, no TierChange (there was no tier before)
        s.add(TierRun(as_of=date(2026, 11, 20), policy_digest="x", full=True, stats={}, max_interaction_id=0,
                      recomputed=12, started_at=MORNING, seconds=0.1))
    page = signed_in(console, "alice", "viewer").get("/console/").get_data(as_text=True)
    assert "已完成首次分层（基线，2026-11-20）" in page and "暂无重分层记录" not in page
    assert "scrm retier</code> 后显示" not in page


# ---------------------------------------------------------------- system


def _inbox_event(db, status: str) -> int:
    with db.begin() as s:
        event = InboxEvent(dedupe_key=f"k-{status}", msg_type="event", event="change_external_contact",
                           change_type="add_external_contact", payload="<xml/>", status=status, attempts=3,
                           last_error="Traceback …\nRuntimeError: WeCom said 60011")
        s.add(event)
        s.flush()
        return event.id


def test_the_system_page_shows_what_needs_a_look_and_requeues_it(seeded, console, db):
    failed, handled = _inbox_event(db, "dead"), _inbox_event(db, "handled")
    with db.begin() as s:
        s.add(OutboxMessage(dedupe_key="x1", channel="mass_message", customer_id=seeded[0], recipient="wm000000",
                            trigger_kind="broadcast", trigger_ref="r", content={}, status="skipped",
                            reason="opted out (退订)", scheduled_at=MORNING - timedelta(days=2)))
    client = signed_in(console, "olga", "operator")
    page = client.get("/console/system").get_data(as_text=True)
    assert "RuntimeError: WeCom said 60011" in page and "已退订" in page and "nightly_retier" in page
    assert client.post(f"/console/system/inbox/{failed}/retry", data={"csrf_token": csrf(client)}).status_code == 302
    with db.sessions() as s:
        assert s.get(InboxEvent, failed).status == "pending"
        entry = s.scalar(select(AuditEntry).where(AuditEntry.action == "inbox.retry"))
    assert (entry.before["status"], entry.after["status"]) == ("dead", "pending")
    assert client.post(f"/console/system/inbox/{handled}/retry", data={"csrf_token": csrf(client)}).status_code == 409
    assert client.post("/console/system/inbox/999/retry", data={"csrf_token": csrf(client)}).status_code == 404


def test_one_cause_is_one_row_on_the_system_page_and_one_series_on_the_dashboard(seeded, console, db):
    """A reason naming its message's deadline is counted by its cause, in Chinese; the rows keep their words."""
    from bot.web.console.figures import dashboard

    with db.begin() as s:
        s.add_all([OutboxMessage(dedupe_key=f"w{n}", channel="welcome", customer_id=seeded[n], recipient="x",
                                 trigger_kind="welcome", trigger_ref="r", content={}, status="skipped",
                                 reason=f"welcome window passed before sending (deadline 0{n}:00:0{n} UTC)",
                                 scheduled_at=MORNING - timedelta(hours=n)) for n in range(3)])
        s.add(OutboxMessage(dedupe_key="cap", channel="mass_message", customer_id=seeded[3], recipient="x",
                            trigger_kind="broadcast", trigger_ref="r", content={}, status="failed",
                            reason="not sent: the customer already received a mass message this period (WeCom cap)",
                            scheduled_at=MORNING))
    page = signed_in(console, "olga", "operator").get("/console/system").get_data(as_text=True)
    assert page.count("欢迎语发送时限已过，未发送") == 1 and "<td>3</td>" in page and "UTC" not in page
    assert "该客户本周期已收到过群发" in page
    with db.sessions() as s:
        names = [series["name"] for series in dashboard(s, MORNING, 14).messages_by_outcome["series"]]
        assert s.scalar(select(func.count()).where(OutboxMessage.reason.like("%(deadline 02:00:02 UTC)"))) == 1
    assert sorted(names) == ["失败：未发送：该客户本周期已收到过群发（企业微信上限）",
                             "跳过：欢迎语发送时限已过，未发送"]


# ---------------------------------------------------------------- tags


def test_the_tags_page_counts_usage_reports_near_duplicates_and_merges(seeded, console, db):
    with db.begin() as s:
        group = s.scalar(select(TagGroup).where(TagGroup.name == "客户等级"))
        twin = Tag(group_id=group.id, name="VIP客户")
        s.add(twin)
        s.flush()
        s.add(CustomerTag(customer_id=seeded[9], tag_id=twin.id, source="staff"))
    client = signed_in(console, "olga", "operator")
    page = client.get("/console/tags").get_data(as_text=True)
    assert "VIP客户" in page and "客户等级/VIP客户" in page and "1 人" in page  # listed, and reported as a twin
    merged = client.post("/console/tags/merge", data={"csrf_token": csrf(client), "source": "客户等级/VIP客户",
                                                      "target": "客户等级/VIP"}, follow_redirects=True)
    assert "已合并 客户等级/VIP客户 → 客户等级/VIP：1 位客户转入" in merged.get_data(as_text=True)
    assert client.get("/console/customers", query_string={"tag": "VIP"}).get_data(as_text=True).count("wm0000") == 2
    with db.sessions() as s:
        entry = s.scalar(select(AuditEntry).where(AuditEntry.action == "tags.merge"))
    assert entry.actor == "olga" and entry.after["moved"] == 1
    refused = client.post("/console/tags/merge", data={"csrf_token": csrf(client), "source": "客户等级/没有",
                                                       "target": "客户等级/VIP"}, follow_redirects=True)
    assert "未合并" in refused.get_data(as_text=True)


def test_a_repeating_broadcast_with_segment_templates_and_a_coupon(seeded, console, db):
    console.extensions["scrm.settings"] = _with_coupon(console.extensions["scrm.settings"])
    client, response = _schedule_one(console, db, schedule="cron", cron="0 10 * * 1", send_at="",
                                      tpl_important_value="{{ segment_name }}：{{ coupon.code }}", coupon="VIP10")
    assert response.status_code == 302, response.get_data(as_text=True)[:500]
    with db.sessions() as s:
        b = s.scalar(select(Broadcast))
    assert (b.cron, b.send_at, b.coupon) == ("0 10 * * 1", None, "VIP10")
    assert b.templates["important_value"] == "{{ segment_name }}：{{ coupon.code }}"
    assert b.next_run_at.astimezone(MORNING.tzinfo).strftime("%a %H:%M") == "Mon 10:00"
    settings_card = client.get(response.headers["Location"]).get_data(as_text=True).split("<h2>执行</h2>")[0]
    assert "<th>随消息发券</th><td>会员券（VIP10，" in settings_card
    bad = client.post("/console/broadcasts/new", data={"csrf_token": csrf(client), "intent": "schedule",
                                                       "name": "坏的", "tpl_default": "hi", "schedule": "cron",
                                                       "cron": "every day"})
    assert bad.status_code == 400 and "cron" in bad.get_data(as_text=True)


def test_the_preview_of_a_repeating_broadcast_renders_the_segment_template(seeded, console, db):
    client = signed_in(console, "olga", "operator")
    page = client.post("/console/broadcasts/new", data={
        "csrf_token": csrf(client), "intent": "preview", "name": "p", "value_tiers": ["high"], "schedule": "cron",
        "cron": "0 10 * * 1", "tpl_default": "默认", "tpl_important_value": "{{ segment_name }}专享"}
    ).get_data(as_text=True)
    assert "重要价值专享" in page and "<details open>" in page


def _with_coupon(settings):
    from dataclasses import replace

    coupons = replace(settings.coupons, definitions=[
        *settings.coupons.definitions, {"code": "VIP10", "title": "会员券", "value": 10, "valid_days": 7}])
    return replace(settings, coupons=coupons)


def test_a_session_ends_when_the_password_changes_and_the_cookie_holds_no_hash(console, db):
    from werkzeug.security import generate_password_hash

    client = signed_in(console, "alice", "operator")
    with db.sessions() as s:
        stored = s.scalar(select(Operator.password_hash).where(Operator.name == "alice"))
    with client.session_transaction() as session:
        assert len(session["pw"]) == 16 and session["pw"] not in stored
    with db.begin() as s:
        alice = s.scalar(select(Operator).where(Operator.name == "alice"))
        alice.password_hash = generate_password_hash("another one!")
    assert client.get("/console/").status_code == 302


def test_the_live_count_on_tiers_alone_matches_the_joined_count(seeded, console, db):
    """Tier-only filters are counted on the tier table; anything else joins customers. Both agree."""
    seed_audience(db, {"high": 2}, start=200)
    with db.begin() as s:  # two customers without a tier row
        for row in s.scalars(select(CustomerTier).where(CustomerTier.customer_id > seeded[-1])):
            s.delete(row)
    client = signed_in(console, "alice", "viewer")
    everyone = client.get("/console/broadcasts/count.json").get_json()
    assert everyone["total"] == 14 and {"code": "", "label": "未分层", "count": 2} in everyone["per_tier"]
    for query in ("value_tiers=high&stages=repeat", "rfm_segments=general_retain&engagement=active"):
        fast = client.get(f"/console/broadcasts/count.json?{query}").get_json()
        joined = client.get(f"/console/broadcasts/count.json?{query}&owner=zhangsan").get_json()
        assert fast == joined and fast["total"] > 0
    with_search = client.get("/console/broadcasts/count.json?value_tiers=mid&q=客户3").get_json()
    assert with_search["total"] == 1


def test_the_live_count_keeps_tiers_no_longer_configured(seeded, console, db):
    with db.begin() as s:
        s.get(CustomerTier, seeded[0]).value_tier = "legacy"
        s.get(CustomerTier, seeded[1]).value_tier = None
    client = signed_in(console, "alice", "viewer")
    for query in ("", "?owner=zhangsan"):  # the tier table alone, and customers joined to their tiers
        body = client.get(f"/console/broadcasts/count.json{query}").get_json()
        counts = {row["code"]: row["count"] for row in body["per_tier"]}
        assert counts["legacy"] == 1 and counts[""] == 1 and body["total"] == 12, (query, body)


def test_outdated_figures_are_shown_while_new_ones_are_computed(seeded, console, db):
    from bot.web.console.figures import FiguresCache, dashboard

    cache = FiguresCache(sessions=db.sessions)
    with db.sessions() as s:
        assert dashboard(s, MORNING, 14, cache).customers == 12  # the first view computes them
    seed_audience(db, {"high": 1}, start=100)
    with db.sessions() as s:
        stale = dashboard(s, MORNING, 14, cache)
    assert (stale.customers, stale.stale) == (12, True)
    cache.wait()
    with db.sessions() as s:
        fresh = dashboard(s, MORNING, 14, cache)
    assert (fresh.customers, fresh.stale) == (13, False)
    client = signed_in(console, "alice", "viewer")
    console.extensions["scrm.console.figures"]._value = stale  # as a page shows them
    console.extensions["scrm.console.figures"]._key = None
    seed_audience(db, {"high": 1}, start=300)  # the stored figures are outdated too
    assert "分层数据更新中" in client.get("/console/").get_data(as_text=True)
    console.extensions["scrm.console.figures"].wait()


def test_a_new_process_starts_from_the_stored_figures(seeded, db, monkeypatch):
    """The figures are kept in the database: another web process (or one restarted) shows them without
    scanning the tier table, and a stored set that is outdated is shown stale while it is recomputed."""
    from bot.web.console import figures
    from bot.web.console.figures import FiguresCache, dashboard

    with db.sessions() as s:
        first = dashboard(s, MORNING, 14, FiguresCache(sessions=db.sessions))
    scans = []
    real = figures.tier_figures
    monkeypatch.setattr(figures, "tier_figures", lambda *a: scans.append(1) or real(*a))
    restarted = FiguresCache(sessions=db.sessions)
    with db.sessions() as s:
        again = dashboard(s, MORNING + timedelta(minutes=1), 14, restarted)
    assert scans == [] and again.value_tiers == first.value_tiers and not again.stale
    assert [(c.code, c.customers, c.revenue_share) for c in again.rfm] == \
        [(c.code, c.customers, c.revenue_share) for c in first.rfm]
    seed_audience(db, {"high": 1}, start=100)
    third = FiguresCache(sessions=db.sessions)
    with db.sessions() as s:
        assert dashboard(s, MORNING, 14, third).stale  # shown, and being recomputed
    third.wait()
    with db.sessions() as s:
        assert dashboard(s, MORNING, 14, FiguresCache(sessions=db.sessions)).customers == 13


def test_daily_new_customers_by_channel_and_messages_by_outcome(seeded, console, db):
    from bot.web.console.figures import dashboard

    with db.begin() as s:
        follows = s.scalars(select(Follow).order_by(Follow.id)).all()
        follows[0].state, follows[1].state = "live_0618", "live_0618"
        follows[2].added_at = MORNING - timedelta(days=40)  # before the 30 days
        s.add_all([OutboxMessage(dedupe_key=f"m{n}", channel="mass_message", customer_id=seeded[n],
                                 recipient="x", trigger_kind="broadcast", trigger_ref="r", content={},
                                 status=status, reason=reason, scheduled_at=at)
                   for n, (status, reason, at) in enumerate([
                       ("sent", None, MORNING), ("confirmed", None, MORNING - timedelta(days=1)),
                       ("skipped", "opted out (退订)", MORNING), ("pending", None, MORNING)])])
    with db.sessions() as s:
        d = dashboard(s, MORNING, 14)
    channels = {series["name"]: series["data"] for series in d.new_by_channel["series"]}
    assert d.new_by_channel["days"][-1] == "11-24" and len(d.new_by_channel["days"]) == 30
    assert channels["live_0618"][-1] == 2 and channels["（无渠道）"][-1] == sum(channels["（无渠道）"]) == 9
    outcomes = {series["name"]: series["data"] for series in d.messages_by_outcome["series"]}
    assert outcomes["已发送"][-2:] == [1, 1] and outcomes["跳过：已退订"][-1] == 1
    assert len(outcomes) == 2  # pending is not an outcome yet
    console.extensions["scrm.clock"] = lambda: MORNING + timedelta(hours=1)
    page = signed_in(console, "alice", "viewer").get("/console/").get_data(as_text=True)
    assert 'id="chart-new"' in page and 'id="chart-messages"' in page


def test_the_customer_page_shows_churn_risk_and_predicted_value(seeded, console, db):
    from bot.models import CustomerPrediction, PredictionRun

    client = signed_in(console, "alice", "viewer")
    assert "暂无预测" in client.get(f"/console/customers/{seeded[0]}").get_data(as_text=True)
    with db.begin() as s:
        run = PredictionRun(as_of=date(2026, 11, 22), horizon_days=365, discount_rate=0.1, status="fitted",
                            customers=1, repeat_customers=1, seconds=0.1)
        s.add(run)
        s.flush()
        s.add(CustomerPrediction(customer_id=seeded[0], run_id=run.id, p_alive=0.18, churn_risk="high",
                                 expected_purchases=1.25, expected_spend_fen=12000, predicted_value_fen=14300,
                                 next_order_on=date(2027, 1, 5)))
    page = client.get(f"/console/customers/{seeded[0]}").get_data(as_text=True)
    for text in ("<th>流失风险</th><td>高: P(alive) 0.18", "¥143.00（365 天，按年 10% 折现）",
                 "预计购买 1.25 次 × 每次 ¥120.00", "2027-01-05"):
        assert text in page, text
    # The list filters by the predictions too (DESIGN §4.7: usable in segments).
    ids = [f"wm{n:06d}" for n in range(12)]
    for query in ({"churn_risk": "high"}, {"p_alive_below": "0.2"}, {"predicted_value_above": "100"},
                  {"expected_purchases_above": "1"}, {"next_order_before": "2027-02-01"}):
        listed = client.get("/console/customers", query_string=query)
        assert listed.status_code == 200 and _names(listed.get_data(as_text=True), ids) == ["wm000000"], query
    for query in ({"next_order_before": "2027-01-01"}, {"expected_purchases_above": "2"}):
        assert _names(client.get("/console/customers", query_string=query).get_data(as_text=True), ids) == []
    assert client.get("/console/customers", query_string={"p_alive_below": "often"}).status_code == 400
    assert 'name="expected_purchases_above"' in client.get("/console/customers").get_data(as_text=True)


def test_refusals_read_in_chinese_with_the_recorded_words_beside():
    from bot.web.console.words import error_zh, reason_zh

    assert error_zh("the send time has passed; choose a later one") == "发送时间已过，请选择更晚的时间"
    assert error_zh("template 'default' uses unknown variable(s) ['nope']; available: ['brand']") \
        == "模板 'default' 使用了未知变量 ['nope']；可用：['brand']"
    assert reason_zh("brand cap: 2 push(es) per day reached") == "已达品牌上限：每天 2 条"
    assert reason_zh("WeCom mass-message cap (4_per_month: 4 per period) reached") \
        == "已达企业微信群发上限（4_per_month：每周期 4 条）"
    assert error_zh("something new") == "something new" and reason_zh(None) == ""
