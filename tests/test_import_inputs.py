"""What Chinese users actually import: GBK/GB18030 files from Excel, BOMs, negative amounts, rows that
leave out the status, local times without an offset; and how the import commands report and exit."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from bot.cli import main
from bot.models import Customer, Order
from segments import imports
from segments.bulk_orders import MERGE_STEPS
from segments.imports import ImportFailed, import_customers, import_orders, resolve_encoding
from tests.test_orders_in import HEADER, aggregate, order_count
from tests.test_tiering_engine import TZ

GBK_ROWS = "o1,wm王五,12.50,2026-11-01T10:00:00+08:00,paid\no2,wm王五,7,2026-11-02T10:00:00+08:00,paid\n"


def write_bytes(tmp_path: Path, data: bytes, name: str = "orders.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def run_import(db: Any, path: Path, encoding: str = "auto"):
    with db.begin() as session:
        return import_orders(session, path, TZ, encoding=encoding)


def scrm(cli_env: dict[str, str], *args: str):
    return CliRunner(env={"SCRM_CONFIG": None, **cli_env}).invoke(main, list(args), catch_exceptions=False)


def test_a_gbk_file_from_excel_is_detected_and_imported(db, tmp_path):
    summary = run_import(db, write_bytes(tmp_path, (HEADER + GBK_ROWS).encode("gbk")))
    assert (summary.encoding, summary.inserted, summary.skipped) == ("gb18030", 2, 0)
    assert aggregate(db, "wm王五").paid_amount_fen == 1950


@pytest.mark.parametrize("data", [(HEADER + GBK_ROWS).encode("utf-8"), (HEADER + GBK_ROWS).encode("utf-8-sig")])
def test_valid_utf8_with_or_without_bom_is_utf8(db, tmp_path, data):
    summary = run_import(db, write_bytes(tmp_path, data))
    assert (summary.encoding, summary.inserted) == ("utf-8", 2)
    assert aggregate(db, "wm王五").order_count == 2


def test_detection_reads_the_whole_file_in_blocks(tmp_path, monkeypatch):
    """A character split between two blocks is still UTF-8; a GBK byte far down the file is found."""
    monkeypatch.setattr(imports, "SCAN_BLOCK", 7)
    utf8 = write_bytes(tmp_path, ("王" * 50 + "\n").encode("utf-8"))
    assert resolve_encoding(utf8) == "utf-8"
    late_gbk = write_bytes(tmp_path, b"a,b\n" * 100 + "王".encode("gbk") + b"\n", "late.csv")
    assert resolve_encoding(late_gbk) == "gb18030"
    assert resolve_encoding(late_gbk, "utf-8") == "utf-8"  # told, not detected


def test_a_file_that_is_neither_is_refused_naming_the_line(db, tmp_path, monkeypatch):
    monkeypatch.setattr(imports, "SCAN_BLOCK", 5)  # the line is counted across blocks
    rows = "o1,wmA,1,2026-11-01T10:00:00+08:00,paid\n" * 3
    path = write_bytes(tmp_path, (HEADER + rows).encode() + b"o9,wm\xff\xff,1,2026-11-01T10:00:00+08:00,paid\n")
    with pytest.raises(ImportFailed, match=r"not UTF-8 or GB18030 text \(line 5 is neither"):
        run_import(db, path)
    assert order_count(db) == 0


def test_a_gbk_file_read_as_utf8_on_request_names_the_line(db, tmp_path):
    path = write_bytes(tmp_path, (HEADER + GBK_ROWS).encode("gbk"))
    with pytest.raises(ImportFailed, match=r"not UTF-8 text \(line 2; --encoding gb18030"):
        run_import(db, path, encoding="utf-8")
    assert run_import(db, path, encoding="gb18030").inserted == 2


def test_negative_amounts_are_called_negative(db, tmp_path):
    path = write_bytes(tmp_path, (HEADER + "o1,wmA,-50.00,2026-11-01T10:00:00+08:00,paid\n").encode())
    assert dict(run_import(db, path).errors) == {2: "amount must not be negative, got '-50.00'"}


def test_minus_zero_is_zero_not_negative(db, tmp_path):
    path = write_bytes(tmp_path, (HEADER + "o1,wmA,-0,2026-11-01T10:00:00+08:00,paid\n"
                                  "o2,wmA,-0.00,2026-11-01T11:00:00+08:00,paid\n").encode())
    summary = run_import(db, path)
    assert summary.errors == [] and summary.inserted == 2


def test_a_utf16_file_is_refused_with_what_to_save_instead(db, tmp_path):
    path = write_bytes(tmp_path, (HEADER + "o1,wmA,1,2026-11-01T10:00:00+08:00,paid\n").encode("utf-16"))
    with pytest.raises(ImportFailed, match="UTF-16 text .*CSV UTF-8"):
        run_import(db, path)


def test_customer_rows_with_a_name_too_long_or_a_year_past_the_calendar_are_refused_whole(db, tmp_path):
    path = write_bytes(tmp_path, ("external_userid,name,follow_userid,added_at\n"
                                  f"wmLONG,{'长' * 256},zhangsan,2026-11-01T10:00:00+08:00\n"
                                  "wmOLD,老客户,zhangsan,0001-01-01T00:00:00+08:00\n"
                                  "wmOK,好客户,zhangsan,2026-11-01T10:00:00+08:00\n").encode(), "customers.csv")
    with db.begin() as session:
        summary = import_customers(session, path, TZ)
    assert dict(summary.errors) == {2: "name is longer than 255 characters (256)",
                                    3: "added_at is out of range (years 1970–2999), got 1"}
    with db.sessions() as session:
        assert session.scalars(select(Customer.external_userid)).all() == ["wmOK"]


def test_status_may_be_empty_or_left_out_when_the_header_has_it(db, tmp_path):
    path = write_bytes(tmp_path, (HEADER + "o1,wmA,1,2026-11-01T10:00:00+08:00,\n"
                                           "o2,wmA,2,2026-11-01T11:00:00+08:00\n"
                                           "o3,wmA,3,2026-11-01T12:00:00+08:00,refunded\n"
                                           "o4,wmA,4\n").encode())
    summary = run_import(db, path)
    assert (summary.inserted, dict(summary.errors)) == (3, {5: "expected 5 fields, found 3"})
    with db.sessions() as session:
        assert {r.order_id: r.status for r in session.execute(select(Order.order_id, Order.status))} == {
            "o1": "paid", "o2": "paid", "o3": "refunded"}


def test_times_without_an_offset_are_local_times_in_app_timezone(db, tmp_path):
    orders = write_bytes(tmp_path, (HEADER + "o1,wmA,1,2026-11-01T10:00:00,paid\n").encode())
    run_import(db, orders)
    customers = write_bytes(tmp_path, b"external_userid,name,follow_userid,added_at\n"
                                      b"wmB,B,staff01,2026-01-01 09:30:00\n", "customers.csv")
    with db.begin() as session:
        assert import_customers(session, customers, TZ).inserted == 1
    with db.sessions() as session:
        paid_at = session.scalar(select(Order.paid_at))
        created_at = session.scalar(select(Customer.created_at).where(Customer.external_userid == "wmB"))
    assert paid_at == datetime(2026, 11, 1, 2, 0, tzinfo=UTC)  # 10:00 in Asia/Shanghai
    assert created_at == datetime(2026, 1, 1, 1, 30, tzinfo=UTC)


def test_merge_reports_each_step(db, tmp_path):
    steps: list[str] = []
    path = write_bytes(tmp_path, (HEADER + "o1,wmA,1,2026-11-01T10:00:00+08:00,paid\n").encode())
    with db.begin() as session:
        import_orders(session, path, TZ, phase=steps.append)
    assert steps == list(MERGE_STEPS)


def test_cli_names_the_encoding_and_shows_every_stage(cli_env, tmp_path):
    path = write_bytes(tmp_path, (HEADER + GBK_ROWS).encode("gbk"))
    result = CliRunner(env={"SCRM_CONFIG": None, **cli_env}).invoke(main, ["import-orders", str(path)])
    assert result.exit_code == 0, result.output
    assert "read 2, inserted 2" in result.stdout and "file read as GB18030 (it is not valid UTF-8)" in result.stdout
    for stage in ("orders: reading", f"orders: {MERGE_STEPS[-1]}", "orders: auto-tagging"):
        assert stage in result.stderr  # the bars: on stderr, apart from the report
    again = scrm(cli_env, "import-orders", str(path), "--encoding", "utf-8", "--no-progress")
    assert again.exit_code == 1 and "line 2" in again.output


def test_cli_exits_non_zero_when_every_row_is_skipped(cli_env, tmp_path):
    bad = write_bytes(tmp_path, (HEADER + "o1,wmA,-1,2026-11-01T10:00:00+08:00,paid\n").encode())
    result = scrm(cli_env, "import-orders", str(bad), "--no-progress")
    assert result.exit_code == 1
    assert "line 2: amount must not be negative" in result.stdout
    assert "all 1 rows were skipped" in result.stderr
    only_header = write_bytes(tmp_path, HEADER.encode(), "empty.csv")
    assert scrm(cli_env, "import-orders", str(only_header), "--no-progress").exit_code == 0
    customers = write_bytes(tmp_path, b"external_userid,name,follow_userid,added_at\nwmA,A,,x\n", "c.csv")
    assert scrm(cli_env, "import-customers", str(customers), "--no-progress").exit_code == 1


def test_amounts_in_other_scripts_digits_are_refused_not_read_as_128(db, tmp_path):
    """Arabic-Indic or full-width digits are digits to Python's \\d and Decimal: "١٢٨" would be 128 元 unseen."""
    path = write_bytes(tmp_path, (HEADER + "o1,wmA,١٢٨,2026-11-01T10:00:00+08:00,paid\n"
                                  "o2,wmA,１２８.５,2026-11-01T11:00:00+08:00,paid\n").encode())
    errors = dict(run_import(db, path).errors)
    assert errors == {2: "amount must be written with the digits 0-9, got '١٢٨'",
                      3: "amount must be written with the digits 0-9, got '１２８.５'"}
    assert order_count(db) == 0
    spaced = write_bytes(tmp_path, (HEADER + "o3,wmA,128\u3000,2026-11-01T10:00:00+08:00,paid\n"
                                    "o4,wmA,\xa0128.50,2026-11-01T11:00:00+08:00,paid\n").encode())
    assert not run_import(db, spaced).errors and order_count(db) == 2  # an input method's or Excel's spaces
