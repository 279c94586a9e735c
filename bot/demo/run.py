"""The demo: sandbox WeCom + bot on SQLite, a seeded brand, a burst of real encrypted callbacks."""

from __future__ import annotations

import random
import secrets
import string
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from statistics import median, quantiles
from typing import Any

import requests
from sqlalchemy import func, select
from tqdm import tqdm

from bot.demo import data as demo_data
from bot.demo.seed import load_database, sandbox_seed
from bot.models import Customer, InboxEvent, Order
from bot.sandbox import SandboxConfig, SandboxState, create_sandbox_app
from bot.web.app import create_app
from bot.web.serving import BackgroundServer

OPEN_KFID = "wkDEMO0000000000000000000001"
DEMO_CHANNELS = {
    "live_0618": {"tags": ["渠道/直播间"], "stage": "new"},
    "store_qr": {"tags": ["渠道/门店扫码"]},
    "wechat_ad": {"tags": ["渠道/朋友圈广告"]},
    "friend_referral": {"tags": ["渠道/老带新"]},
}
KF_TEXTS = ["多少钱", "有优惠吗", "什么时候发货", "会员有什么权益", "退订", "谢谢"]


def _random(length: int) -> str:
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(length))


@dataclass
class DemoRun:
    """Everything the demo started, so the caller can keep serving and then stop it."""

    bot: BackgroundServer
    sandbox: BackgroundServer
    app: Any
    report: dict[str, Any] = field(default_factory=dict)

    def stop(self) -> None:
        worker = self.app.extensions.get("scrm.worker")
        if worker:
            worker.stop()
        self.bot.stop()
        self.sandbox.stop()
        self.app.extensions["scrm.db"].dispose()


def demo_overrides(database_url: str, sandbox_url: str, corp: SandboxConfig, app_secret: str) -> dict:
    return {
        "database": {"url": database_url},
        "wecom": {"corp_id": corp.corp_id, "agent_id": corp.agent_id, "token": corp.token,
                  "encoding_aes_key": corp.encoding_aes_key, "secret": app_secret,
                  "api_base_url": f"{sandbox_url}/cgi-bin/", "busy_backoff_seconds": 0.2},
        "worker": {"poll_seconds": 0.5, "backoff_base_seconds": 1.0},
        "app": {"log_level": "WARNING", "brand_name": "小满咖啡"},
        "contacts": {"channels": DEMO_CHANNELS},
        # The sandbox plays WeCom's OAuth2 page and JS-SDK, so the sidebar opens in a desktop browser.
        "sidebar": {"authorize_url": f"{sandbox_url}/connect/oauth2/authorize",
                    "jssdk_url": f"{sandbox_url}/_sandbox/jssdk.js"},
    }


def sidebar_link(run: DemoRun) -> tuple[str, str] | None:
    """A sidebar URL beside a chat with a followed, tiered customer (the highest score), and the member
    to pick on the sandbox's sign-in page; None before any customer is tiered."""
    from bot.models import CustomerTier, Follow, Staff

    query = (select(Customer.external_userid, Staff.userid)
             .join(Follow, Follow.customer_id == Customer.id).join(Staff, Staff.id == Follow.staff_id)
             .join(CustomerTier, CustomerTier.customer_id == Customer.id)
             .where(Follow.ended_at.is_(None), CustomerTier.value_tier.is_not(None))
             .order_by(CustomerTier.score.desc().nulls_last(), Customer.id).limit(1))
    with run.app.extensions["scrm.db"].begin() as session:
        row = session.execute(query).first()
    if row is None:
        return None
    return f"{run.bot.url}/sidebar/?sandbox_contact={row.external_userid}", row.userid


def start(database_url: str) -> tuple[DemoRun, SandboxState]:
    """Start the sandbox (fresh demo corp, random credentials) and the bot pointed at it."""
    app_secret = _random(43)
    corp = SandboxConfig(corp_id="wwdemo" + _random(12).lower(), token=_random(32), encoding_aes_key=_random(43),
                         secrets={app_secret: "app"}, callback_retry_delay=0.5)
    state = SandboxState(corp)
    sandbox = BackgroundServer(create_sandbox_app(state)).start()
    overrides = demo_overrides(database_url, sandbox.url, corp, app_secret)
    app = create_app(overrides, environ={})
    bot = BackgroundServer(app).start()
    corp.callback_url = f"{bot.url}/wecom/callback"
    return DemoRun(bot=bot, sandbox=sandbox, app=app), state


DEMO_OPERATOR = "demo"


def add_console_operator(run: DemoRun) -> tuple[str, str]:
    """An operator for the console with a fresh random password (the demo database is new each run)."""
    from bot.web.console.accounts import add_operator

    password = secrets.token_urlsafe(12)
    with run.app.extensions["scrm.db"].begin() as session:
        add_operator(session, DEMO_OPERATOR, "operator", password, actor="scrm demo")
    return DEMO_OPERATOR, password


def seed(run: DemoRun, customers: int, progress: bool) -> tuple[demo_data.DemoData, dict[str, int]]:
    data = demo_data.generate(customers)
    with run.app.extensions["scrm.db"].begin() as session:
        counts = load_database(session, data, run.app.extensions["scrm.settings"].tz, progress=progress)
    requests.post(f"{run.sandbox.url}/_sandbox/seed", json=sandbox_seed(data, OPEN_KFID), timeout=60).raise_for_status()
    return data, counts


def plan_burst(data: demo_data.DemoData, size: int, seed: int = 11) -> list[tuple[str, dict[str, Any]]]:
    """A realistic mix of what WeCom sends a brand in a busy minute."""
    rng = random.Random(seed)
    pool = list(data.customers)
    rng.shuffle(pool)
    staff = [s["userid"] for s in data.staff]
    calls: list[tuple[str, dict[str, Any]]] = []
    for i in range(size):
        roll = rng.random()
        if roll < 0.55 or not pool:
            calls.append(("contacts/add", {"userid": rng.choice(staff), "name": rng.choice(demo_data.SURNAMES) + "先生",
                                           "state": rng.choice(demo_data.CHANNELS), "half": rng.random() < 0.1}))
            continue
        customer = pool.pop()
        if roll < 0.70:
            calls.append(("contacts/edit", {"userid": customer["owner_userid"],
                                            "external_userid": customer["external_userid"], "remark": f"老客户{i}"}))
        elif roll < 0.80:
            calls.append(("contacts/delete", {"userid": customer["owner_userid"],
                                              "external_userid": customer["external_userid"],
                                              "by": rng.choice(["staff", "customer"])}))
        elif roll < 0.97:
            calls.append(("kf/text", {"open_kfid": OPEN_KFID, "external_userid": customer["external_userid"],
                                      "content": rng.choice(KF_TEXTS)}))
        else:
            calls.append(("callback", {"fields": {"MsgType": "event", "Event": "change_external_tag",
                                                  "ChangeType": "create", "TagType": "tag", "Id": f"et{i:06d}"}}))
    return calls


def drive(run: DemoRun, calls: list[tuple[str, dict[str, Any]]], retry_share: float, progress: bool,
          concurrency: int = 8) -> dict[str, Any]:
    """Send the burst through the sandbox (which encrypts and POSTs each to the real webhook), then
    re-send a share of them byte for byte, as Tencent's retries do."""
    session = requests.Session()
    base = f"{run.sandbox.url}/_sandbox/"

    def send(call: tuple[str, dict[str, Any]]) -> dict[str, Any]:
        response = session.post(base + call[0], json=call[1], timeout=60)
        response.raise_for_status()
        body = response.json()
        return body.get("delivery", body)

    started = time.perf_counter()
    deliveries = _parallel(send, calls, "delivering callbacks", progress, concurrency)
    rng = random.Random(5)
    resend = rng.sample(deliveries, int(len(deliveries) * retry_share))

    def resend_one(delivery: dict[str, Any]) -> dict[str, Any]:
        return session.post(f"{base}deliveries/{delivery['id']}/redeliver", timeout=60).json()

    deliveries += _parallel(resend_one, resend, "re-delivering (WeCom retries)", progress, concurrency)
    elapsed = time.perf_counter() - started
    latencies = [a["seconds"] for d in deliveries for a in d["attempts"] if a.get("result") == 200]
    return {"deliveries": deliveries, "elapsed": elapsed, "retried": len(resend),
            "acked": sum(1 for d in deliveries if d["delivered"]), "latencies": latencies}


def _parallel(func: Callable[[Any], dict[str, Any]], items: list[Any], desc: str, progress: bool,
              concurrency: int) -> list[dict[str, Any]]:
    with ThreadPoolExecutor(concurrency) as pool, tqdm(total=len(items), desc=desc, unit="cb",
                                                      disable=not progress) as bar:
        results = []
        for result in pool.map(func, items):
            results.append(result)
            bar.update(1)
    return results


def wait_for_inbox(run: DemoRun, timeout: float = 120.0) -> bool:
    db = run.app.extensions["scrm.db"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with db.sessions() as session:
            busy = session.scalar(select(func.count()).select_from(InboxEvent).where(
                InboxEvent.status.in_(("pending", "processing"))))
        if not busy:
            return True
        run.app.extensions["scrm.worker"].wake()
        time.sleep(0.2)
    return False


def inbox_table(run: DemoRun, deliveries: list[dict[str, Any]]) -> list[list[Any]]:
    delivered = Counter(d["event"] for d in deliveries if d["delivered"])
    with run.app.extensions["scrm.db"].sessions() as session:
        rows = session.execute(select(InboxEvent.msg_type, InboxEvent.event, InboxEvent.change_type,
                                      InboxEvent.status, func.count(), func.sum(InboxEvent.duplicates))
                               .group_by(InboxEvent.msg_type, InboxEvent.event, InboxEvent.change_type,
                                         InboxEvent.status)).all()
    table: dict[str, Counter[str]] = {}
    for msg_type, event, change_type, status, count, dups in rows:
        kind = "/".join(p for p in (msg_type, event, change_type) if p)
        counter = table.setdefault(kind, Counter())
        counter["stored"] += count
        counter["duplicates"] += dups or 0
        counter[status] += count
    out = []
    for kind in sorted(set(table) | set(delivered)):
        c = table.get(kind, Counter())
        out.append([kind, delivered[kind], c["stored"], c["duplicates"], c["handled"], c["unhandled"],
                    c["failed"] + c["dead"], c["pending"] + c["processing"]])
    totals = ["total"] + [sum(r[i] for r in out) for i in range(1, 8)]
    return [*out, totals]


def api_calls_table(run: DemoRun) -> list[list[Any]]:
    calls = requests.get(f"{run.sandbox.url}/_sandbox/calls", timeout=30).json()
    counts = Counter((c["path"], c["errcode"]) for c in calls)
    return [[path, errcode, n] for (path, errcode), n in sorted(counts.items())]


def database_counts(run: DemoRun) -> dict[str, int]:
    with run.app.extensions["scrm.db"].sessions() as session:
        return {"customers": session.scalar(select(func.count()).select_from(Customer)) or 0,
                "orders": session.scalar(select(func.count()).select_from(Order)) or 0}


def retier_table(run: DemoRun) -> tuple[Any, list[list[Any]]]:
    """Re-tier the demo brand as of today and count customers per RFM segment and value tier."""
    from datetime import datetime

    from segments.policy import TierPolicy
    from segments.retier import retier, tidy_after_commit, tier_counts
    from segments.rfm import SEGMENT_NAMES

    settings = run.app.extensions["scrm.settings"]
    db = run.app.extensions["scrm.db"]
    with db.begin() as session:
        result = retier(session, TierPolicy.of(settings), datetime.now(settings.tz).date(),
                        settings.tz)
        counts = tier_counts(session)
    tidy_after_commit(db.engine, result)
    rows = [["rfm_segment", f"{SEGMENT_NAMES[code]} {code}", counts["rfm_segment"].get(code, 0)]
            for code in SEGMENT_NAMES]
    rows.append(["rfm_segment", "- (no paid order)", counts["rfm_segment"].get(None, 0)])
    for dimension in ("value_tier", "stage", "engagement"):
        rows += [[dimension, value, n] for value, n in sorted(counts[dimension].items(), key=lambda kv: -kv[1])]
    return result, rows


def latency_summary(latencies: list[float]) -> str:
    if len(latencies) < 2:
        return "n/a"
    p95 = quantiles(latencies, n=20)[-1]
    return f"median {median(latencies) * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms"
