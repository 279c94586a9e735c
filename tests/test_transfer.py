"""在职/离职继承 end to end: `scrm transfer plan | run | status` against the sandbox's hand-over
API, WeCom's callbacks (transfer_fail, the takeover's add, DELETE_BY_TRANSFER) through the real
webhook, and the customer's history kept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from wechatpy.exceptions import WeChatClientException

from bot.contacts.transfer import TransferError, plan_departed, plan_onjob, run_plan
from bot.models import (
    Customer,
    CustomerAggregate,
    CustomerTag,
    CustomerTier,
    Follow,
    Interaction,
    OutboxMessage,
    Staff,
    Transfer,
)
from bot.wecom.client import build_clients
from tests.handover_support import drain, scrm_runner
from tests.support import control, read


def _seed(sandbox, owner: str, n: int, prefix: str, others=("lisi", "wangwu", "senior")) -> list[str]:
    ids = [f"wm{prefix}{i:05d}" for i in range(n)]
    control(sandbox, "seed", {"staff": [{"userid": u} for u in (owner, *others)],
                              "contacts": [{"userid": owner, "external_userid": e, "name": f"客户{i}"}
                                           for i, e in enumerate(ids)]})
    return ids


def _live_owner(db, ids):
    with db.sessions() as s:
        rows = s.execute(select(Customer.external_userid, Staff.userid)
                         .join(Follow, Follow.customer_id == Customer.id).join(Staff, Staff.id == Follow.staff_id)
                         .where(Customer.external_userid.in_(ids), Follow.ended_at.is_(None))).all()
    return dict(rows)


def test_onjob_transfer_of_250_customers_in_three_calls_with_one_refusal(wired, sandbox, tmp_path):
    scrm = scrm_runner(wired, tmp_path)
    ids = _seed(sandbox, "zhangsan", 250, "A")
    scrm("sync", "contacts", "--no-progress")
    db = wired.extensions["scrm.db"]

    plan = scrm("transfer", "plan", "--from", "zhangsan", "--to", "lisi").output
    assert "zhangsan  lisi  in turn  250" in plan and "plan only: 250 customers" in plan
    with db.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Transfer)) == 0
    assert read(sandbox, "calls", path="externalcontact/transfer_customer") == []

    out = scrm("transfer", "run", "--from", "zhangsan", "--to", "lisi", "--yes", "--no-progress",
               "--message", "您好，我是新的专属顾问").output
    assert "3 calls, 250 started" in out, out
    calls = read(sandbox, "calls", path="externalcontact/transfer_customer")
    assert [len(c["body"]["external_userid"]) for c in calls] == [100, 100, 50]
    assert {c["body"]["transfer_success_msg"] for c in calls} == {"您好，我是新的专属顾问"}

    refused = ids[137]
    assert control(sandbox, "transfers/refuse", {"external_userid": refused})["delivery"]["delivered"]
    assert drain(wired) == {"handled": 1}
    with db.sessions() as s:
        row = s.scalar(select(Transfer).where(Transfer.external_userid == refused))
        assert (row.status, row.fail_reason) == ("refused", "customer_refused")

    control(sandbox, "clock/advance", {"seconds": 86400 + 60})
    assert control(sandbox, "transfers/settle", {"callbacks": False})["settled"] == 249
    status = scrm("transfer", "status", "--poll").output
    assert "polled: succeeded 249; still waiting 0" in status, status
    assert f"{refused} zhangsan → lisi: 客户拒绝 (customer_refused)" in status
    owners = _live_owner(db, ids)
    assert owners[refused] == "zhangsan" and sum(1 for e in ids if owners[e] == "lisi") == 249
    with db.sessions() as s:
        ended = s.scalars(select(Follow.ended_reason).join(Staff).where(Staff.userid == "zhangsan",
                                                                          Follow.ended_at.is_not(None))).all()
        assert set(ended) == {"transferred"} and len(ended) == 249
        assert s.scalar(select(Customer.owner_userid).where(Customer.external_userid == ids[0])) == "lisi"
        assert s.scalar(select(Customer.owner_userid).where(Customer.external_userid == refused)) == "zhangsan"

    again = scrm("transfer", "run", "--from", "zhangsan", "--to", "lisi", "--yes", "--no-progress").output
    assert "1 calls, 1 started" in again  # only the customer still with zhangsan


def test_sandbox_limits_and_errors(wired, sandbox, tmp_path):
    _seed(sandbox, "zhangsan", 2, "E")
    api = build_clients(wired.extensions["scrm.settings"]).contact.transfer

    answer = api.transfer_customer("zhangsan", "lisi", ["wmE00000", "wmNOBODY"])
    assert [c["errcode"] for c in answer["customer"]] == [0, 40096]
    assert api.transfer_customer("zhangsan", "lisi", ["wmE00000"])["customer"][0]["errcode"] == 40129
    for call, code in ((lambda: api.transfer_customer("zhangsan", "zhangsan", ["wmE00001"]), 40130),
                       (lambda: api.resigned_transfer_customer("zhangsan", "lisi", ["wmE00001"]), 40097),
                       (lambda: api._post("externalcontact/transfer_customer", data={
                           "handover_userid": "zhangsan", "takeover_userid": "lisi",
                           "external_userid": [f"x{i}" for i in range(101)]}), 40058)):
        try:
            call()
        except WeChatClientException as exc:
            assert exc.errcode == code
        else:
            raise AssertionError(f"expected {code}")
    rows = api.transfer_result("zhangsan", "lisi")["customer"]
    assert [(r["external_userid"], r["status"]) for r in rows] == [("wmE00000", 2)]


def test_transfer_callbacks_settle_and_are_not_churn(wired, sandbox, tmp_path):
    scrm = scrm_runner(wired, tmp_path)
    ids = _seed(sandbox, "zhangsan", 3, "C")
    scrm("sync", "contacts", "--no-progress")
    scrm("transfer", "run", "--from", "zhangsan", "--to", "lisi", "--to", "wangwu", "--yes", "--no-progress")
    settled = control(sandbox, "transfers/settle", {"force": True})
    assert settled == {"settled": 3, "callbacks": 6, "delivered": 6}
    assert drain(wired) == {"handled": 6}
    db = wired.extensions["scrm.db"]
    with db.sessions() as s:
        assert set(s.scalars(select(Transfer.status))) == {"succeeded"}
        assert s.scalar(select(func.count()).select_from(Interaction).where(Interaction.kind == "churn_signal")) == 0
        assert s.scalar(select(func.count()).select_from(OutboxMessage)
                        .where(OutboxMessage.trigger_kind == "churn_alert")) == 0
        kinds = list(s.scalars(select(Interaction.kind).where(Interaction.kind.in_(["added", "taken_over"]))))
        assert kinds == ["taken_over"] * 3  # not counted as the customer's activity
        assert s.scalar(select(func.count()).select_from(OutboxMessage)
                        .where(OutboxMessage.trigger_kind == "welcome")) == 0
        assert s.scalar(select(func.count()).select_from(Customer)
                        .where(Customer.last_interaction_at.is_not(None))) == 0
    assert _live_owner(db, ids) == {ids[0]: "lisi", ids[1]: "wangwu", ids[2]: "lisi"}
    status = scrm("transfer", "status").output
    assert "succeeded" in status and "→" not in status  # no problem lines


def test_departed_members_customers_and_groups_reassigned_by_rule_with_history(wired, sandbox, tmp_path):
    scrm = scrm_runner(wired, tmp_path)
    ids = _seed(sandbox, "zhangsan", 6, "D")
    scrm("sync", "contacts", "--no-progress")
    now = datetime.now(UTC)
    rows = ["order_id,external_userid,amount,paid_at,status"]
    for k, e in enumerate(ids[:2]):  # recent, frequent, big: 重要价值
        rows += [f"D{k}{j},{e},900,{(now - timedelta(days=2 + j)).isoformat()},paid" for j in range(4)]
    for k, e in enumerate(ids[2:4]):  # old, once, small
        rows += [f"O{k},{e},20,{(now - timedelta(days=200)).isoformat()},paid"]
    (tmp_path / "orders.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    scrm("import-orders", str(tmp_path / "orders.csv"))
    scrm("retier")
    db = wired.extensions["scrm.db"]

    def history():
        with db.sessions() as s:
            cust = {c.id: c.external_userid
                    for c in s.scalars(select(Customer).where(Customer.external_userid.in_(ids)))}
            tiers = {cust[t.customer_id]: (t.value_tier, t.rfm_segment, t.stage) for t in s.scalars(
                select(CustomerTier).where(CustomerTier.customer_id.in_(cust)))}
            money = {cust[a.customer_id]: (a.order_count, a.paid_amount_fen) for a in s.scalars(
                select(CustomerAggregate).where(CustomerAggregate.customer_id.in_(cust)))}
            tags = sorted((cust[t.customer_id], t.tag_id) for t in s.scalars(
                select(CustomerTag).where(CustomerTag.customer_id.in_(cust))))
        return tiers, money, tags

    before = history()
    assert {before[0][e][1] for e in ids[:2]} == {"important_value"}
    control(sandbox, "handover/groups", {"owner": "zhangsan", "name": "VIP群", "chat_id": "wrVIP"})
    control(sandbox, "handover/groups", {"owner": "lisi", "name": "别人的群", "chat_id": "wrOTHER"})
    control(sandbox, "staff/zhangsan/resign", {})

    plan = scrm("transfer", "plan", "--departed", "--rule", "rfm:重要价值=senior", "--to", "lisi",
                "--to", "wangwu", "--details").output
    table = {tuple(line.split(None, 2)[:2]): line.split(None, 2)[2].rsplit(None, 1) for line in plan.splitlines()
             if line.startswith("zhangsan ")}
    assert table[("zhangsan", "senior")] == ["rule rfm:重要价值", "2"]
    assert table[("zhangsan", "lisi")] == table[("zhangsan", "wangwu")] == ["the rest, in turn", "2"]
    assert "wmD00000  zhangsan  senior  rule rfm:重要价值" in plan  # --details: each customer and why
    assert "groups: 1 to new owners (lisi 1)" in plan

    out = scrm("transfer", "run", "--departed", "--rule", "rfm:重要价值=senior", "--to", "lisi",
               "--to", "wangwu", "--yes", "--no-progress").output
    assert "3 calls, 6 started" in out and "groups moved 1, failed 0" in out, out
    calls = read(sandbox, "calls", path="externalcontact/resigned/transfer_customer")
    assert sorted(c["body"]["takeover_userid"] for c in calls) == ["lisi", "senior", "wangwu"]
    groups = {g["chat_id"]: g["owner"] for g in read(sandbox, "handover/groups")}
    assert groups == {"wrVIP": "lisi", "wrOTHER": "lisi"}
    assert read(sandbox, "calls", path="externalcontact/get_unassigned_list")

    assert control(sandbox, "transfers/settle", {"force": True})["settled"] == 6
    drain(wired)
    owners = _live_owner(db, ids)
    assert owners[ids[0]] == owners[ids[1]] == "senior"
    assert sorted(owners[e] for e in ids[2:]) == ["lisi", "lisi", "wangwu", "wangwu"]
    assert history() == before  # tiers, orders and tags stay with the customer
    with db.sessions() as s:
        assert s.scalar(select(Staff.active).where(Staff.userid == "zhangsan")) is False
        kinds = set(s.scalars(select(Interaction.kind)))
        assert "transferred" in kinds and "churn_signal" not in kinds
    status = scrm("transfer", "status").output
    assert "resigned" in status and "succeeded 1" in status  # the group


def test_plan_refuses_bad_rules_and_self_transfer(wired, sandbox, tmp_path):
    scrm = scrm_runner(wired, tmp_path)
    _seed(sandbox, "zhangsan", 2, "R")
    scrm("sync", "contacts", "--no-progress")
    for args, message in (
        (("--from", "zhangsan", "--to", "lisi", "--rule", "rfm=wang"), "bad rule"),
        (("--from", "zhangsan", "--to", "lisi", "--rule", "rfm:超级VIP=wang"), "unknown RFM segment"),
        (("--from", "zhangsan", "--to", "lisi", "--rule", "value:hgih=wang"),
         "unknown value tier 'hgih': one of high, mid, low"),
        (("--from", "zhangsan", "--to", "lisi", "--rule", "stage:suepr=wang"), "unknown stage 'suepr': one of new,"),
        (("--from", "zhangsan", "--to", "lisi", "--rule", "tag:不存在的标签=wang"), "no tag '不存在的标签'"),
        (("--from", "zhangsan", "--to", "zhangsan"), "to themselves"),
        (("--to", "lisi"), "either --from USERID"),
        (("--from", "zhangsan", "--departed", "--to", "lisi"), "either --from USERID"),
        (("--from", "zhangsan", "--to", "lisi", "--customer", "客户"), "not an external_userid"),
    ):
        result = scrm("transfer", "plan", *args, ok=False)
        assert result.exit_code != 0 and message in result.output, (args, result.output)
    chosen = scrm("transfer", "plan", "--from", "zhangsan", "--to", "lisi", "--customer", "wmR00001",
                  "--customer", "wmSTRANGER").output
    assert "plan only: 1 customers" in chosen and "skipped wmSTRANGER: not a current customer of zhangsan" in chosen
    assert "note: lisi: no customer here is followed by them" in chosen  # lisi has none yet: a typo is possible
    typo = scrm("transfer", "plan", "--from", "zhangsan", "--to", "zhangsna", "--to", "lisi").output
    assert "note: lisi, zhangsna: no customer here" in typo and "WeCom refuses an unknown member (60111)" in typo
    long_message = scrm("transfer", "run", "--from", "zhangsan", "--to", "lisi", "--message", "字" * 201, "--yes",
                        ok=False)
    assert long_message.exit_code == 2 and "1 to 200 characters" in long_message.output


def test_the_scheduled_job_records_outcomes(wired, sandbox, tmp_path):
    from bot.schedule.handover_jobs import transfer_results
    from bot.schedule.jobs import Runtime, install

    scrm = scrm_runner(wired, tmp_path)
    _seed(sandbox, "zhangsan", 2, "J")
    scrm("sync", "contacts", "--no-progress")
    processor = wired.extensions["scrm.processor"]
    install(Runtime(wired.extensions["scrm.settings"], wired.extensions["scrm.db"], processor.clients,
                    processor.sender))
    assert transfer_results() == {}  # nothing waits: no call to WeCom
    scrm("transfer", "run", "--from", "zhangsan", "--to", "lisi", "--yes", "--no-progress")
    assert transfer_results() == {}  # still within the 24 hours
    control(sandbox, "transfers/settle", {"force": True, "callbacks": False})
    assert transfer_results() == {"succeeded": 2}
    assert len(read(sandbox, "calls", path="externalcontact/transfer_result")) == 2


def test_a_customer_forgotten_while_handed_over_settles_when_wecom_answers(wired, sandbox, tmp_path):
    """The forget keys the waiting transfer by a digest of the id; WeCom's answer names the id itself, so the
    poll found no row and, 48 hours on, recorded "never started" for a hand-over WeCom had completed."""
    from bot.schedule.handover_jobs import transfer_results
    from bot.schedule.jobs import Runtime, install

    scrm = scrm_runner(wired, tmp_path)
    ids = _seed(sandbox, "zhangsan", 2, "F")
    scrm("sync", "contacts", "--no-progress")
    processor = wired.extensions["scrm.processor"]
    install(Runtime(wired.extensions["scrm.settings"], wired.extensions["scrm.db"], processor.clients,
                    processor.sender))
    scrm("transfer", "run", "--from", "zhangsan", "--to", "lisi", "--yes", "--no-progress")
    assert scrm("customer", "forget", ids[0], "--yes").exit_code == 0
    control(sandbox, "transfers/settle", {"force": True, "callbacks": False})
    assert transfer_results() == {"succeeded": 2}
    with wired.extensions["scrm.db"].sessions() as s:
        assert set(s.scalars(select(Transfer.status))) == {"succeeded"}
        assert ids[0] not in set(s.scalars(select(Transfer.external_userid)))


def test_a_call_without_an_answer_is_not_repeated_and_settles_by_polling(wired, sandbox, tmp_path):
    """The call is lost on the way (WeCom never saw it): its customers stay waiting, the call is not
    repeated, and the poll settles them as never started once WeCom has not listed them for 48 hours."""
    control(sandbox, "delays", {"path": "externalcontact/transfer_customer", "seconds": 12, "mode": "drop"})
    scrm = scrm_runner(wired, tmp_path, config="[wecom]\ntimeout_seconds = 2\n")
    ids = _seed(sandbox, "zhangsan", 3, "T")
    scrm("sync", "contacts", "--no-progress")
    out = scrm("transfer", "run", "--from", "zhangsan", "--to", "lisi", "--yes", "--no-progress").output
    assert "0 started" in out and "3 without an answer" in out, out
    assert len(read(sandbox, "calls", path="externalcontact/transfer_customer")) == 1  # not blindly repeated
    db = wired.extensions["scrm.db"]
    assert "still waiting 3" in scrm("transfer", "status", "--poll").output
    later = scrm_runner(wired, tmp_path, config="[wecom]\ntimeout_seconds = 2\n",
                        clock=lambda: datetime.now(UTC) + timedelta(hours=49))
    assert "no_record 3; still waiting 0" in later("transfer", "status", "--poll").output
    with db.sessions() as s:
        assert set(s.scalars(select(Transfer.status))) == {"no_record"}
    assert _live_owner(db, ids) == dict.fromkeys(ids, "zhangsan")


def test_a_second_run_of_the_same_plan_is_refused_before_wecom_is_asked(wired, sandbox, tmp_path):
    """A double submit: two runs of one plan, both planned before either ran. The first claims the
    customers; the second is refused when it records its rows, not answered 40129 by WeCom."""
    scrm = scrm_runner(wired, tmp_path)
    _seed(sandbox, "zhangsan", 3, "W")
    scrm("sync", "contacts", "--no-progress")
    db = wired.extensions["scrm.db"]
    api = build_clients(wired.extensions["scrm.settings"]).contact.transfer
    with db.sessions() as s:
        first, second = (plan_onjob(s, "zhangsan", ["lisi"], []) for _ in range(2))
        assert run_plan(s, api, first, datetime.now(UTC)).started == 3
    with db.sessions() as s, pytest.raises(TransferError, match="already under way"):
        run_plan(s, api, second, datetime.now(UTC))
    assert len(read(sandbox, "calls", path="externalcontact/transfer_customer")) == 1
    with db.sessions() as s:
        assert s.scalars(select(Transfer.status)).all() == ["waiting"] * 3


def test_a_customer_already_handed_over_in_wecom_waits_and_a_group_already_moved_is_no_failure(
        wired, sandbox, tmp_path):
    """WeCom's 40129 (客户正在转接中) and 90508 (离职群已经继承) say it is already done or under way, e.g.
    by a call WeCom acted on before answering busy: the customer waits for the poll, the group is counted as
    moved before this run (not as this run's move, nor as a failure)."""
    scrm = scrm_runner(wired, tmp_path)
    ids = _seed(sandbox, "zhangsan", 3, "U")
    scrm("sync", "contacts", "--no-progress")
    control(sandbox, "handover/groups", {"owner": "zhangsan", "name": "VIP群", "chat_id": "wrU"})
    control(sandbox, "staff/zhangsan/resign", {})
    db = wired.extensions["scrm.db"]
    api = build_clients(wired.extensions["scrm.settings"]).contact.transfer
    with db.sessions() as s:
        plan = plan_departed(s, api, ["lisi"], [])
    api.resigned_transfer_customer("zhangsan", "lisi", [ids[0]])
    api.groupchat_transfer(["wrU"], "lisi")
    with db.sessions() as s:
        result = run_plan(s, api, plan, datetime.now(UTC))
        assert (result.started, result.under_way, result.failed) == (2, 1, 0)
        assert (result.groups_moved, result.groups_already, result.groups_failed) == (0, 1, 0)
        assert s.scalar(select(Transfer.errcode).where(Transfer.external_userid == ids[0])) == 40129
    assert "already 1" in scrm("transfer", "status").output
    control(sandbox, "transfers/settle", {"force": True, "callbacks": False})
    assert "polled: succeeded 3; still waiting 0" in scrm("transfer", "status", "--poll").output
    assert _live_owner(db, ids) == dict.fromkeys(ids, "lisi")


def test_a_hand_over_answered_busy_is_not_repeated_and_waits_for_the_poll(wired, sandbox, tmp_path):
    """-1 may come after WeCom started the hand-over: a retry would be answered 40129 for each customer."""
    control(sandbox, "faults", {"path": "externalcontact/transfer_customer", "errcode": -1, "count": 1})
    scrm = scrm_runner(wired, tmp_path)
    _seed(sandbox, "zhangsan", 2, "B")
    scrm("sync", "contacts", "--no-progress")
    out = scrm("transfer", "run", "--from", "zhangsan", "--to", "lisi", "--yes", "--no-progress").output
    assert "0 started" in out and "0 refused by WeCom, 2 without an answer" in out, out
    assert len(read(sandbox, "calls", path="externalcontact/transfer_customer")) == 1
    with wired.extensions["scrm.db"].sessions() as s:
        assert s.scalars(select(Transfer.status)).all() == ["waiting"] * 2


def test_a_row_a_dead_run_left_planned_waits_for_the_poll_instead_of_blocking_the_customer(wired, sandbox):
    from bot.contacts.transfer import poll_results

    _seed(sandbox, "zhangsan", 1, "S")
    now = datetime.now(UTC)
    db = wired.extensions["scrm.db"]
    with db.begin() as s:
        for n, age in ((0, timedelta(hours=1)), (1, timedelta(minutes=1))):
            s.add(Transfer(batch="dead", kind="onjob", customer_id=None, external_userid=f"wmS0000{n}",
                           handover_userid="zhangsan", takeover_userid="lisi", why="in turn", status="planned",
                           created_at=now - age, updated_at=now - age))
    with db.begin() as s:
        poll_results(s, build_clients(wired.extensions["scrm.settings"]).contact.transfer, now)
        statuses = dict(s.execute(select(Transfer.external_userid, Transfer.status)).all())
    assert statuses == {"wmS00000": "waiting", "wmS00001": "planned"}  # the running one is left alone


def test_groups_wecom_moves_or_is_moving_already_are_not_this_runs_moves_nor_failures(wired):
    """90508 (离职群已经继承) and 90507 (离职群正在继承处理中): moved, or being moved, before this call."""
    from bot.contacts.transfer import GroupPlanRow, Plan
    from bot.models import GroupTransfer

    class GroupApi:
        def groupchat_transfer(self, chat_ids, new_owner):
            return {"failed_chat_list": [{"chat_id": "wrDONE", "errcode": 90508, "errmsg": "transferred"},
                                         {"chat_id": "wrBUSY", "errcode": 90507, "errmsg": "transferring"},
                                         {"chat_id": "wrBAD", "errcode": 90501, "errmsg": "not a customer group"}]}

    plan = Plan(groups=[GroupPlanRow(c, "zhangsan", "lisi") for c in ("wrNEW", "wrDONE", "wrBUSY", "wrBAD")])
    db = wired.extensions["scrm.db"]
    with db.sessions() as s:
        result = run_plan(s, GroupApi(), plan, datetime.now(UTC))
        assert (result.groups_moved, result.groups_already, result.groups_failed) == (1, 2, 1)
        statuses = dict(s.execute(select(GroupTransfer.chat_id, GroupTransfer.status)).all())
    assert statuses == {"wrNEW": "succeeded", "wrDONE": "already", "wrBUSY": "already", "wrBAD": "failed"}


def test_a_batch_id_starts_with_its_local_minute_as_pages_show_times():
    from zoneinfo import ZoneInfo

    from bot.contacts.transfer import new_batch

    batch = new_batch(datetime(2026, 12, 7, 18, 7, tzinfo=UTC), ZoneInfo("Asia/Shanghai"))
    assert batch.startswith("202612080207-")  # it read 202612071807 beside a start shown as 12-08 02:07


def test_the_poll_maps_every_result_status_when_the_callbacks_are_lost(wired, sandbox, tmp_path):
    """transfer_result's 3 客户拒绝, 4 接替成员客户达到上限 and 5 无接替记录 (WECOM-GROUPS.md §3.3) settle the
    customer without the transfer_fail callback; a refused customer handed over again appears once in the
    pair's result (the latest transfer), so the second poll counts one success, not an old refusal too."""
    scrm = scrm_runner(wired, tmp_path)
    ids = _seed(sandbox, "zhangsan", 4, "R")
    scrm("sync", "contacts", "--no-progress")
    scrm("transfer", "run", "--from", "zhangsan", "--to", "lisi", "--yes", "--no-progress")
    control(sandbox, "transfers/refuse", {"external_userid": ids[0], "callbacks": False})
    control(sandbox, "transfers/refuse", {"external_userid": ids[1], "reason": "customer_limit_exceed",
                                          "callbacks": False})
    control(sandbox, "transfers/lose", {"external_userid": ids[2]})
    assert drain(wired) == {}  # no callback came
    polled = scrm("transfer", "status", "--poll").output
    assert "polled: no_record 1, refused 1, takeover_full 1; still waiting 1" in polled, polled
    db = wired.extensions["scrm.db"]
    with db.sessions() as s:
        rows = {t.external_userid: (t.status, t.result_status) for t in s.scalars(select(Transfer))}
    assert rows == {ids[0]: ("refused", 3), ids[1]: ("takeover_full", 4), ids[2]: ("no_record", 5),
                    ids[3]: ("waiting", 2)}

    scrm("transfer", "run", "--from", "zhangsan", "--to", "lisi", "--customer", ids[0], "--yes", "--no-progress")
    control(sandbox, "transfers/settle", {"force": True, "callbacks": False})
    assert "polled: succeeded 2; still waiting 0" in scrm("transfer", "status", "--poll").output
    assert _live_owner(db, ids) == {ids[0]: "lisi", ids[1]: "zhangsan", ids[2]: "zhangsan", ids[3]: "lisi"}
