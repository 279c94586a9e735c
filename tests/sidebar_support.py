"""A sidebar world for tests: the bot served on a port with WeCom pointed at the sandbox (API,
OAuth2 authorize page and JS-SDK stub), two members each following their own customer, corp tags."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests

from bot.models import (
    Coupon,
    Customer,
    CustomerAggregate,
    CustomerTier,
    Follow,
    Interaction,
    Order,
    Staff,
    Tag,
    TagGroup,
    TierChange,
)
from bot.sandbox import SandboxState
from bot.web.app import create_app
from bot.web.serving import BackgroundServer

OWN, OTHERS = "wmOwnCustomer0001", "wmOthersCustomer02"


@dataclass
class SidebarWorld:
    app: Any
    url: str
    sandbox_url: str
    state: SandboxState

    def db(self) -> Any:
        return self.app.extensions["scrm.db"]


def sidebar_overrides(overrides: dict[str, dict[str, Any]], sandbox_url: str, **sidebar: Any) -> dict:
    return {**overrides,
            "wecom": {**overrides["wecom"], "api_base_url": f"{sandbox_url}/cgi-bin/"},
            "sidebar": {"authorize_url": f"{sandbox_url}/connect/oauth2/authorize",
                        "jssdk_url": f"{sandbox_url}/_sandbox/jssdk.js", "managers": ["boss"], **sidebar}}


def seed(world_db: Any, state: SandboxState, now: datetime) -> None:
    """zhangsan follows OWN (重要价值, high), lisi follows OTHERS; boss is a manager and follows no one."""
    for userid, name in (("zhangsan", "张三"), ("lisi", "李四"), ("boss", "王经理")):
        state.add_staff(userid, name)
    state.add_contact("zhangsan", OWN, "陈小姐", state="live_0618")
    state.add_contact("lisi", OTHERS, "刘先生")
    with world_db.begin() as session:
        staff = {u: Staff(userid=u, name=n) for u, n in (("zhangsan", "张三"), ("lisi", "李四"), ("boss", "王经理"))}
        session.add_all(staff.values())
        own = Customer(external_userid=OWN, name="陈小姐", owner_userid="zhangsan")
        others = Customer(external_userid=OTHERS, name="刘先生", owner_userid="lisi")
        session.add_all([own, others])
        session.flush()
        # Stored tiers as a re-tier over this population would compute them (the card shows the why too).
        own.tier = CustomerTier(value_tier="high", rfm_segment="important_value", r_score=5, f_score=5, m_score=5,
                                score=100, stage="super", engagement="active", activity="high", activity_score=9)
        order_days = [now - timedelta(days=d) for d in (80, 60, 41, 25, 12, 2)]
        session.add_all([
            Follow(customer_id=own.id, staff_id=staff["zhangsan"].id, remark="老客户", add_way=1, state="live_0618",
                   added_at=now - timedelta(days=40)),
            Follow(customer_id=others.id, staff_id=staff["lisi"].id, added_at=now - timedelta(days=3)),
            CustomerAggregate(customer_id=own.id, order_count=6, paid_amount_fen=328800,
                              first_order_at=order_days[0], last_order_at=order_days[-1],
                              first_order_day=order_days[0].date().toordinal(),
                              last_order_day=order_days[-1].date().toordinal()),
            *(Order(order_id=f"o-{i}", customer_id=own.id, amount_fen=fen, paid_at=day,
                    paid_day=day.date().toordinal())
              for i, (fen, day) in enumerate(zip((28800, 50000, 60000, 40000, 70000, 80000), order_days,
                                                 strict=True))),
            TierChange(customer_id=own.id, dimension="value_tier", from_value="mid", to_value="high",
                       as_of=(now - timedelta(days=1)).date(), reason="test"),
            Coupon(code="ABCDEFGHJKMN", definition="VIP", title="专属优惠券", customer_id=own.id, issue_ref="t",
                   value_fen=5000, issued_at=now - timedelta(days=1), expires_at=now + timedelta(days=29)),
            *(Interaction(customer_id=own.id, kind="kf_message", occurred_at=now - timedelta(hours=3 + 20 * i),
                          source_ref=f"kf:{i}") for i in range(9)),
        ])
        for i in range(4):  # buyers the member does not follow: the population OWN is compared with
            buyer = Customer(external_userid=f"wmBuyer{i}", name="")
            session.add(buyer)
            session.flush()
            day = now - timedelta(days=40 + i)
            session.add(CustomerAggregate(customer_id=buyer.id, order_count=1, paid_amount_fen=10000 + 100 * i,
                                          first_order_at=day, last_order_at=day,
                                          first_order_day=day.date().toordinal(),
                                          last_order_day=day.date().toordinal()))
        intent = TagGroup(name="意向")
        deal = TagGroup(name="交易")
        session.add_all([intent, deal])
        session.flush()
        session.add_all([Tag(group_id=intent.id, name="问过价格"), Tag(group_id=intent.id, name="已报价"),
                         Tag(group_id=deal.id, name="客户首单")])


def serve_world(overrides: dict[str, dict[str, Any]], sandbox: BackgroundServer, sandbox_state: SandboxState,
                **sidebar: Any) -> Iterator[SidebarWorld]:
    """The body of each test module's ``world`` fixture."""
    app = create_app(sidebar_overrides(overrides, sandbox.url, **sidebar), environ={}, start_worker=False)
    seed(app.extensions["scrm.db"], sandbox_state, datetime.now(UTC))
    with BackgroundServer(app) as bot:
        yield SidebarWorld(app, bot.url, sandbox.url, sandbox_state)
    app.extensions["scrm.db"].dispose()


def sign_in(world: SidebarWorld, userid: str, page: str = "/sidebar/") -> requests.Session:
    """A browser session that opened ``page`` and went through the sandbox's authorize page as ``userid``."""
    browser = requests.Session()
    first = browser.get(world.url + page, allow_redirects=False)
    assert first.status_code == 302
    authorize = browser.get(first.headers["Location"].split("#")[0])
    assert authorize.status_code == 200
    pick = next(link for link in _links(authorize.text) if f"userid={userid}" in link)
    back = browser.get(world.sandbox_url + pick, allow_redirects=False)
    assert back.status_code == 302
    done = browser.get(back.headers["Location"], allow_redirects=False)
    assert done.status_code == 302, done.text
    return browser


def _links(html: str) -> list[str]:
    import re
    from html import unescape

    return [unescape(h) for h in re.findall(r"href='([^']+)'", html)]


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}

