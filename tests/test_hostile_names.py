"""Hostile values that arrive as data, never as code: a customer who calls themself ``{{ config }}``
is shown and sent exactly that text in every message template, console page, CSV export and the
staff sidebar's card; and 20 tills redeeming one coupon code at once get exactly one success."""

from __future__ import annotations

import csv
import io
import threading
from datetime import timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from bot.campaigns.coupons import CouponBook, issue
from bot.cli import main
from bot.models import Coupon, Customer, Interaction, Order
from bot.outbox.messages import MessageTemplates, customer_vars
from tests.campaign_data import MORNING, seed_audience
from tests.console_support import seed_console, signed_in

HOSTILE_NAMES = [
    "{{ config }}",
    "{{ config.items() }}",
    "{% for x in ().__class__.__base__.__subclasses__() %}{{ x }}{% endfor %}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "<script>alert(1)</script>",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_every_message_template_says_a_hostile_name_literally(app, name):
    templates = MessageTemplates.from_settings(app.extensions["scrm.settings"])
    customer = Customer(external_userid="wm_hostile", name=name)
    text = templates.render("welcome", "default", customer=customer_vars(customer), brand="品牌",
                            staff={"name": "小王"}).text
    assert text.startswith(name + "您好")
    assert "SECRET" not in text.upper() and "<class" not in text


@pytest.fixture
def hostile_console(app, db):
    app.extensions["scrm.clock"] = lambda: MORNING - timedelta(days=1)
    ids = seed_console(db)
    with db.begin() as s:
        s.get(Customer, ids[0]).name = "{{ config }}"
        s.get(Customer, ids[1]).name = "<script>alert(1)</script>"
    return app, ids


def test_console_pages_and_exports_show_hostile_names_as_text(hostile_console):
    app, ids = hostile_console
    client = signed_in(app, "vera", "viewer")
    secret = app.config["SECRET_KEY"]
    for path in (f"/console/customers/{ids[0]}", "/console/customers?q=config", "/console/customers"):
        page = client.get(path).get_data(as_text=True)
        assert "{{ config }}" in page, path
        assert "<Config" not in page and str(secret) not in page
        assert "<script>alert(1)</script>" not in page  # escaped, never markup
    page = client.get(f"/console/customers/{ids[1]}").get_data(as_text=True)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    exported = client.get("/console/customers.csv").get_data(as_text=True)
    names = {row["name"] for row in csv.DictReader(io.StringIO(exported.lstrip("\ufeff")))}
    assert "{{ config }}" in names


def test_the_export_command_writes_a_hostile_name_literally(app, db, cli_env, tmp_path):
    ids = seed_audience(db, {"high": 1})
    with db.begin() as s:
        s.get(Customer, ids[0]).name = "{{ config }}"
    out = tmp_path / "customers.csv"
    result = CliRunner(env={"SCRM_CONFIG": None, **cli_env}).invoke(main, ["export", "customers", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "{{ config }}" in out.read_text(encoding="utf-8-sig")


# ---------------------------------------------------------------- one coupon, twenty tills


def test_twenty_concurrent_redemptions_of_one_coupon_succeed_once(app, db, cli_env):
    token = CliRunner(env={"SCRM_CONFIG": None, **cli_env}).invoke(main, ["token", "create", "tills"])
    assert token.exit_code == 0, token.output
    auth = {"Authorization": f"Bearer {token.stdout.strip().splitlines()[0]}"}
    book = CouponBook.from_settings(app.extensions["scrm.settings"])
    ids = seed_audience(db, {"low": 1})
    with db.begin() as s:
        code = issue(s, book, book.get("WINBACK"), ids, "race", MORNING)[ids[0]].code
        for n in range(20):
            s.add(Order(order_id=f"till-{n}", customer_id=ids[0], amount_fen=20000, paid_at=MORNING,
                        paid_day=MORNING.date().toordinal()))
    app.extensions["scrm.clock"] = lambda: MORNING + timedelta(hours=1)

    start = threading.Barrier(20)
    answers: list[int] = []
    lock = threading.Lock()

    def till(n: int) -> None:
        client = app.test_client()
        start.wait()
        status = client.post("/api/v1/coupons/redeem", json={"code": code, "order_id": f"till-{n}"},
                             headers=auth).status_code
        with lock:
            answers.append(status)

    threads = [threading.Thread(target=till, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(answers) == [200] + [409] * 19, answers
    with db.sessions() as s:
        coupon = s.scalar(select(Coupon).where(Coupon.code == code))
        assert coupon.status == "redeemed" and coupon.order_id.startswith("till-")
        redemptions = s.scalars(select(Interaction.kind).where(Interaction.customer_id == ids[0],
                                                               Interaction.kind == "coupon_redeem")).all()
        assert len(redemptions) == 1
