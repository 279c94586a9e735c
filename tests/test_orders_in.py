"""Orders and customers in: CSV import, the orders API with bearer tokens, exact money, aggregates."""

from __future__ import annotations

import csv
import io
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from bot.cli import main
from bot.models import Customer, CustomerAggregate, Follow, Order
from segments import imports
from segments.imports import ImportFailed, import_orders
from tests.support import TZ

HEADER = "order_id,external_userid,amount,paid_at,status\n"


def write(tmp_path: Path, body: str, name: str = "orders.csv", header: str = HEADER) -> Path:
    path = tmp_path / name
    path.write_text(header + body, encoding="utf-8")
    return path


def run_import(db: Any, path: Path):
    with db.begin() as session:
        return import_orders(session, path, TZ)


def aggregate(db: Any, external_userid: str) -> CustomerAggregate:
    with db.sessions() as session:
        return session.scalar(select(CustomerAggregate).join(Customer, Customer.id == CustomerAggregate.customer_id)
                              .where(Customer.external_userid == external_userid))


def order_count(db: Any) -> int:
    with db.sessions() as session:
        return session.scalar(select(func.count()).select_from(Order)) or 0


def test_good_rows_land_bad_rows_are_reported_by_line(db, tmp_path):
    path = write(tmp_path, "\n".join([
        "o1,wmA,0.10,2026-11-01T10:00:00+08:00,paid",
        "o2,wmA,0.20,2026-11-02T10:00:00+08:00,",
        ",wmA,1,2026-11-02T10:00:00+08:00,paid",
        "o4,wmA,12.345,2026-11-02T10:00:00+08:00,paid",
        "o5,wmA,-3,2026-11-02T10:00:00+08:00,paid",
        "o6,wmA,3,2026-11-02T10:00:00,paid",
        "o7,wmA,3,2026-11-02T10:00:00+08:00,cancelled",
        "o8,wmA,3",
        "o9,wm B,3,2026-11-02T10:00:00+08:00,paid",
        "o10,wmB,3,not-a-date,paid",
        "o11,wmB,1e3,2026-11-02T10:00:00+08:00,paid",
        '"o12",wmB,"1,000.00",2026-11-02T10:00:00+08:00,paid',
    ]) + "\n")
    summary = run_import(db, path)
    assert (summary.read, summary.inserted, summary.skipped) == (12, 3, 9)
    reasons = dict(summary.errors)
    assert "order_id is empty" in reasons[4]
    assert "at most 2 decimals" in reasons[5]
    assert "must not be negative" in reasons[6]
    assert "paid or refunded" in reasons[8]
    assert "expected 5 fields, found 3" in reasons[9]
    assert "external_userid" in reasons[10]
    assert "ISO 8601" in reasons[11]
    assert set(reasons) == {4, 5, 6, 8, 9, 10, 11, 12, 13}  # line 7: no offset, a local time (app.timezone)
    assert aggregate(db, "wmA").paid_amount_fen == 330  # 0.10 + 0.20 + 3 exactly


def test_reimport_is_idempotent_and_changes_update_aggregates(db, tmp_path):
    first = write(tmp_path, "o1,wmA,100.00,2026-11-01T10:00:00+08:00,paid\n"
                            "o2,wmA,50.50,2026-11-03T10:00:00+08:00,paid\n")
    run_import(db, first)
    again = run_import(db, first)
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 2)
    agg = aggregate(db, "wmA")
    assert (agg.order_count, agg.paid_amount_fen, agg.last_order_day) == (2, 15050, date(2026, 11, 3).toordinal())
    refund = write(tmp_path, "o2,wmA,50.50,2026-11-03T10:00:00+08:00,refunded\n", "refund.csv")
    summary = run_import(db, refund)
    assert summary.updated == 1
    agg = aggregate(db, "wmA")
    assert (agg.order_count, agg.paid_amount_fen, agg.refund_count, agg.refunded_amount_fen) == (1, 10000, 1, 5050)
    assert agg.last_order_day == date(2026, 11, 1).toordinal()  # a refunded order is no longer the last purchase


def test_order_moved_to_another_customer_fixes_both_aggregates(db, tmp_path):
    run_import(db, write(tmp_path, "o1,wmA,10,2026-11-01T10:00:00+08:00,paid\n"))
    run_import(db, write(tmp_path, "o1,wmB,10,2026-11-01T10:00:00+08:00,paid\n", "moved.csv"))
    assert aggregate(db, "wmA") is None or aggregate(db, "wmA").order_count == 0
    assert aggregate(db, "wmB").order_count == 1


def test_repeat_within_a_file_keeps_the_last_row(db, tmp_path):
    summary = run_import(db, write(tmp_path, "o1,wmA,10,2026-11-01T10:00:00+08:00,paid\n"
                                             "o1,wmA,20,2026-11-01T10:00:00+08:00,paid\n"))
    assert (summary.inserted, summary.updated) == (1, 1)
    assert aggregate(db, "wmA").paid_amount_fen == 2000


def test_unknown_customers_get_stubs(db, tmp_path):
    summary = run_import(db, write(tmp_path, "o1,wmNew,10,2026-11-01T10:00:00+08:00,paid\n"))
    assert summary.customers_created == 1
    with db.sessions() as session:
        assert session.scalar(select(Customer.name).where(Customer.external_userid == "wmNew")) == ""


LATIN1 = (HEADER + "o1,wmA,1,2026-11-01T10:00:00+08:00,paid\no2,wm\xe9,1,2026-11-01T10:00:00+08:00,paid\n")


@pytest.mark.parametrize("content,message", [
    (None, "cannot open"),
    (LATIN1.encode("latin-1"), "not UTF-8"),
    (HEADER.encode() + b"o1,wmA,1\x00,x,y\n", "binary file"),
    (b"id,who,amount\n1,2,3\n", "no column(s) order_id"),
    (b"", "is empty"),
])
def test_unreadable_files_fail_whole_and_change_nothing(db, tmp_path, content, message):
    path = tmp_path / "input.csv"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImportFailed, match=message.replace("(", r"\(").replace(")", r"\)")):
        run_import(db, path)
    assert order_count(db) == 0


def test_a_file_that_turns_unreadable_late_changes_nothing(db, tmp_path, monkeypatch):
    """Blocks of good rows already staged (PostgreSQL: as they are, by a COPY left open) are thrown away."""
    monkeypatch.setattr(imports.PlainBlocks, "SIZE", 100)
    path = tmp_path / "input.csv"
    good = "".join(f"o{i},wmA,1,2026-11-01T10:00:00+08:00,paid\n" for i in range(40))
    path.write_bytes((HEADER + good).encode() + "o99,wm\xe9,1,2026-11-01T10:00:00+08:00,paid\n".encode("latin-1"))
    with pytest.raises(ImportFailed, match="not UTF-8"):
        run_import(db, path)
    assert order_count(db) == 0
    path.write_bytes((HEADER + good).encode())
    assert run_import(db, path).inserted == 40  # the session that failed left nothing behind


def scrm(config_env: dict[str, str], *args: str):
    return CliRunner(env={"SCRM_CONFIG": None, **config_env}).invoke(main, list(args), catch_exceptions=False)


def test_cli_import_prints_summary_and_writes_error_file(cli_env, tmp_path):
    path = write(tmp_path, "o1,wmA,10,2026-11-01T10:00:00+08:00,paid\no2,wmA,ten,2026-11-01T10:00:00+08:00,paid\n")
    errors = tmp_path / "errors.csv"
    result = scrm(cli_env, "import-orders", str(path), "--no-progress", "--errors-out", str(errors))
    assert result.exit_code == 0
    assert "read 2, inserted 1, updated 0, unchanged 0, skipped 1" in result.output
    assert "line 3: amount" in result.output
    header, first = list(csv.reader(io.StringIO(errors.read_text(encoding="utf-8"), newline="")))[:2]
    assert header == ["line", "reason"]
    assert first[0] == "3" and first[1].startswith("amount") and len(first) == 2  # the reason's comma is quoted
    failed = scrm(cli_env, "import-orders", str(tmp_path / "nope.csv"), "--no-progress")
    assert failed.exit_code == 1 and "cannot open" in failed.output


def test_cli_import_customers_creates_staff_and_follows(cli_env, db, tmp_path):
    path = tmp_path / "customers.csv"
    path.write_text("external_userid,name,follow_userid,added_at,birthday\n"
                    "wmA,张三,staff01,2026-01-01T10:00:00+08:00,1990-05-04\n"
                    "wmB,李四,staff01,2026-02-01T10:00:00+08:00,\n"
                    "wmC,王五,,2026-02-01T10:00:00+08:00,\n", encoding="utf-8")
    result = scrm(cli_env, "import-customers", str(path), "--no-progress")
    assert "read 3, inserted 2" in result.output and "line 4: follow_userid" in result.output
    with db.sessions() as session:
        a = session.scalar(select(Customer).where(Customer.external_userid == "wmA"))
        assert (a.name, a.owner_userid, str(a.birthday)) == ("张三", "staff01", "1990-05-04")
        assert session.scalar(select(func.count()).select_from(Follow)) == 2


@pytest.fixture
def token(cli_env) -> str:
    result = CliRunner(env={"SCRM_CONFIG": None, **cli_env}).invoke(main, ["token", "create", "shop"])
    assert result.exit_code == 0
    return result.stdout.strip().splitlines()[0]


def test_api_orders_with_token(client, token, db):
    orders = [
        {"order_id": "a1", "external_userid": "wmA", "amount": 12.3, "paid_at": "2026-11-01T10:00:00+08:00"},
        {"order_id": "a2", "external_userid": "wmA", "amount": "0.07", "paid_at": "2026-11-01T11:00:00+08:00",
         "status": "refunded"},
        {"order_id": "a3", "external_userid": "wmA", "amount": True, "paid_at": "2026-11-01T11:00:00+08:00"},
        "not an object",
        {"order_id": "a1", "external_userid": "wmA", "amount": "12.30", "paid_at": "2026-11-01T10:00:00+08:00"},
    ]
    response = client.post("/api/v1/orders", json=orders, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    results = [(r["index"], r["result"]) for r in response.json["results"]]
    assert results == [(0, "inserted"), (1, "inserted"), (2, "error"), (3, "error"), (4, "unchanged")]
    assert "amount" in response.json["results"][2]["error"]
    agg = aggregate(db, "wmA")
    assert (agg.paid_amount_fen, agg.refunded_amount_fen) == (1230, 7)


def test_api_orders_refuse_amounts_in_other_scripts_digits(client, token, db):
    orders = [{"order_id": f"d{n}", "external_userid": "wmA", "amount": amount, "paid_at": "2026-11-01T10:00:00+08:00"}
              for n, amount in enumerate(["١٢٨", "１２８", "128"])]
    response = client.post("/api/v1/orders", json=orders, headers={"Authorization": f"Bearer {token}"})
    results = response.json["results"]
    assert [r["result"] for r in results] == ["error", "error", "inserted"]
    assert "digits 0-9" in results[0]["error"] and "digits 0-9" in results[1]["error"]
    assert aggregate(db, "wmA").paid_amount_fen == 12800


@pytest.mark.parametrize("headers,status", [({}, 401), ({"Authorization": "Bearer scrm_wrong"}, 401),
                                            ({"Authorization": "Basic abc"}, 401)])
def test_api_refuses_without_a_valid_token(client, headers, status, db):
    response = client.post("/api/v1/orders", json=[], headers=headers)
    assert response.status_code == status and "token" in response.json["error"]


def test_every_api_response_is_neither_cached_nor_sniffed(client, token):
    auth = {"Authorization": f"Bearer {token}"}
    responses = [client.post("/api/v1/orders", json=[], headers=auth), client.get("/api/v1/customers"),
                 client.get("/api/v1/customers/wm1", headers=auth), client.get("/api/v1/nothing-here"),
                 client.delete("/api/v1/orders", headers=auth)]
    assert [r.status_code for r in responses] == [200, 401, 403, 404, 405]
    for response in responses:
        assert response.headers["Cache-Control"] == "no-store", response.request.path
        assert response.headers["X-Content-Type-Options"] == "nosniff", response.request.path
    assert "no-store" not in client.get("/healthz").headers.get("Cache-Control", "")


def test_api_refuses_revoked_tokens_and_bad_bodies(client, token, cli_env):
    auth = {"Authorization": f"Bearer {token}"}
    assert client.post("/api/v1/orders", data="[", headers=auth, content_type="application/json").status_code == 400
    assert client.post("/api/v1/orders", json={"x": 1}, headers=auth).status_code == 400
    assert client.post("/api/v1/orders", json=[{}] * 10_001, headers=auth).status_code == 413
    scrm(cli_env, "token", "revoke", "shop")
    assert client.post("/api/v1/orders", json=[], headers=auth).status_code == 401


def test_tokens_are_stored_as_digests(cli_env, token, db):
    from bot.models import ApiToken

    with db.sessions() as session:
        stored = session.scalar(select(ApiToken))
    assert token not in (stored.token_sha256, stored.name) and len(stored.token_sha256) == 64
    listing = scrm(cli_env, "token", "list")
    assert "shop" in listing.output and token not in listing.output


def test_unusual_but_valid_ids_round_trip(db, tmp_path):
    """Backslashes, quotes and non-ASCII survive every write path (COPY on PostgreSQL included)."""
    path = write(tmp_path, '"a\\\\b""c",wm客户\\x,1,2026-11-01T10:00:00+08:00,paid\n')
    assert run_import(db, path).inserted == 1
    with db.sessions() as session:
        assert session.scalar(select(Order.order_id)) == 'a\\\\b"c'
        assert session.scalar(select(Customer.external_userid)) == "wm客户\\x"


def test_customer_stubs_are_known_since_their_first_order(db, tmp_path):
    run_import(db, write(tmp_path, "o1,wmOld,1,2024-01-05T10:00:00+08:00,paid\n"
                                   "o2,wmOld,1,2023-12-31T10:00:00+08:00,paid\n"))
    with db.sessions() as session:
        created = session.scalar(select(Customer.created_at).where(Customer.external_userid == "wmOld"))
    assert created.isoformat() == "2023-12-31T02:00:00+00:00"


def test_api_customers_out_with_tiers_tags_and_why(client, token, cli_env, db):
    """DESIGN §3: the REST API is orders in, customers out — a shop or BI system reads tiers by token, one
    made to read customers: a till's token posts orders and redeems coupons only."""
    from segments.retier import retier
    from tests.support import POLICY, TZ

    till = {"Authorization": f"Bearer {token}"}
    refused = client.get("/api/v1/customers", headers=till)
    assert refused.status_code == 403 and "--read-customers" in refused.json["error"]
    reader = CliRunner(env={"SCRM_CONFIG": None, **cli_env}).invoke(main, ["token", "create", "bi", "--read-customers"])
    auth = {"Authorization": f"Bearer {reader.stdout.strip().splitlines()[0]}"}
    assert client.post("/api/v1/orders", json=[], headers=auth).status_code == 200  # it may post orders too
    assert "read customers" in scrm(cli_env, "token", "list").output
    orders = [{"order_id": f"c{i}", "external_userid": f"wm{i % 3}", "amount": 100 * (i + 1),
               "paid_at": f"2026-10-{i + 1:02d}T10:00:00+08:00"} for i in range(9)]
    assert client.post("/api/v1/orders", json=orders, headers=till).status_code == 200
    with db.begin() as session:
        retier(session, POLICY, date(2026, 11, 1), TZ)
    page = client.get("/api/v1/customers?limit=2", headers=auth)
    assert page.status_code == 200
    first = page.json["customers"]
    assert [c["external_userid"] for c in first] == ["wm0", "wm1"] and page.json["next_after"] == first[-1]["id"]
    assert first[0]["order_count"] == 3 and first[0]["total_amount"] == "1200.00" and first[0]["value_tier"]
    assert first[0]["opted_out"] is False and isinstance(first[0]["tags"], list)
    assert first[0]["last_order_at"] == "2026-10-07T10:00:00+08:00"  # app.timezone's, as in the CSV export
    rest = client.get(f"/api/v1/customers?limit=2&after={page.json['next_after']}", headers=auth).json
    assert [c["external_userid"] for c in rest["customers"]] == ["wm2"] and rest["next_after"] is None
    tier = first[0]["value_tier"]
    only = client.get(f"/api/v1/customers?value_tier={tier}", headers=auth).json["customers"]
    assert only and all(c["value_tier"] == tier for c in only)
    one = client.get("/api/v1/customers/wm2", headers=auth)
    assert one.status_code == 200 and one.json["customer"]["external_userid"] == "wm2"
    assert one.json["customer"]["last_order_at"] == "2026-10-09T10:00:00+08:00"
    assert set(one.json["customer"]["why"]) >= {"value_tier", "stage", "engagement"}
    assert client.get("/api/v1/customers/nobody", headers=auth).status_code == 404
    assert client.get("/api/v1/customers?tier=high", headers=auth).status_code == 400
    assert client.get("/api/v1/customers?limit=0", headers=auth).status_code == 400
    assert client.get("/api/v1/customers?limit=²", headers=auth).status_code == 400  # a digit, not an ASCII one
    assert client.get("/api/v1/customers?tier=high").status_code == 401  # the token first, then the rest
    assert client.get("/api/v1/customers/wm2").json["error"].startswith("missing bearer token")
