"""Helpers for the console tests: operators, a signed-in test client, a seeded audience."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from sqlalchemy import insert

from bot.models import Customer, CustomerAggregate, CustomerTag, CustomerTier, Tag, TagGroup, TierChange
from bot.web.console.accounts import add_operator
from tests.campaign_data import seed_audience

PASSWORD = "correct horse battery"


def add_user(db: Any, name: str, role: str, password: str = PASSWORD) -> None:
    with db.begin() as s:
        add_operator(s, name, role, password, actor="test")


def csrf(client: Any) -> str:
    """The session's CSRF token (a GET of any console page issues one)."""
    client.get("/console/login")
    with client.session_transaction() as session:
        return session["csrf"]


def sign_in(client: Any, name: str, password: str = PASSWORD, ip: str = "10.0.0.1") -> Any:
    return client.post("/console/login", data={"name": name, "password": password, "csrf_token": csrf(client)},
                       environ_base={"REMOTE_ADDR": ip})


def signed_in(app: Any, name: str, role: str) -> Any:
    client = app.test_client()
    add_user(app.extensions["scrm.db"], name, role)
    assert sign_in(client, name).status_code == 302
    return client


def seed_console(db: Any) -> list[int]:
    """12 customers (3 high, 4 mid, 5 low) with orders, RFM, stage and engagement, a VIP tag on the
    fifth, a formula-like name on the sixth, the seventh opted out, and a day of tier changes."""
    ids = seed_audience(db, {"high": 3, "mid": 4, "low": 5})
    with db.begin() as s:
        s.execute(insert(CustomerAggregate), [{"customer_id": i, "order_count": 1 + n % 3,
                                               "paid_amount_fen": 10000 * (1 + n),
                                               "last_order_day": date(2026, 11, 1).toordinal() - n}
                                              for n, i in enumerate(ids)])
        for n, i in enumerate(ids):
            tier = s.get(CustomerTier, i)
            tier.rfm_segment = "important_value" if n < 3 else "general_retain"
            tier.stage = "repeat" if n % 2 else "first_purchase"
            tier.engagement = "active"
        group = TagGroup(name="客户等级")
        s.add(group)
        s.flush()
        vip = Tag(group_id=group.id, name="VIP")
        s.add(vip)
        s.flush()
        s.add(CustomerTag(customer_id=ids[4], tag_id=vip.id, source="staff"))
        s.get(Customer, ids[5]).name = "=HYPERLINK(\"x\")"
        s.get(Customer, ids[6]).opted_out = True
        day = date(2026, 11, 20)
        s.add_all([TierChange(customer_id=ids[0], dimension="value_tier", from_value="mid", to_value="high", as_of=day),
                   TierChange(customer_id=ids[1], dimension="value_tier", from_value="mid", to_value="high", as_of=day),
                   TierChange(customer_id=ids[7], dimension="value_tier", from_value="high", to_value="low", as_of=day),
                   TierChange(customer_id=ids[8], dimension="value_tier", from_value="low", to_value="mid",
                              as_of=day - timedelta(days=1))])
    return ids
