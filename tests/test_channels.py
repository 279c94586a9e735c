"""渠道活码 end to end: `scrm channels` against the sandbox's 「联系我」 API, customers scanning the
codes (callbacks through the real webhook), the channel's rules applied, and its report."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from bot.models import Channel, Customer, CustomerTag, Follow, OutboxMessage, Tag
from tests.handover_support import drain, scrm_runner
from tests.support import control, read


def _setup(wired, sandbox, tmp_path):
    control(sandbox, "seed", {"staff": [{"userid": u, "name": u} for u in ("zhangsan", "lisi", "wangwu")]})
    return scrm_runner(wired, tmp_path)


def test_create_list_update_delete_sync(wired, sandbox, tmp_path):
    scrm = _setup(wired, sandbox, tmp_path)
    out = scrm("channels", "create", "直播间", "--state", "live_0618", "--member", "zhangsan",
               "--tag", "渠道/直播间", "--stage", "first_purchase", "--cost", "3000").output
    assert "QR code: https://" in out
    [way] = read(sandbox, "contact_ways")
    assert (way["type"], way["scene"], way["state"], way["user"], way["skip_verify"], way["remark"]) == (
        1, 2, "live_0618", ["zhangsan"], True, "直播间")
    duplicate = scrm("channels", "create", "again", "--state", "live_0618", "--member", "lisi", ok=False)
    assert duplicate.exit_code == 1 and "exists already" in duplicate.output
    too_long = scrm("channels", "create", "x", "--state", "s" * 31, "--member", "lisi", ok=False)
    assert too_long.exit_code == 1 and "1–30 characters" in too_long.output
    unknown = scrm("channels", "create", "x", "--state", "ghost", "--member", "nobody", ok=False)
    assert unknown.exit_code == 1 and "WeCom refused: 60111" in unknown.output
    db = wired.extensions["scrm.db"]
    with db.sessions() as s:
        assert s.scalar(select(Channel.state).where(Channel.state == "ghost")) is None  # rolled back

    refused = scrm("channels", "update", "live_0618", "--member", "zhangsan", "--member", "lisi", ok=False)
    assert refused.exit_code == 1 and "single-member code" in refused.output
    scrm("channels", "update", "live_0618", "--member", "lisi", "--verify", "--name", "直播间二")
    [way] = read(sandbox, "contact_ways")
    assert (way["user"], way["skip_verify"], way["remark"], way["state"]) == (["lisi"], False, "直播间二", "live_0618")
    listed = json.loads(scrm("channels", "list", "--json").output)
    assert [(c["state"], c["members"], c["cost_fen"], c["tags"]) for c in listed] == [
        ("live_0618", ["lisi"], 300000, ["渠道/直播间"])]

    # A code made elsewhere (e.g. by another tool) with a state becomes a channel on sync.
    control(sandbox, "contact_ways/import", {"state": "poster", "user": ["wangwu"], "remark": "海报"})
    out = scrm("channels", "sync").output
    assert "imported 1" in out
    with db.sessions() as s:
        assert s.scalar(select(Channel.name).where(Channel.state == "poster")) == "海报"

    scrm("channels", "delete", "poster", "--yes")
    assert [w["state"] for w in read(sandbox, "contact_ways")] == ["live_0618"]
    assert "poster" not in scrm("channels", "list").output


def test_sync_brings_in_codes_made_elsewhere_long_ago(wired, sandbox, tmp_path):
    """Without a start_time list_contact_way lists the last 90 days only (WECOM-GROUPS.md §1.2)."""
    _setup(wired, sandbox, tmp_path)
    control(sandbox, "contact_ways/import", {"state": "poster2024", "user": ["wangwu"], "remark": "旧海报"})
    control(sandbox, "clock/advance", {"seconds": 200 * 86400})
    later = datetime.now(UTC) + timedelta(days=200)
    assert "imported 1" in scrm_runner(wired, tmp_path, clock=lambda: later)("channels", "sync").output
    [call] = read(sandbox, "calls", path="externalcontact/list_contact_way")
    assert call["body"]["start_time"] == 1625846400


def test_expired_channel_is_deleted_on_sync(wired, sandbox, tmp_path):
    scrm = _setup(wired, sandbox, tmp_path)
    now = datetime.now(UTC)
    clocked = scrm_runner(wired, tmp_path, clock=lambda: now + timedelta(days=3))
    tomorrow = (now + timedelta(days=1)).astimezone(wired.extensions["scrm.settings"].tz).strftime("%Y-%m-%d")
    scrm("channels", "create", "双十一", "--state", "d11", "--member", "lisi", "--expires", tomorrow)
    assert "expired deleted 0" in scrm("channels", "sync").output
    assert "expired deleted 1" in clocked("channels", "sync").output
    assert read(sandbox, "contact_ways") == []


def test_config_channels_still_work_and_seed_rows(wired, sandbox, tmp_path):
    config = '[contacts]\nchannels = { old_key = { tags = ["渠道/老活动"], welcome = "default" } }\n'
    scrm = scrm_runner(wired, tmp_path, config=config)
    control(sandbox, "seed", {"staff": [{"userid": "zhangsan"}]})
    listed = json.loads(scrm("channels", "list", "--json").output)
    assert [(c["state"], c["source"], c["config_id"]) for c in listed] == [("old_key", "config", None)]
    # Giving the config channel a code keeps its rules.
    scrm("channels", "create", "老活动", "--state", "old_key", "--member", "zhangsan", "--tag", "渠道/老活动")
    assert read(sandbox, "contact_ways")[0]["state"] == "old_key"


def test_report_after_a_burst_of_adds_through_two_channels(wired, sandbox, tmp_path):
    scrm = _setup(wired, sandbox, tmp_path)
    scrm("channels", "create", "直播间", "--state", "live", "--member", "zhangsan", "--tag", "渠道/直播间",
         "--cost", "3000")
    scrm("channels", "create", "地推", "--state", "street", "--member", "lisi", "--member", "wangwu",
         "--stage", "first_purchase", "--cost", "1000")
    ways = {w["state"]: w["config_id"] for w in read(sandbox, "contact_ways")}
    live = [control(sandbox, f"contact_ways/{ways['live']}/scan", {"name": f"直播{i}"})["external_userid"]
            for i in range(6)]
    street = [control(sandbox, f"contact_ways/{ways['street']}/scan", {"name": f"地推{i}"})["external_userid"]
              for i in range(4)]
    assert drain(wired) == {"handled": 10}
    control(sandbox, "contacts/delete", {"userid": "lisi", "external_userid": street[0], "by": "customer"})
    assert drain(wired) == {"handled": 1}

    db = wired.extensions["scrm.db"]
    with db.sessions() as s:
        follows = {f.customer.external_userid: (f.staff.userid, f.state) for f in s.scalars(select(Follow))}
        assert {follows[e] for e in live} == {("zhangsan", "live")}
        assert [follows[e][0] for e in street] == ["lisi", "wangwu", "lisi", "wangwu"]  # WeCom takes turns
        tagged = set(s.scalars(select(Customer.external_userid).join(CustomerTag).join(Tag)
                               .where(Tag.name == "直播间")))
        assert tagged == set(live)
        stages = {c.external_userid: c.stage for c in s.scalars(select(Customer))}
        assert {stages[e] for e in street} == {"first_purchase"} and {stages[e] for e in live} == {"new"}
        welcomes = s.scalars(select(OutboxMessage).where(OutboxMessage.channel == "welcome")).all()
        assert {w.trigger_ref for w in welcomes} == {"live", "street"} and len(welcomes) == 10

    paid = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    rows = ["order_id,external_userid,amount,paid_at,status"]
    for i, ext in enumerate(live[:2]):  # two high-tier buyers from the live channel
        rows += [f"L{i}a,{ext},800,{paid},paid", f"L{i}b,{ext},700,{paid},paid"]
    rows += [f"S1,{street[1]},400,{paid},paid", f"S2,{street[2]},100,{paid},paid",
             f"S3,{street[2]},50,{paid},refunded"]
    orders = tmp_path / "orders.csv"
    orders.write_text("\n".join(rows) + "\n", encoding="utf-8")
    scrm("import-orders", str(orders))
    scrm("retier")

    report = {r["state"]: r for r in json.loads(scrm("channels", "report", "--json").output)}
    today = datetime.now(UTC).astimezone(wired.extensions["scrm.settings"].tz).strftime("%Y-%m-%d")
    live_r, street_r = report["live"], report["street"]
    assert (live_r["adds"], live_r["customers"], live_r["deletions"], live_r["adds_per_day"]) == (
        6, 6, 0, {today: 6})
    assert (street_r["adds"], street_r["customers"], street_r["deletions"]) == (4, 4, 1)
    assert live_r["value_tiers"] == {"high": 2, "low": 4}
    assert street_r["value_tiers"] == {"mid": 1, "low": 3}
    assert (live_r["orders"], live_r["revenue_fen"]) == (4, 300000)
    assert (street_r["orders"], street_r["revenue_fen"]) == (2, 50000)  # the refunded order counts in neither
    assert live_r["cost_per_high_fen"] == 150000 and street_r["cost_per_high_fen"] is None
    assert sum(live_r["rfm_segments"].values()) == 2 and sum(street_r["rfm_segments"].values()) == 2
    text = scrm("channels", "report").output
    assert "live" in text and "1,500.00" in text and "adds per day" in text


def test_hostile_input_gets_clear_errors(wired, sandbox, tmp_path):
    scrm = _setup(wired, sandbox, tmp_path)
    for args, message in (
        (("--cost", "abc"), "not an amount in 元"),
        (("--cost", "-5"), "at most two decimals"),
        (("--cost", "1.001"), "at most two decimals"),
        (("--expires", "tomorrow"), "use YYYY-MM-DD"),
        (("--expires", "2020-01-01"), "2020-01-01 23:59 Asia/Shanghai is already past"),
        (("--stage", "vip"), "unknown stage"),
        (("--welcome", "../../etc/passwd"), "letters, digits and _"),
    ):
        result = scrm("channels", "create", "x", "--state", "k1", "--member", "lisi", *args, ok=False)
        assert result.exit_code != 0 and message in result.output, (args, result.output)
    spaced = scrm("channels", "create", "x", "--state", "a b", "--member", "lisi", ok=False)
    assert "spaces" in spaced.output
    missing = scrm("channels", "update", "nope", "--cost", "1", ok=False)
    assert missing.exit_code == 1 and "no channel 'nope'" in missing.output
    nothing = scrm("channels", "update", "nope", ok=False)
    assert nothing.exit_code == 2 and "nothing to change" in nothing.output
    assert read(sandbox, "contact_ways") == []


def test_sandbox_contact_way_errors(wired, sandbox):
    from wechatpy.exceptions import WeChatClientException

    from bot.wecom.client import build_clients

    control(sandbox, "seed", {"staff": [{"userid": "lisi"}]})
    api = build_clients(wired.extensions["scrm.settings"]).contact.contact_way
    for body, code in (({"scene": 2}, 41037), ({"type": 1}, 41038), ({"type": 3, "scene": 2}, 41039),
                       ({"type": 1, "scene": 9}, 41040), ({"type": 2, "scene": 2, "user": ["lisi"] * 101}, 41041),
                       ({"type": 1, "scene": 1, "style": 7, "user": ["lisi"]}, 41042),
                       ({"type": 1, "scene": 2, "user": ["ghost"]}, 60111)):
        try:
            api._post("externalcontact/add_contact_way", data=body)
        except WeChatClientException as exc:
            assert exc.errcode == code, body
        else:
            raise AssertionError(body)
    for path, code in (("get_contact_way", 41043), ("del_contact_way", 41043)):
        try:
            api._post(f"externalcontact/{path}", data={})
        except WeChatClientException as exc:
            assert exc.errcode == code
    try:
        api.get_contact_way("nope")
    except WeChatClientException as exc:
        assert exc.errcode == 41044
    made = api.add_contact_way(type=1, scene=2, user=["lisi"], state="s1")
    assert made["qr_code"] and api.get_contact_way(made["config_id"])["contact_way"]["state"] == "s1"
    assert list(api.gen_contact_way_ids(limit=1)) == [made["config_id"]]


def test_a_busy_answer_after_the_code_was_made_is_reported_and_sync_brings_the_code_in(wired, sandbox, tmp_path):
    scrm = _setup(wired, sandbox, tmp_path)
    control(sandbox, "faults", {"path": "externalcontact/add_contact_way", "errcode": -1, "after": True})
    busy = scrm("channels", "create", "展会", "--state", "expo", "--member", "zhangsan", ok=False)
    assert busy.exit_code == 1 and "may have made the code" in busy.output and "scrm channels sync" in busy.output
    assert len(read(sandbox, "calls", path="externalcontact/add_contact_way")) == 1  # not retried blindly
    assert "imported 1" in scrm("channels", "sync").output
    assert [w["state"] for w in read(sandbox, "contact_ways")] == ["expo"]


def test_a_hand_over_is_no_new_add_of_the_channel(wired, sandbox, tmp_path):
    """The takeover member's follow keeps the channel (the customer came through it) but is no add: the
    report and the dashboard's 每日新增客户 count each scan once, on its day, not again at the hand-over."""
    from bot.web.console.figures import dashboard

    scrm = _setup(wired, sandbox, tmp_path)
    scrm("channels", "create", "直播间", "--state", "live", "--member", "zhangsan")
    config_id = read(sandbox, "contact_ways")[0]["config_id"]
    for i in range(3):
        control(sandbox, f"contact_ways/{config_id}/scan", {"name": f"直播{i}"})
    assert drain(wired) == {"handled": 3}
    control(sandbox, "clock/advance", {"seconds": 86400 + 60})
    scrm("transfer", "run", "--from", "zhangsan", "--to", "lisi", "--yes", "--no-progress")
    control(sandbox, "transfers/settle", {"force": True})
    drain(wired)
    db = wired.extensions["scrm.db"]
    with db.sessions() as s:
        assert s.scalars(select(Follow.state).where(Follow.ended_at.is_(None))).all() == ["live"] * 3
    today = datetime.now(UTC).astimezone(wired.extensions["scrm.settings"].tz).strftime("%Y-%m-%d")
    live = json.loads(scrm("channels", "report", "--json").output)[0]
    assert (live["adds"], live["customers"], live["adds_per_day"]) == (3, 3, {today: 3})
    with db.sessions() as s:
        figures = dashboard(s, datetime.now(UTC) + timedelta(days=2), 14)
    assert [sum(series["data"]) for series in figures.new_by_channel["series"]] == [3]
