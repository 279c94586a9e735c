"""Tiered broadcasts: structured audiences compiled to SQL, templates checked when created,
preview, planning with a stratified hold-out, schedules, cancel, and the effect report."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta

import pytest
import requests
from sqlalchemy import delete, func, literal_column, select, update

from bot.campaigns.audience import Audience, AudienceError
from bot.campaigns.broadcasts import (
    BroadcastError,
    BroadcastSpec,
    GroupFigures,
    cancel_broadcast,
    conversion_lift,
    create_broadcast,
    dispatch_due,
    effect_report,
    plan_run,
    preview,
    revenue_lift,
)
from bot.models import Broadcast, Coupon, Customer, CustomerTier, Follow, Order, OutboxMessage, Staff
from bot.outbox.mass import submit_mass_messages
from bot.outbox.policy import ContactPolicy
from bot.tagging.rules import TagRules
from bot.tagging.system import resolve, tag_customer
from tests.campaign_data import MORNING, SHANGHAI, seed_audience

TEMPLATES = {"default": "{{ brand }}：本周上新，欢迎选购。", "high": "{{ tier_name }}会员专享：新品抢先看。"}


def settings_of(app):
    return app.extensions["scrm.settings"]


def spec(**kw) -> BroadcastSpec:
    values = {"name": "上新", "audience": {}, "templates": TEMPLATES, "send_at": MORNING}
    values.update(kw)
    return BroadcastSpec(**values)


def test_audience_filter_is_compiled_to_sql(app, db):
    settings = settings_of(app)
    ids = seed_audience(db, {"high": 3, "mid": 3, "low": 3})
    seed_audience(db, {"high": 2}, owner="lisi", start=100)
    rules = TagRules.from_settings(settings)
    with db.begin() as s:
        vip = resolve(s, rules, "客户等级/VIP")
        for cid in ids[:2]:
            tag_customer(s, cid, vip, source="staff", push=False)
        complained = resolve(s, rules, "已投诉")
        tag_customer(s, ids[1], complained, source="staff", push=False)

    def members(raw):
        with db.sessions() as s:
            audience = Audience.parse(raw, ("high", "mid", "low"))
            return s.scalar(select(func.count()).select_from(Customer).where(*audience.conditions(s, SHANGHAI)))

    assert members({}) == 11
    assert members({"value_tiers": ["high"]}) == 5
    assert members({"value_tiers": ["high"], "owners": ["zhangsan"]}) == 3
    assert members({"tags_any": ["客户等级/VIP"]}) == 2
    assert members({"tags_any": ["VIP"], "tags_none": ["已投诉"]}) == 1
    assert members({"tags_all": ["VIP", "已投诉"]}) == 1
    assert members({"has_ordered": True}) == 0
    assert members({"added_after": "2026-11-25"}) == 0
    assert members({"added_after": "2026-11-24", "added_before": "2026-11-25"}) == 11
    with pytest.raises(AudienceError, match="unknown audience key"):
        Audience.parse({"value_tier": ["high"]}, ("high",))
    with pytest.raises(AudienceError, match="rfm_segments: unknown"):
        Audience.parse({"rfm_segments": ["vip"]})
    with pytest.raises(AudienceError, match="unknown tag"):
        members({"tags_any": ["不存在"]})
    with pytest.raises(AudienceError, match="1=1"):  # operator text is a value, never SQL
        Audience.parse({"owners": "x' OR 1=1 --", "value_tiers": ["1=1"]}, ("high",))


def test_templates_are_checked_when_the_broadcast_is_created(app, db):
    settings = settings_of(app)
    with db.begin() as s:
        with pytest.raises(BroadcastError, match=r"unknown variable\(s\) \['nickname'\]"):
            create_broadcast(s, settings, spec(templates={"default": "{{ nickname }}您好"}), now=MORNING)
        with pytest.raises(BroadcastError, match="customer.*no attribute 'nick'|'dict object' has no attribute"):
            create_broadcast(s, settings, spec(templates={"default": "{{ customer.nick }}您好"}), now=MORNING)
        with pytest.raises(BroadcastError, match="coupon needs --coupon"):
            create_broadcast(s, settings, spec(templates={"default": "券码 {{ coupon.code }}"}), now=MORNING)
        with pytest.raises(BroadcastError, match="syntax error"):
            create_broadcast(s, settings, spec(templates={"default": "{{ brand "}), now=MORNING)
        with pytest.raises(BroadcastError, match="default template"):
            create_broadcast(s, settings, spec(templates={"high": "hi"}), now=MORNING)
        with pytest.raises(BroadcastError, match="unknown tier"):
            create_broadcast(s, settings, spec(templates={"default": "hi", "platinum": "hi"}), now=MORNING)
        with pytest.raises(BroadcastError, match="either a send time"):
            create_broadcast(s, settings, spec(cron="0 10 1 * *"), now=MORNING)
        with pytest.raises(BroadcastError, match="cron"):
            create_broadcast(s, settings, spec(send_at=None, cron="every day"), now=MORNING)
        with pytest.raises(BroadcastError, match="2026-11-24 09:59 Asia/Shanghai is in the past"):
            create_broadcast(s, settings, spec(send_at=MORNING - timedelta(minutes=1)), now=MORNING)
        personal = {"default": "{{ customer.name }}您好，{{ brand }}上新了",
                    "important_value": "尊敬的{{ customer.name }}"}
        created = create_broadcast(s, settings, spec(templates=personal), now=MORNING)
        assert created.next_run_at == MORNING and created.status == "scheduled"
        with pytest.raises(BroadcastError, match="exists already"):
            create_broadcast(s, settings, spec(), now=MORNING)


def _capped_and_opted_out(db, ids):
    with db.begin() as s:
        s.get(Customer, ids[0]).opted_out = True
        s.get(Customer, ids[1]).owner_userid = "nobody"  # no member follows them as owner
        s.add(OutboxMessage(dedupe_key="earlier", channel="mass_message", customer_id=ids[2], recipient="x",
                            trigger_kind="greeting", trigger_ref="g", content={"text": "t"}, status="confirmed",
                            scheduled_at=MORNING - timedelta(hours=1)))


def test_preview_counts_skips_holdouts_and_samples_per_tier(app, db):
    settings = settings_of(app)
    ids = seed_audience(db, {"high": 40, "low": 61})
    _capped_and_opted_out(db, ids)
    with db.sessions() as s:
        p = preview(s, settings, spec())
    assert p.audience == 101 and p.per_tier == {"high": 40, "low": 61}
    assert p.skipped == Counter({"opted out (退订)": 1, "brand cap: 1 push(es) per day reached": 1,
                                 "no member to send from (the owner no longer follows this customer)": 1})
    assert p.held_out == {"high": 4, "low": 6}  # 10% of 37 and 61, rounded
    assert p.to_send == 101 - 3 - 10
    assert [len(v) for v in p.samples.values()] == [3, 3]
    assert p.samples["high"][0]["text"] == "高价值会员专享：新品抢先看。"
    assert p.samples["low"][0]["text"].startswith("本店：本周上新") and not p.deferred
    with db.sessions() as s:
        night = preview(s, settings, spec(), at=MORNING.replace(hour=22))
        assert s.scalar(select(func.count()).select_from(OutboxMessage)) == 1  # a preview writes nothing
    assert night.deferred and night.send_after == datetime(2026, 11, 25, 9, 0, tzinfo=SHANGHAI)
    assert p.personal_tasks == 0  # one text per tier key: members confirm one task each
    with db.sessions() as s:  # {{ customer.name }}: a text (so a WeCom task) per customer
        personal = preview(s, settings, spec(templates={"default": "{{ customer.name }}您好"}))
    assert personal.personal_tasks == personal.to_send == p.to_send


def test_a_run_holds_out_a_random_tenth_of_each_tier_and_sends_the_rest(wired, sandbox):
    db, settings = wired.extensions["scrm.db"], settings_of(wired)
    seed_audience(db, {"high": 200, "mid": 35, "low": 300})
    requests.post(f"{sandbox.url}/_sandbox/seed", json={"staff": [{"userid": "zhangsan"}], "contacts": [
        {"userid": "zhangsan", "external_userid": f"wm{i:06d}", "name": f"客户{i}"} for i in range(535)]},
        timeout=30).raise_for_status()
    with db.begin() as s:
        broadcast = create_broadcast(s, settings, spec(), now=MORNING)
        first = plan_run(s, settings, broadcast, MORNING, now=MORNING)
        again = plan_run(s, settings, broadcast, MORNING, now=MORNING)
    assert first.created and not again.created and again.run.id == first.run.id
    run = first.run
    assert (run.audience, run.held_out, run.to_send, run.skipped) == (535, 20 + 4 + 30, 535 - 54, {})
    with db.sessions() as s:
        held = Counter(s.scalars(select(CustomerTier.value_tier)
                                 .join(OutboxMessage, OutboxMessage.customer_id == CustomerTier.customer_id)
                                 .where(OutboxMessage.status == "held_out")))
        texts = Counter(r["text"] for r in s.scalars(select(OutboxMessage.content)))
    assert held == Counter({"high": 20, "mid": 4, "low": 30})
    assert texts == Counter({"高价值会员专享：新品抢先看。": 200, "本店：本周上新，欢迎选购。": 335})

    with db.begin() as s:  # a second broadcast draws a different random hold-out
        other = create_broadcast(s, settings, spec(name="二次", send_at=MORNING + timedelta(days=7)), now=MORNING)
        second = plan_run(s, settings, other, other.next_run_at, now=other.next_run_at).run
        held_ids = [set(s.scalars(select(OutboxMessage.customer_id).where(
            OutboxMessage.trigger_ref == f"broadcast_run:{r.id}", OutboxMessage.status == "held_out")))
            for r in (run, second)]
    assert held_ids[0] != held_ids[1]

    processor = wired.extensions["scrm.processor"]
    outcome = submit_mass_messages(db, processor.clients.contact, ContactPolicy.from_settings(settings), now=MORNING)
    assert outcome == Counter({"submitted": 535 - 54})  # held-out rows are never sent
    sent = requests.get(f"{sandbox.url}/_sandbox/sent", timeout=10).json()["mass_messages"]
    assert sorted(len(m["external_userid"]) for m in sent) == [180, 301]  # one call per text and sender


def test_schedules_once_and_cron_and_cancel(app, db):
    settings = settings_of(app)
    seed_audience(db, {"high": 5, "low": 5})
    with db.begin() as s:
        once = create_broadcast(s, settings, spec(), now=MORNING)
        monthly = create_broadcast(s, settings, spec(name="会员日", send_at=None, cron="0 10 1 * *",
                                                     audience={"value_tiers": ["high"]}), now=MORNING)
        assert monthly.next_run_at == datetime(2026, 12, 1, 10, 0, tzinfo=SHANGHAI)
        assert dispatch_due(s, settings, now=MORNING - timedelta(minutes=1)) == []
        runs = dispatch_due(s, settings, now=MORNING + timedelta(seconds=30))
        assert [r.broadcast_id for r in runs] == [once.id] and once.status == "done"
        assert dispatch_due(s, settings, now=MORNING + timedelta(minutes=1)) == []  # once means once
        december = datetime(2026, 12, 1, 10, 0, 20, tzinfo=SHANGHAI)
        assert [r.broadcast_id for r in dispatch_due(s, settings, now=december)] == [monthly.id]
        assert monthly.next_run_at == datetime(2027, 1, 1, 10, 0, tzinfo=SHANGHAI)
        assert cancel_broadcast(s, monthly) == 5 - 1  # its pending rows are skipped, the held-out one stays
        assert monthly.status == "cancelled"
        assert dispatch_due(s, settings, now=datetime(2027, 2, 1, tzinfo=SHANGHAI)) == []
        assert s.scalar(select(func.count()).select_from(OutboxMessage).where(
            OutboxMessage.reason == "broadcast cancelled")) == 4


def test_coupon_broadcast_gives_each_recipient_an_own_code(app, db):
    settings = settings_of(app)
    seed_audience(db, {"high": 30, "low": 10})
    with db.begin() as s:
        broadcast = create_broadcast(s, settings, spec(
            name="会员日券", coupon="VIP",
            templates={"default": "{{ customer.name }}：{{ coupon.title }} {{ coupon.code }}"}), now=MORNING)
        run = plan_run(s, settings, broadcast, MORNING, now=MORNING).run
        assert run.skipped == {"the coupon is only for ['high']": 10} and run.held_out == 3
        rows = s.scalars(select(OutboxMessage).where(OutboxMessage.status == "pending")).all()
        coupons = {c.customer_id: c for c in s.scalars(select(Coupon))}
    assert len(rows) == 27 and len(coupons) == 27  # held-out and skipped customers get no coupon
    codes = {r.content["coupon"] for r in rows}
    assert len(codes) == 27
    for row in rows:
        code = coupons[row.customer_id].code
        assert row.content["text"].endswith(f"专属优惠券 {code[:4]}-{code[4:8]}-{code[8:]}")
    with db.begin() as s:  # cancelled before WeCom had it: no customer holds the codes
        assert cancel_broadcast(s, s.get(Broadcast, broadcast.id), now=MORNING) == 27
    with db.sessions() as s:
        assert Counter(s.scalars(select(Coupon.status))) == Counter({"withdrawn": 27})


def test_lift_and_interval_on_constructed_groups():
    sent = GroupFigures(customers=900, converters=180, orders=200, revenue_fen=900 * 5000, revenue_sq_fen=0)
    held = GroupFigures(customers=100, converters=10, orders=10, revenue_fen=100 * 2000, revenue_sq_fen=0)
    lift = conversion_lift(sent, held)
    assert lift.difference == pytest.approx(0.1)
    assert lift.low < 0.1 < lift.high and lift.relative == pytest.approx(1.0)
    assert revenue_lift(sent, held).difference == pytest.approx(3000)
    assert conversion_lift(sent, GroupFigures()) is None


def test_the_conversion_interval_is_newcombes_and_honest_for_small_groups():
    # Newcombe (1998), Statistics in Medicine 17:873, table II: 56/70 against 48/80 → 0.0524 to 0.3339.
    lift = conversion_lift(GroupFigures(customers=70, converters=56), GroupFigures(customers=80, converters=48))
    assert (round(lift.low, 4), round(lift.high, 4)) == (0.0524, 0.3339)
    # One of one converted, none of two: a Wald interval would claim exactly +100 points.
    small = conversion_lift(GroupFigures(customers=1, converters=1), GroupFigures(customers=2, converters=0))
    assert small.difference == 1.0 and small.low < 0.2 and small.high == pytest.approx(1.0)


def test_tier_texts_follow_segment_then_tier_then_default(app, db):
    settings = settings_of(app)
    retain = seed_audience(db, {"high": 2, "low": 3}, rfm_segment="important_retain")
    keep = seed_audience(db, {"high": 2, "low": 1}, rfm_segment="general_keep", start=100)
    untiered = seed_audience(db, {None: 2}, start=200)
    templates = {"default": "默认", "high": "高价值", "important_retain": "回归礼"}
    with db.begin() as s:
        broadcast = create_broadcast(s, settings, spec(templates=templates, holdout_percent=0), now=MORNING)
        run = plan_run(s, settings, broadcast, MORNING, now=MORNING).run
        texts = dict(s.execute(select(OutboxMessage.customer_id, OutboxMessage.content).where(
            OutboxMessage.trigger_ref == f"broadcast_run:{run.id}")).all())
    expected = {**dict.fromkeys(retain, "回归礼"), **dict.fromkeys(keep[:2], "高价值"),
                **dict.fromkeys(keep[2:] + untiered, "默认")}
    assert {cid: doc["text"] for cid, doc in texts.items()} == expected


def test_holdout_is_exact_per_tier_even_when_the_candidates_fall_short(app, db, monkeypatch):
    """The draw keeps only keys under a per-tier threshold; a tier left with fewer candidates than its
    draw (here forced: a threshold below every key) is drawn again from all its customers."""
    from bot.campaigns.broadcasts import HoldoutDraw

    settings = settings_of(app)
    seed_audience(db, {"high": 7, "mid": 45, "low": 250, None: 40})  # None: tiered without a value tier
    for week, (margin, name) in enumerate(((HoldoutDraw.MARGIN_SIGMAS, "常规"), (-1000, "补抽"))):
        monkeypatch.setattr(HoldoutDraw, "MARGIN_SIGMAS", margin)
        at = MORNING + timedelta(days=7 * week)  # a week apart: the first run's rows do not cap the second
        with db.begin() as s:
            broadcast = create_broadcast(s, settings, spec(name=name, holdout_percent=30, send_at=at), now=MORNING)
            run = plan_run(s, settings, broadcast, at, now=at).run
            held = Counter(s.execute(select(func.coalesce(CustomerTier.value_tier, "none"))
                                     .select_from(OutboxMessage)
                                     .outerjoin(CustomerTier, CustomerTier.customer_id == OutboxMessage.customer_id)
                                     .where(OutboxMessage.trigger_ref == f"broadcast_run:{run.id}",
                                            OutboxMessage.status == "held_out")).scalars())
        assert held == Counter({"high": 2, "mid": 14, "low": 75, "none": 12}), name  # 30% of 7, 45, 250, 40


def test_effect_report_counts_orders_after_the_run(app, db):
    settings = settings_of(app)
    seed_audience(db, {"low": 100})
    with db.begin() as s:
        broadcast = create_broadcast(s, settings, spec(holdout_percent=20), now=MORNING)
        plan_run(s, settings, broadcast, MORNING, now=MORNING)
        rows = s.execute(select(OutboxMessage.customer_id, OutboxMessage.status)).all()
        sent = [c for c, st in rows if st == "pending"]
        held = [c for c, st in rows if st == "held_out"]
        def order(cid, n, amount_fen, at):
            s.add(Order(order_id=f"o{cid}-{n}", customer_id=cid, amount_fen=amount_fen, paid_at=at,
                        paid_day=at.astimezone(SHANGHAI).date().toordinal()))

        for cid in sent[:24]:  # 30% of 80 sent customers order after the run
            order(cid, 1, 10000, MORNING + timedelta(days=2))
        order(sent[0], 2, 5000, MORNING + timedelta(days=3))
        order(held[0], 1, 10000, MORNING + timedelta(days=1))  # 1 of 20 held out
        order(held[1], 1, 99999, MORNING - timedelta(days=1))  # before the run: not counted
        order(sent[30], 1, 99999, MORNING + timedelta(days=20))  # after the window: not counted
        report = effect_report(s, broadcast, 14, now=MORNING + timedelta(days=30))
    assert (report.sent.customers, report.sent.converters, report.sent.orders) == (80, 24, 25)
    assert report.sent.revenue_fen == 24 * 10000 + 5000
    assert (report.held_out.customers, report.held_out.converters, report.held_out.revenue_fen) == (20, 1, 10000)
    assert report.conversion_lift.difference == pytest.approx(0.30 - 0.05)
    assert report.conversion_lift.low < 0.25 < report.conversion_lift.high


def test_a_broadcast_whose_tag_was_deleted_fails_without_stopping_others(app, db):
    settings = settings_of(app)
    seed_audience(db, {"low": 3})
    rules = TagRules.from_settings(settings)
    with db.begin() as s:
        tag = resolve(s, rules, "临时标签")
        broken = create_broadcast(s, settings, spec(name="坏的", audience={"tags_any": ["临时标签"]}), now=MORNING)
        fine = create_broadcast(s, settings, spec(name="好的"), now=MORNING)
        tag.deleted = True
    with db.begin() as s:
        runs = dispatch_due(s, settings, now=MORNING + timedelta(minutes=1))
        assert [r.broadcast_id for r in runs] == [fine.id]
        assert s.get(Broadcast, broken.id).status == "failed"
        assert s.scalar(select(func.count()).select_from(Staff)) == 1


def test_a_template_that_fails_on_real_customers_fails_its_broadcast_alone_and_long_texts_are_cut(app, db):
    """The creation check renders a sample customer; a template may still fail (or run long) on a real name.
    That broadcast fails with the reason, the others are planned, and no text goes over WeCom's 4000 bytes."""
    settings = settings_of(app)
    seed_audience(db, {"low": 3})
    real = 'customer.name != "样例客户"'
    with db.begin() as s:
        broken = create_broadcast(s, settings, spec(name="坏的", templates={
            "default": f"{{{{ 1 // (0 if {real} else 1) }}}}"}), now=MORNING)
        long = create_broadcast(s, settings, spec(name="长的", templates={
            "default": f"{{{{ '长' * (2000 if {real} else 1) }}}}"}), now=MORNING)
        fine = create_broadcast(s, settings, spec(name="好的"), now=MORNING)
    with db.begin() as s:
        runs = dispatch_due(s, settings, now=MORNING + timedelta(minutes=1))
        assert sorted(r.broadcast_id for r in runs) == sorted([long.id, fine.id])
        assert s.get(Broadcast, broken.id).status == "failed"
        texts = [c["text"] for c in s.scalars(select(OutboxMessage.content).where(
            OutboxMessage.trigger_kind == "campaign")) if c["text"].startswith("长")]
    assert texts and all(len(t.encode("utf-8")) <= 4000 and t.endswith("…") for t in texts)


def test_a_name_taken_by_a_concurrent_request_is_refused_not_an_integrity_error(app, db):
    from bot.campaigns.broadcasts import add_named

    settings = settings_of(app)
    with db.begin() as s:
        create_broadcast(s, settings, spec(), now=MORNING)
    with db.begin() as s, pytest.raises(BroadcastError, match="exists already"):
        add_named(s, Broadcast(name=spec().name, audience={}, templates=TEMPLATES, status="scheduled"),
                  "a broadcast named '上新' exists already")


def test_cron_weekdays_are_standard_crontab():
    from bot.campaigns.rules import cron_trigger

    after = datetime(2026, 11, 24, tzinfo=SHANGHAI)  # a Tuesday
    fire = {expr: cron_trigger(expr, SHANGHAI).get_next_fire_time(None, after).date().isoformat()
            for expr in ("0 10 * * 5", "0 10 * * 0", "0 10 * * 7", "0 10 * * 1-3", "0 10 * * fri")}
    assert fire == {"0 10 * * 5": "2026-11-27", "0 10 * * 0": "2026-11-29", "0 10 * * 7": "2026-11-29",
                    "0 10 * * 1-3": "2026-11-24", "0 10 * * fri": "2026-11-27"}
    with pytest.raises(ValueError, match="5 fields"):
        cron_trigger("0 10 * *")
    both = cron_trigger("0 10 1 * 1", SHANGHAI)  # standard cron: the 1st of a month or a Monday
    fires, moment = [], after
    for _ in range(4):
        moment = both.get_next_fire_time(None, moment)
        fires.append(moment.date().isoformat())
        moment += timedelta(minutes=1)
    assert fires == ["2026-11-30", "2026-12-01", "2026-12-07", "2026-12-14"]
    every_other = cron_trigger("0 10 1 * */2", SHANGHAI)  # a weekday of "*/n" is "any" to standard cron: the 1st
    assert every_other.get_next_fire_time(None, after).date().isoformat() == "2026-12-01"


def test_cli_create_preview_list_report_cancel(cli_env, db, tmp_path):
    from click.testing import CliRunner

    from bot.cli import main

    runner = CliRunner(env={"SCRM_CONFIG": None, **cli_env})
    before_the_send = lambda: MORNING - timedelta(hours=1)  # noqa: E731 - the CLI's clock
    seed_audience(db, {"high": 12, "low": 30})
    vip = tmp_path / "vip.j2"
    vip.write_text("{{ customer.name }}，{{ tier_name }}会员日快乐", encoding="utf-8")
    args = ["broadcast", "create", "会员日", "--audience", '{"value_tiers": ["high", "low"]}',
            "--template", "default=本周上新", "--template-file", f"high={vip}", "--at", "2026-11-24 10:00"]
    refused = runner.invoke(main, args, input="n\n", obj=before_the_send)
    assert refused.exit_code == 1 and "audience 42; to send 38; held out 4" in refused.output
    assert "客户0，高价值会员日快乐" in refused.output  # samples per tier before anything is scheduled
    created = runner.invoke(main, [*args, "--yes"], obj=before_the_send)
    assert created.exit_code == 0 and "first run 2026-11-24 10:00" in created.output, created.output
    bad = runner.invoke(main, ["broadcast", "create", "坏", "--template", "default={{ nick }}", "--at",
                               "2026-11-24 10:00", "--yes"], obj=before_the_send)
    assert bad.exit_code == 1 and "unknown variable(s) ['nick']" in bad.output
    assert "会员日" in runner.invoke(main, ["broadcast", "list"]).output
    assert "held out" in runner.invoke(main, ["broadcast", "preview", "会员日"]).output
    report = runner.invoke(main, ["broadcast", "report", "会员日"])
    assert report.exit_code == 0 and "0 run(s)" in report.output and "needs customers in both groups" in report.output
    kept = runner.invoke(main, ["broadcast", "cancel", "会员日"], input="n\n")  # it asks first
    assert kept.exit_code == 1 and "0 message(s) not yet handed to WeCom" in kept.output
    cancelled = runner.invoke(main, ["broadcast", "cancel", "会员日", "--yes"])
    assert cancelled.exit_code == 0 and "cancelled" in cancelled.output
    again = runner.invoke(main, ["broadcast", "cancel", "会员日", "--yes"])  # finished: its status stays
    assert again.exit_code == 1 and "is cancelled and has nothing left unsent" in again.output
    assert runner.invoke(main, ["broadcast", "cancel", "没有"]).exit_code == 1


def test_effect_report_survives_big_spenders(app, db):
    settings = settings_of(app)
    seed_audience(db, {"high": 20})
    with db.begin() as s:
        broadcast = create_broadcast(s, settings, spec(), now=MORNING)
        plan_run(s, settings, broadcast, MORNING, now=MORNING)
        sent = s.scalar(select(OutboxMessage.customer_id).where(OutboxMessage.status == "pending"))
        at = MORNING + timedelta(days=1)
        s.add(Order(order_id="big", customer_id=sent, amount_fen=9_000_000_000_000, paid_at=at,
                    paid_day=at.astimezone(SHANGHAI).date().toordinal()))  # 900 亿元: its square overflows BIGINT
        report = effect_report(s, broadcast, 14, now=MORNING + timedelta(days=30))
    assert report.sent.revenue_fen == 9_000_000_000_000 and report.revenue_lift_fen is not None


def test_scrm_broadcast_create_refuses_a_past_time_and_done_shows_no_next_run(app, db):
    """The CLI's "now" is its clock (here MORNING), not the wall clock."""
    from click.testing import CliRunner

    from bot.cli import main

    seed_audience(db, {"high": 2, "low": 2})
    env = {"SCRM_CONFIG": None, "SCRM_DATABASE_URL": str(app.extensions["scrm.db"].url)}

    def scrm(*args: str):
        return CliRunner(env=env).invoke(main, list(args), obj=lambda: MORNING)

    past = scrm("broadcast", "create", "旧闻", "--template", "default=hi", "--at", "2026-11-24 09:59", "--yes")
    assert past.exit_code == 1
    assert "2026-11-24 09:59 Asia/Shanghai is in the past (now 2026-11-24 10:00 Asia/Shanghai)" in past.output
    assert "audience" not in past.output  # refused before the preview
    later = scrm("broadcast", "create", "上新", "--template", "default=hi", "--at", "2026-11-24 11:00", "--yes")
    assert later.exit_code == 0 and "first run 2026-11-24 11:00" in later.output, later.output
    with db.begin() as s:
        assert s.scalar(select(func.count()).select_from(Broadcast)) == 1
        dispatch_due(s, settings_of(app), now=MORNING + timedelta(hours=1, seconds=30))
        s.add(Broadcast(name="演示", audience={}, templates={"default": "hi"}, send_at=MORNING, status="done",
                        holdout_percent=0, next_run_at=MORNING))  # how `scrm demo` used to leave its broadcast
    listed = scrm("broadcast", "list").output.splitlines()
    for name in ("上新", "演示"):
        [row] = [line.split() for line in listed if name in line]
        assert row[2] == "done" and row[5] == "-", row  # status, schedule (a day and a time), next run


def _a_mixed_customer_base(db, rng) -> list[int]:
    """Every state a push may meet: opted out, no tier, an owner who never followed or stopped
    following, a follow by someone else only, pushes today / this week / by mass message, tags."""
    ids = seed_audience(db, {"high": 25, "mid": 25, "low": 30, "important_retain": 5})
    ids += seed_audience(db, {"high": 10, "low": 10}, owner="lisi", start=200)
    with db.begin() as s:
        s.execute(update(CustomerTier).where(CustomerTier.customer_id.in_(ids[:70:7])).values(
            rfm_segment="important_retain"))
        s.execute(delete(CustomerTier).where(CustomerTier.customer_id.in_(ids[3:90:11])))  # not tiered yet
        lisi = s.scalar(select(Staff.id).where(Staff.userid == "lisi"))
        for cid in ids:
            roll = rng.random()
            customer = s.get(Customer, cid)
            if roll < 0.08:
                customer.opted_out = True
            elif roll < 0.14:
                customer.owner_userid = "nobody"
            elif roll < 0.18:
                customer.owner_userid = None
            elif roll < 0.24:
                s.execute(update(Follow).where(Follow.customer_id == cid).values(ended_at=MORNING - timedelta(days=1)))
            elif roll < 0.28:
                s.execute(update(Follow).where(Follow.customer_id == cid).values(staff_id=lisi))
            for n in range(rng.choice([0, 0, 0, 1, 2, 5])):
                s.add(OutboxMessage(dedupe_key=f"earlier:{cid}:{n}", channel=rng.choice(["mass_message", "kf"]),
                                    customer_id=cid, recipient="x", trigger_kind="greeting", trigger_ref="g",
                                    content={"text": "t"}, status=rng.choice(["confirmed", "sent", "failed"]),
                                    scheduled_at=MORNING - timedelta(hours=rng.choice([1, 30, 24 * 5, 24 * 20]))))
    return ids


@pytest.mark.parametrize("audience, coupon", [
    ({}, None), ({"value_tiers": ["high", "low"]}, None), ({"value_tiers": ["high", "mid"]}, "VIP"),
    ({}, "VIP"), ({"owners": ["lisi", "nobody"]}, None), ({"rfm_segments": ["important_retain"]}, "VIP")])
def test_the_preview_counts_what_a_run_plans(app, db, audience, coupon):
    """The preview asks only the customers a push could skip; a run asks everyone. Same numbers."""
    import random

    settings = settings_of(app)
    _a_mixed_customer_base(db, random.Random(len(str(audience)) * 31 + bool(coupon)))
    templates = {"default": "{{ customer.name }}：{{ coupon.title }} {{ coupon.code }}"} if coupon else TEMPLATES
    the_spec = spec(audience=audience, coupon=coupon, holdout_percent=0, templates=templates)
    with db.sessions() as s:
        p = preview(s, settings, the_spec)
    with db.begin() as s:
        broadcast = create_broadcast(s, settings, the_spec, now=MORNING - timedelta(minutes=1))
        run = plan_run(s, settings, broadcast, MORNING, now=MORNING).run
        tier = func.coalesce(CustomerTier.value_tier, literal_column("'none'")).label("tier")
        planned = Counter(dict(s.execute(select(tier, func.count()).select_from(OutboxMessage).outerjoin(
            CustomerTier, CustomerTier.customer_id == OutboxMessage.customer_id)
            .where(OutboxMessage.trigger_ref == f"broadcast_run:{run.id}").group_by(tier)).all()))
    assert p.skipped and p.skipped == Counter(run.skipped)
    assert p.to_send == run.to_send and p.audience == sum(planned.values())
    assert p.per_tier == dict(planned)
