"""Coupons: unguessable codes, issue once per reason, redeem once (API and CLI), minimum spend,
expiry, and the interaction and tag a redemption leaves."""

from __future__ import annotations

from datetime import timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from bot.campaigns.coupons import ALPHABET, CouponBook, CouponDefinition, CouponError, expire_coupons, issue
from bot.cli import main
from bot.models import Coupon, Customer, Interaction, Order
from bot.tagging.system import live_tag_names
from tests.campaign_data import MORNING, seed_audience


def book_of(app) -> CouponBook:
    return CouponBook.from_settings(app.extensions["scrm.settings"])


@pytest.fixture
def token(cli_env) -> str:
    result = CliRunner(env={"SCRM_CONFIG": None, **cli_env}).invoke(main, ["token", "create", "till"])
    assert result.exit_code == 0, result.output
    return result.stdout.strip().splitlines()[0]


def test_codes_are_unique_and_unguessable(app):
    book = book_of(app)
    codes = {book.new_code() for _ in range(5000)}
    assert len(codes) == 5000 and all(len(c) == 12 and set(c) <= set(ALPHABET) for c in codes)
    assert not set("01OIL") & set(ALPHABET)  # no look-alikes


def test_definitions_are_validated():
    with pytest.raises(CouponError, match="either value"):
        CouponDefinition.parse({"code": "X", "value": 10, "percent_off": 10}, "coupons.definitions[0]")
    with pytest.raises(CouponError, match="unknown key"):
        CouponDefinition.parse({"code": "X", "value": 10, "amount": 3}, "coupons.definitions[0]")
    assert CouponDefinition.parse({"code": "X", "percent_off": 12}, "d").terms() == "88折"


def test_issue_is_once_per_reason(app, db):
    book = book_of(app)
    ids = seed_audience(db, {"high": 2})
    with db.begin() as s:
        first = issue(s, book, book.get("VIP"), ids, "broadcast_run:1", MORNING)
        again = issue(s, book, book.get("VIP"), ids, "broadcast_run:1", MORNING)
        other = issue(s, book, book.get("VIP"), ids[:1], "broadcast_run:2", MORNING)
        assert {c.code for c in first.values()} == {c.code for c in again.values()}
        assert other[ids[0]].code != first[ids[0]].code
        assert first[ids[0]].expires_at == MORNING + timedelta(days=30) and first[ids[0]].value_fen == 5000


def _issued(app, db, definition="WINBACK"):
    book = book_of(app)
    ids = seed_audience(db, {"low": 2})
    with db.begin() as s:
        coupons = issue(s, book, book.get(definition), ids, "test", MORNING)
        s.add(Order(order_id="o-big", customer_id=ids[0], amount_fen=20000, paid_at=MORNING,
                    paid_day=MORNING.date().toordinal()))
        s.add(Order(order_id="o-small", customer_id=ids[0], amount_fen=5000, paid_at=MORNING,
                    paid_day=MORNING.date().toordinal()))
        return ids, {cid: c.code for cid, c in coupons.items()}


def test_redeem_api_once_with_minimum_spend_and_owner_checks(app, client, db, token):
    ids, codes = _issued(app, db)
    app.extensions["scrm.clock"] = lambda: MORNING + timedelta(hours=1)
    auth = {"Authorization": f"Bearer {token}"}
    code = codes[ids[0]]
    spaced = f"{code[:4]}-{code[4:8]} {code[8:].lower()}"  # as a customer types it
    assert client.post("/api/v1/coupons/redeem", json={"code": code}).status_code == 401
    small = client.post("/api/v1/coupons/redeem", json={"code": code, "order_id": "o-small"}, headers=auth)
    assert small.status_code == 422 and "minimum spend 150" in small.json["error"]
    claimed = client.post("/api/v1/coupons/redeem", json={"code": code, "order_id": "o-small", "amount": 500},
                          headers=auth)  # a known order's own amount counts, not the one the caller gives
    assert claimed.status_code == 422 and "spend 50.00" in claimed.json["error"]
    with db.begin() as s:
        s.add(Order(order_id="o-refunded", customer_id=ids[0], amount_fen=50000, paid_at=MORNING,
                    paid_day=MORNING.date().toordinal(), status="refunded"))
    refunded = client.post("/api/v1/coupons/redeem", json={"code": code, "order_id": "o-refunded"}, headers=auth)
    assert refunded.status_code == 422 and "refunded, not paid" in refunded.json["error"]
    foreign = client.post("/api/v1/coupons/redeem", json={"code": codes[ids[1]], "order_id": "o-big"}, headers=auth)
    assert foreign.status_code == 422 and "another customer" in foreign.json["error"]
    ok = client.post("/api/v1/coupons/redeem", json={"code": spaced, "order_id": "o-big"}, headers=auth)
    assert ok.status_code == 200 and ok.json["coupon"]["status"] == "redeemed"
    twice = client.post("/api/v1/coupons/redeem", json={"code": code, "order_id": "o-big"}, headers=auth)
    assert twice.status_code == 409
    assert "already redeemed at 2026-11-24 11:00 Asia/Shanghai" in twice.json["error"]  # local, named: not "CST"
    assert client.post("/api/v1/coupons/redeem", json={"code": "NOPE"}, headers=auth).status_code == 404
    assert client.post("/api/v1/coupons/redeem", json={"code": 5}, headers=auth).status_code == 400
    assert client.post("/api/v1/coupons/redeem", json={"code": code, "amount": "1e999"},
                       headers=auth).status_code == 400
    with db.sessions() as s:
        coupon = s.scalar(select(Coupon).where(Coupon.code == code))
        assert coupon.order_id == "o-big" and coupon.redeemed_at is not None
        kinds = list(s.scalars(select(Interaction.kind).where(Interaction.customer_id == ids[0])))
        assert kinds == ["coupon_redeem"]  # activity, and the coupon_redeemed tag rule
        assert "交易/用过优惠券" in live_tag_names(s, ids[0])


def test_expired_coupons_are_refused(app, db, client, token):
    ids, codes = _issued(app, db)
    with db.begin() as s:
        assert expire_coupons(s, MORNING + timedelta(days=15)).expired == 2
    app.extensions["scrm.clock"] = lambda: MORNING + timedelta(days=15)
    answer = client.post("/api/v1/coupons/redeem", json={"code": codes[ids[0]], "amount": 500},
                         headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 409 and "expired" in answer.json["error"]


def _one_customer(cli_env, db, tier: str):
    """A CLI runner and the external_userid of the one customer, of value tier ``tier``."""
    seed_audience(db, {tier: 1})
    with db.sessions() as s:
        return CliRunner(env={"SCRM_CONFIG": None, **cli_env}), s.scalar(select(Customer.external_userid))


def test_cli_issue_and_redeem(cli_env, db):
    runner, external = _one_customer(cli_env, db, "high")
    issued = runner.invoke(main, ["coupons", "issue", "VIP", external])
    assert issued.exit_code == 0, issued.output
    code = issued.output.split()[0]
    assert len(code) == 14 and "专属优惠券" in issued.output
    first = runner.invoke(main, ["coupons", "redeem", code, "--amount", "300"])
    assert first.exit_code == 0 and "redeemed" in first.output
    second = runner.invoke(main, ["coupons", "redeem", code, "--amount", "300"])
    assert second.exit_code == 1 and "already redeemed" in second.output
    listed = runner.invoke(main, ["coupons", "list", "--customer", external])
    assert "redeemed" in listed.output and code in listed.output
    assert runner.invoke(main, ["coupons", "issue", "NOPE", external]).exit_code == 1


def test_cli_keeps_a_definitions_tiers_unless_told_otherwise(cli_env, db):
    runner, external = _one_customer(cli_env, db, "low")
    refused = runner.invoke(main, ["coupons", "issue", "VIP", external])
    assert refused.exit_code == 1 and "is low" in refused.output and "--any-tier" in refused.output
    forced = runner.invoke(main, ["coupons", "issue", "VIP", external, "--any-tier"])
    assert forced.exit_code == 0 and "专属优惠券" in forced.output
