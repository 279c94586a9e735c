"""`scrm customer forget`: a customer's personal data leaves every table (and, on SQLite, the file's bytes)
while orders, aggregates and tier statistics stay; the sync and the imports do not bring them back."""

from __future__ import annotations

import io
import json
import logging
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from bot.cli import main
from bot.core.db import sqlite_file
from bot.models import (
    AuditEntry,
    Base,
    Customer,
    CustomerAggregate,
    CustomerTier,
    Follow,
    GroupMember,
    InboxEvent,
    Interaction,
    OutboxMessage,
    Transfer,
)
from tests.support import PG_URL, control, read, secret_for

NOW = datetime(2026, 12, 1, 4, 0, tzinfo=UTC)
NAME, OTHER = "薛宝钗", "林黛玉"
MOBILE, OTHER_MOBILE = "13957203864", "13680417259"  # no run of digits SQL text has (0123456789)
FORGET, KEEP = "wmFORGETxq7Lr2MtN5pW9sZkYc3B", "wmKEEPxq7Lr2MtN5pW9sZkYc3Bd"


def drain(app: Any) -> dict[str, int]:
    return dict(app.extensions["scrm.processor"].drain())


@pytest.fixture
def scrm(wired: Any, sandbox: Any, corp: Any, database_url: str):
    env = {"SCRM_CONFIG": None, "SCRM_DATABASE_URL": database_url, "SCRM_WECOM_CORP_ID": corp.corp_id,
           "SCRM_WECOM_SECRET": secret_for(corp, "app"), "SCRM_WECOM_CONTACT_SECRET": secret_for(corp, "contact"),
           "SCRM_WECOM_API_BASE_URL": f"{sandbox.url}/cgi-bin/", "SCRM_WECOM_BUSY_BACKOFF_SECONDS": "0"}

    def run(*args: str, ok: bool = True, input: str | None = None) -> str:
        result = CliRunner(env=env).invoke(main, list(args), input=input, obj=lambda: NOW)
        assert (result.exit_code == 0) == ok, result.output
        return result.output

    return run


def orders_csv(path: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    path.write_text("order_id,external_userid,amount,paid_at\n" + "".join(f"{','.join(r)}\n" for r in rows),
                    encoding="utf-8")
    return path


def tier_statistics(db: Any) -> list[tuple[Any, ...]]:
    with db.sessions() as s:
        tiers = s.execute(select(CustomerTier.value_tier, CustomerTier.rfm_segment, CustomerTier.stage,
                                 CustomerTier.engagement, CustomerTier.activity, func.count())
                          .group_by(CustomerTier.value_tier, CustomerTier.rfm_segment, CustomerTier.stage,
                                    CustomerTier.engagement, CustomerTier.activity)).all()
        totals = s.execute(select(func.count(), func.sum(CustomerAggregate.paid_amount_fen),
                                  func.sum(CustomerAggregate.order_count))).one()
    return sorted([tuple(map(str, row)) for row in tiers]) + [tuple(totals)]


def every_row(db: Any) -> str:
    """Every value of every table, as text (both databases)."""
    with db.sessions() as s:
        return "\n".join(repr(tuple(row)) for table in Base.metadata.sorted_tables
                         for row in s.execute(table.select()))


def personal(text: str) -> list[str]:
    return [p for p in (NAME, MOBILE, FORGET) if p in text]


def customer_with_history(scrm: Any, wired: Any, sandbox: Any, tmp_path: Path) -> None:
    """Two customers as the service meets them: added through a channel and welcomed by name, a remark
    with a phone number, 微信客服 messages answered, orders imported, tiers computed."""
    control(sandbox, "seed", {"staff": [{"userid": "zhangsan", "name": "张三"}],
                              "kf_accounts": [{"open_kfid": "wkSHOP", "name": "官方客服"}]})
    for external_userid, name, mobile in ((FORGET, NAME, MOBILE), (KEEP, OTHER, OTHER_MOBILE)):
        control(sandbox, "contacts/add", {"userid": "zhangsan", "name": name, "external_userid": external_userid,
                                          "state": "live_0618"})
        control(sandbox, "contacts/edit", {"userid": "zhangsan", "external_userid": external_userid,
                                           "remark": f"{name} 手机{mobile}", "description": f"{name}的老客户"})
        control(sandbox, "kf/text", {"open_kfid": "wkSHOP", "external_userid": external_userid,
                                     "contents": [f"我是{name}，电话{mobile}，多少钱？"]})
    assert drain(wired).get("handled") == 6
    scrm("import-orders", str(orders_csv(tmp_path / "orders.csv", [
        ("o1", FORGET, "800.00", "2026-11-01T10:00:00+08:00"), ("o2", FORGET, "600.00", "2026-11-20T10:00:00+08:00"),
        ("o3", KEEP, "99.00", "2026-11-03T10:00:00+08:00")])), "--no-progress")
    scrm("retier")


def test_forget_erases_personal_data_everywhere_and_keeps_tier_statistics(scrm, wired, sandbox, tmp_path):
    db = wired.extensions["scrm.db"]
    customer_with_history(scrm, wired, sandbox, tmp_path)
    assert personal(every_row(db)) == [NAME, MOBILE, FORGET]  # the data is there to begin with
    before = tier_statistics(db)
    with db.sessions() as s:
        customer_id = s.scalar(select(Customer.id).where(Customer.external_userid == FORGET))

    out = scrm("customer", "forget", FORGET, "--yes", "--actor", "dpo@brand")
    assert f"forgot customer {customer_id}" in out and personal(out) == []
    assert personal(every_row(db)) == []
    assert tier_statistics(db) == before
    scrm("retier")  # and a re-tier of the anonymous record moves nothing
    assert tier_statistics(db) == before
    with db.sessions() as s:
        kept = s.scalar(select(Customer).where(Customer.external_userid == KEEP))
        assert kept.name == OTHER  # only the one customer
        assert s.scalar(select(Follow.remark).where(Follow.customer_id == kept.id)) == f"{OTHER} 手机{OTHER_MOBILE}"
        assert s.scalar(select(func.count()).select_from(Interaction).where(
            Interaction.customer_id == customer_id)) >= 2  # activity is counted from these, without their text
        assert all(row.content == {} for row in s.scalars(select(OutboxMessage).where(
            OutboxMessage.customer_id == customer_id)))
        audit = s.scalars(select(AuditEntry)).all()
    assert [(a.actor, a.action, a.target) for a in audit] == [("dpo@brand", "customer.forget",
                                                               f"customer:{customer_id}")]
    assert personal(json.dumps(audit[0].after, ensure_ascii=False)) == []

    if not PG_URL:  # the file's own bytes: nothing left in free pages or the write-ahead log
        path = sqlite_file(db.url)
        assert path is not None
        db.dispose()
        with sqlite3.connect(path) as conn:
            conn.execute("VACUUM")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        raw = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
        assert [p for p in (NAME, MOBILE, FORGET) if p.encode("utf-8") in raw] == []
        assert OTHER.encode("utf-8") in raw


def test_forget_erases_the_contact_from_group_member_lists_and_hand_overs(scrm, wired, sandbox, tmp_path):
    """A customer in a customer group (its member list holds their id, name and group nickname) and in a
    hand-over between members: after the forget no table names them, and the other member keeps theirs."""
    db = wired.extensions["scrm.db"]
    customer_with_history(scrm, wired, sandbox, tmp_path)
    control(sandbox, "seed", {"staff": [{"userid": "lisi", "name": "李四"}]})
    control(sandbox, "groups", {"owner": "zhangsan", "name": "VIP群", "members": [FORGET, KEEP]})
    assert drain(wired).get("handled") == 1
    with db.sessions() as s:
        customer_id = s.scalar(select(Customer.id).where(Customer.external_userid == FORGET))
        member = s.scalar(select(GroupMember).where(GroupMember.member_id == FORGET))
        assert member is not None and member.name == NAME
        member.group_nickname = f"{NAME}{MOBILE}"
        s.add(Transfer(batch="b1", kind="onjob", customer_id=customer_id, external_userid=FORGET,
                       handover_userid="zhangsan", takeover_userid="lisi", status="waiting"))
        s.commit()

    out = scrm("customer", "forget", FORGET, "--yes")
    assert f"forgot customer {customer_id}" in out
    assert personal(every_row(db)) == []
    with db.sessions() as s:
        member = s.scalar(select(GroupMember).where(GroupMember.customer_id == customer_id))
        assert member is not None and member.member_id.startswith("forgotten:")  # still counted in the group
        assert (member.name, member.group_nickname) == ("", "")
        assert s.scalar(select(GroupMember.name).where(GroupMember.member_id == KEEP)) == OTHER
        transfer = s.scalar(select(Transfer))
        assert transfer.external_userid == member.member_id and transfer.customer_id == customer_id
        rows = s.scalars(select(AuditEntry.after)).one()["rows"]
        assert (rows["group_members"], rows["transfers"]) == (1, 1)
    # WeCom still lists them in the group (with their name): a sync keeps them the anonymous member.
    assert "groups 1" in scrm("groups", "sync", "--no-progress")
    assert personal(every_row(db)) == []
    with db.sessions() as s:
        members = s.scalars(select(GroupMember).where(GroupMember.customer_id == customer_id)).all()
        assert [(m.member_id.startswith("forgotten:"), m.name, m.left_at) for m in members] == [(True, "", None)]


def test_forget_twice_changes_nothing_and_sync_and_imports_leave_it_forgotten(scrm, wired, sandbox, tmp_path):
    db = wired.extensions["scrm.db"]
    customer_with_history(scrm, wired, sandbox, tmp_path)
    scrm("customer", "forget", FORGET, "--yes")
    before = tier_statistics(db)
    customers = every_row(db).count("Customer")
    with db.sessions() as s:
        customer_id = s.scalar(select(Customer.id).where(Customer.name == ""))

    assert f"customer {customer_id} was forgotten already; nothing changed" in scrm(
        "customer", "forget", FORGET, "--yes")
    assert "forgotten already" in scrm("customer", "forget", str(customer_id), "--yes")
    out = scrm("sync", "contacts", "--no-progress")  # WeCom still lists the contact
    assert "customers added 0" in out and "forgotten skipped 1" in out
    out = scrm("import-orders", str(orders_csv(tmp_path / "again.csv", [
        ("o1", FORGET, "800.00", "2026-11-01T10:00:00+08:00"), ("o9", FORGET, "5.00", "2026-11-21T10:00:00+08:00"),
        ("o3", KEEP, "99.00", "2026-11-03T10:00:00+08:00")])), "--no-progress")
    assert "the customer was forgotten (scrm customer forget)" in out
    customers_csv = tmp_path / "customers.csv"
    customers_csv.write_text(f"external_userid,name,follow_userid,added_at\n{FORGET},{NAME},zhangsan,"
                             "2026-10-01T09:30:00+08:00\n", encoding="utf-8")
    out = scrm("import-customers", str(customers_csv), "--no-progress", ok=False)  # every row skipped: exit 1
    assert "not imported again" in out
    control(sandbox, "contacts/edit", {"userid": "zhangsan", "external_userid": FORGET, "remark": "新备注"})
    assert drain(wired) == {"handled": 1}  # a member's edit does not bring them back either

    assert personal(every_row(db)) == []
    assert every_row(db).count("Customer") == customers
    assert tier_statistics(db) == before
    with db.sessions() as s:
        assert s.scalar(select(func.count()).select_from(AuditEntry)) == 1


def test_the_orders_api_refuses_a_forgotten_customers_orders_and_stores_the_others(scrm, wired, sandbox, tmp_path):
    """As the CSV import does: an order naming the forgotten id, or one of the anonymous record's orders, is
    skipped with the reason (no customer row comes back, the record's statistics stay); the others land."""
    db = wired.extensions["scrm.db"]
    customer_with_history(scrm, wired, sandbox, tmp_path)
    scrm("customer", "forget", FORGET, "--yes")
    before = tier_statistics(db)
    customers = every_row(db).count("Customer")
    token = scrm("token", "create", "shop").strip().splitlines()[0]
    orders = [{"order_id": "o8", "external_userid": FORGET, "amount": "5.00", "paid_at": "2026-11-21T10:00:00+08:00"},
              {"order_id": "o1", "external_userid": KEEP, "amount": "1.00", "paid_at": "2026-11-01T10:00:00+08:00"},
              {"order_id": "o9", "external_userid": KEEP, "amount": "9.00", "paid_at": "2026-11-22T10:00:00+08:00"}]

    response = wired.test_client().post("/api/v1/orders", json=orders, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.json
    results = response.json["results"]
    assert [r["result"] for r in results] == ["skipped", "skipped", "inserted"]
    assert "the customer was forgotten" in results[0]["reason"]
    assert "belongs to a forgotten customer" in results[1]["reason"]
    assert response.json["summary"] == {"skipped": 2, "inserted": 1}
    assert personal(every_row(db)) == []
    assert every_row(db).count("Customer") == customers
    with db.sessions() as s:
        assert s.scalar(select(CustomerAggregate.order_count).join(Customer).where(
            Customer.external_userid == KEEP)) == 2
    assert tier_statistics(db)[-1][0] == before[-1][0]  # the aggregates' count: none added


def test_a_repeat_of_an_edit_handled_before_the_forget_leaves_the_contact_forgotten(scrm, wired, sandbox, tmp_path,
                                                                                   caplog):
    """Two edits in one second are byte-identical callbacks, so a repeat re-runs the stored one; after a
    forget its stored text names the anonymous key, and the handler must still see the id WeCom sent."""
    db = wired.extensions["scrm.db"]
    control(sandbox, "seed", {"staff": [{"userid": "zhangsan", "name": "张三"}]})
    control(sandbox, "contacts/add", {"userid": "zhangsan", "name": NAME, "external_userid": FORGET})
    edit = control(sandbox, "contacts/edit", {"userid": "zhangsan", "external_userid": FORGET, "remark": MOBILE})
    assert drain(wired) == {"handled": 2}
    scrm("customer", "forget", FORGET, "--yes")
    fetches = len(read(sandbox, "calls", path="externalcontact/get"))

    with caplog.at_level(logging.INFO):
        control(sandbox, f"deliveries/{edit['delivery']['id']}/redeliver", {})
        assert drain(wired) == {"handled": 1}
    assert "event about a forgotten customer ignored" in caplog.text
    assert len(read(sandbox, "calls", path="externalcontact/get")) == fetches
    assert personal(every_row(db)) == []


@pytest.mark.parametrize("change, wecom", [("contacts/edit", "answers"), ("contacts/add", "answers"),
                                           ("contacts/edit", "times out"), ("contacts/add", "times out")])
def test_a_handler_in_flight_when_the_customer_is_forgotten_brings_nothing_back(scrm, wired, sandbox, tmp_path,
                                                                               monkeypatch, change, wecom):
    """The forget runs while a handler of the contact's event waits on externalcontact/get (the event is
    claimed, `processing`): the handler's writes after it (the name, the remark) must not bring them back,
    neither for a member's edit nor for an add that was in flight (an add after the forget is a new record).
    When WeCom does not answer, the add still welcomes from the event alone before its retry: not a customer
    forgotten meanwhile (no record under their id again, no welcome)."""
    import handlers.contacts

    db = wired.extensions["scrm.db"]
    control(sandbox, "seed", {"staff": [{"userid": "zhangsan", "name": "张三"}, {"userid": "lisi", "name": "李四"}]})
    control(sandbox, "contacts/add", {"userid": "zhangsan", "name": NAME, "external_userid": FORGET})
    assert drain(wired) == {"handled": 1}
    fetch = handlers.contacts._fetch_contact
    forgotten: list[str] = []

    def forget_meanwhile(ctx: Any, external_userid: str) -> dict[str, Any]:
        if not forgotten:
            forgotten.append(scrm("customer", "forget", FORGET, "--yes"))
        if wecom == "times out":
            raise OSError("timed out")
        return fetch(ctx, external_userid)

    monkeypatch.setattr(handlers.contacts, "_fetch_contact", forget_meanwhile)
    if change == "contacts/edit":
        control(sandbox, change, {"userid": "zhangsan", "external_userid": FORGET, "remark": f"{NAME} {MOBILE}"})
    else:  # the customer adds a second member; the add is being handled when the forget comes
        control(sandbox, change, {"userid": "lisi", "name": NAME, "external_userid": FORGET})
    welcomes = len(read(sandbox, "sent")["welcomes"])
    assert drain(wired) == {"dead": 1}  # as the forget left it, not handled
    assert "forgot customer" in forgotten[0]
    assert len(read(sandbox, "sent")["welcomes"]) == welcomes

    assert personal(every_row(db)) == []
    with db.sessions() as s:
        customers = s.scalars(select(Customer)).all()
        assert [(c.name, c.external_userid.startswith("forgotten:")) for c in customers] == [("", True)]
        assert [f.remark for f in s.scalars(select(Follow))] == [""]


def test_an_add_the_forget_marked_dead_does_nothing_when_an_operator_retries_it(scrm, wired, sandbox, tmp_path):
    """The add failed (WeCom did not answer; its welcome went out from the event alone) and waited for its
    retry when the forget marked it dead and rewrote its id to the key. `scrm inbox retry` of it (the
    console's retry button) is no new relationship: the key is not sent to WeCom, and the anonymous record
    gets no follow, no 'added' history and no welcome."""
    db = wired.extensions["scrm.db"]
    control(sandbox, "seed", {"staff": [{"userid": "zhangsan", "name": "张三"}, {"userid": "lisi", "name": "李四"}]})
    control(sandbox, "contacts/add", {"userid": "zhangsan", "name": NAME, "external_userid": FORGET})
    assert drain(wired) == {"handled": 1}
    control(sandbox, "faults", {"path": "externalcontact/get", "errcode": 60011, "count": 1})
    control(sandbox, "contacts/add", {"userid": "lisi", "name": NAME, "external_userid": FORGET})
    assert drain(wired) == {"failed": 1}
    scrm("customer", "forget", FORGET, "--yes")
    with db.sessions() as s:
        [dead] = s.scalars(select(InboxEvent).where(InboxEvent.status == "dead")).all()
        assert dead.last_error == "customer forgotten (scrm customer forget)"
    fetches, welcomes = len(read(sandbox, "calls", path="externalcontact/get")), len(read(sandbox, "sent")["welcomes"])

    assert f"inbox event {dead.id}: handled" in scrm("inbox", "retry", str(dead.id))
    assert len(read(sandbox, "calls", path="externalcontact/get")) == fetches
    assert len(read(sandbox, "sent")["welcomes"]) == welcomes
    assert personal(every_row(db)) == []
    with db.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Follow)) == 1  # zhangsan's, from before the forget
        assert s.scalars(select(Interaction.kind)).all() == ["added"]


def test_forget_asks_first_and_says_what_it_cannot_find(scrm, wired, sandbox, tmp_path):
    db = wired.extensions["scrm.db"]
    customer_with_history(scrm, wired, sandbox, tmp_path)
    out = scrm("customer", "forget", FORGET, input="n\n", ok=False)
    assert "Erase the personal data of customer" in out and "Aborted" in out
    assert personal(every_row(db)) == [NAME, MOBILE, FORGET]
    assert "no customer wmNOBODY" in scrm("customer", "forget", "wmNOBODY", "--yes", ok=False)
    out = scrm("customer", "forget", FORGET, "--vacuum", input="y\n")
    assert "forgot customer" in out
    assert ("VACUUM FULL customers" if PG_URL else "rebuilt the file and emptied the write-ahead log") in out
    assert personal(every_row(db)) == []


@pytest.mark.skipif(bool(PG_URL), reason="SQLite's file bytes")
def test_forget_leaves_no_bytes_in_the_file_without_a_vacuum(scrm, wired, sandbox, tmp_path):
    """secure_delete for the erasing write, then an emptied write-ahead log: the old values are gone from
    the file even before any VACUUM (the service's other connections closed, as after a restart)."""
    db = wired.extensions["scrm.db"]
    customer_with_history(scrm, wired, sandbox, tmp_path)
    path = sqlite_file(db.url)
    assert path is not None
    db.dispose()

    def in_files() -> list[str]:
        raw = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
        return [p for p in (NAME, MOBILE, FORGET) if p.encode("utf-8") in raw]

    assert in_files() == [NAME, MOBILE, FORGET]
    out = scrm("customer", "forget", FORGET, "--yes")
    assert "emptied the write-ahead log" in out
    assert in_files() == []


def test_the_new_commands_log_nothing_personal(scrm, wired, sandbox, tmp_path):
    """forget, then the sync, import and member edit it makes skip the contact, and a backup and restore, all
    at DEBUG with SQL echo on: the log names nobody (the same check as tests/test_private_logs.py)."""
    customer_with_history(scrm, wired, sandbox, tmp_path)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root, level = logging.getLogger(), logging.getLogger().level
    root.addHandler(handler)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("SCRM_APP_LOG_LEVEL", "DEBUG")
            patch.setenv("SCRM_DATABASE_ECHO", "true")
            scrm("-v", "customer", "forget", FORGET, "--yes")
            scrm("-v", "sync", "contacts", "--no-progress")
            scrm("-v", "import-orders", str(orders_csv(tmp_path / "again.csv", [
                ("o1", FORGET, "800.00", "2026-11-01T10:00:00+08:00")])), "--no-progress", ok=False)
            if not PG_URL:
                scrm("-v", "backup", str(tmp_path / "copy.db"), "--no-progress")
            control(sandbox, "contacts/edit", {"userid": "zhangsan", "external_userid": FORGET, "remark": MOBILE})
            assert drain(wired) == {"handled": 1}
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    log = stream.getvalue()
    assert "forgotten customer ignored" in log and "SELECT" in log  # the log was on, and verbose
    assert [p for p in (NAME, MOBILE, MOBILE[-8:], FORGET) if p in log] == []


def test_a_customer_who_comes_back_starts_a_new_record_that_can_be_forgotten_again(scrm, wired, sandbox, tmp_path):
    db = wired.extensions["scrm.db"]
    customer_with_history(scrm, wired, sandbox, tmp_path)
    scrm("customer", "forget", FORGET, "--yes")
    with db.sessions() as s:
        anonymous = s.scalar(select(Customer.id).where(Customer.external_userid.like("forgotten:%")))
        orders_before = s.scalar(select(CustomerAggregate.order_count).where(
            CustomerAggregate.customer_id == anonymous))

    control(sandbox, "contacts/add", {"userid": "zhangsan", "name": NAME, "external_userid": FORGET})
    assert drain(wired) == {"handled": 1}  # they added a member again: a new relationship
    out = scrm("import-orders", str(orders_csv(tmp_path / "again.csv", [
        ("o1", FORGET, "800.00", "2026-11-01T10:00:00+08:00"), ("o2", FORGET, "600.00", "2026-11-20T10:00:00+08:00"),
        ("o7", FORGET, "50.00", "2026-11-28T10:00:00+08:00")])), "--no-progress")
    assert out.count("the order belongs to a forgotten customer") == 2  # the old record keeps its history
    with db.sessions() as s:
        returned = s.scalar(select(Customer).where(Customer.external_userid == FORGET))
        assert returned.name == NAME and returned.id != anonymous
        assert s.scalar(select(CustomerAggregate.order_count).where(
            CustomerAggregate.customer_id == anonymous)) == orders_before
        assert s.scalar(select(CustomerAggregate.order_count).where(
            CustomerAggregate.customer_id == returned.id)) == 1
        returned_id = returned.id

    out = scrm("customer", "forget", FORGET, "--yes")  # and asks again
    assert f"forgot customer {returned_id}" in out
    assert personal(every_row(db)) == []
    assert "forgotten skipped 1" in scrm("sync", "contacts", "--no-progress")
    with db.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Customer).where(
            Customer.external_userid.like("forgotten:%"))) == 2
