"""Webhook throughput: signed, encrypted callbacks per second that are verified, decrypted, stored and
acknowledged, against a baseline of the same server answering an empty 200 (the framework ceiling).

    python bench/webhook_throughput.py [--requests 3000] [--concurrency 8] [--database-url URL]

Each request is a distinct event (no dedupe shortcut). The server runs in its own process (as
`scrm serve` does: werkzeug, threaded), the client in this one. The inbox worker is off so the
figure is the ack path alone. Prints both rates and their ratio.
"""

from __future__ import annotations

import argparse
import multiprocessing
import secrets
import socket
import string
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import requests
from flask import Flask
from sqlalchemy import delete, func, select

from bot.models import InboxEvent
from bot.sandbox.delivery import encrypt_callback, event_xml
from bot.sandbox.state import SandboxConfig, SandboxState
from bot.web.app import create_app


def _random(n: int) -> str:
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(n))


def _fire(url: str, jobs: list[tuple[dict, bytes]], concurrency: int) -> float:
    local = requests.Session

    sessions: dict[int, requests.Session] = {}

    def send(job: tuple[dict, bytes]) -> int:
        import threading

        session = sessions.setdefault(threading.get_ident(), local())
        return session.post(url, params=job[0], data=job[1], timeout=30).status_code

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        statuses = list(pool.map(send, jobs))
    elapsed = time.perf_counter() - started
    bad = [s for s in statuses if s != 200]
    if bad:
        raise SystemExit(f"{len(bad)} requests failed: {bad[:5]}")
    return len(jobs) / elapsed


def _baseline_app() -> Flask:
    app = Flask("baseline")
    app.add_url_rule("/wecom/callback", "cb", lambda: ("", 200), methods=["POST"])
    return app


def _serve(factory, port: int) -> None:  # type: ignore[no-untyped-def]
    import logging

    from werkzeug.serving import run_simple

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    run_simple("127.0.0.1", port, factory(), threaded=True, use_reloader=False)


@contextmanager
def _served(factory):  # type: ignore[no-untyped-def]
    """Run ``factory()``'s app in a child process on a free port; yields the callback URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = multiprocessing.get_context("fork").Process(target=_serve, args=(factory, port), daemon=True)
    process.start()
    url = f"http://127.0.0.1:{port}/wecom/callback"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            requests.get(f"http://127.0.0.1:{port}/", timeout=1)
            break
        except requests.ConnectionError:
            time.sleep(0.1)
    try:
        yield url
    finally:
        process.terminate()
        process.join(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()

    corp = SandboxConfig(corp_id="wwbench" + _random(8).lower(), token=_random(32), encoding_aes_key=_random(43),
                         secrets={})
    state = SandboxState(corp)
    jobs = []
    for i in range(args.requests):
        fields = {"ToUserName": corp.corp_id, "FromUserName": "sys", "CreateTime": 1700000000 + i // 50,
                  "MsgType": "event", "Event": "change_external_contact", "ChangeType": "add_external_contact",
                  "UserID": f"staff{i % 50:02d}", "ExternalUserID": f"wm{i:026d}", "State": "bench"}
        body, signature = encrypt_callback(state, event_xml(fields), str(fields["CreateTime"]), str(i))
        jobs.append(({"msg_signature": signature, "timestamp": str(fields["CreateTime"]), "nonce": str(i)},
                     body.encode()))

    with _served(_baseline_app) as url:
        _fire(url, jobs[:200], args.concurrency)  # warm-up
        baseline_rate = _fire(url, jobs, args.concurrency)

    with tempfile.TemporaryDirectory() as tmp:
        overrides = {"database": {"url": args.database_url or f"sqlite:///{Path(tmp) / 'bench.db'}"},
                     "app": {"log_level": "WARNING"},
                     "wecom": {"corp_id": corp.corp_id, "token": corp.token, "encoding_aes_key": corp.encoding_aes_key}}
        app = create_app(overrides, environ={}, start_worker=False)  # migrates; clears old bench rows
        db = app.extensions["scrm.db"]
        with db.begin() as session:
            session.execute(delete(InboxEvent))
        with _served(lambda: create_app(overrides, environ={}, start_worker=False, upgrade_db=False)) as url:
            webhook_rate = _fire(url, jobs, args.concurrency)
        with db.sessions() as session:
            stored = session.scalar(select(func.count()).select_from(InboxEvent))
        db.dispose()

    print(f"requests: {args.requests}, concurrency: {args.concurrency}, database: {db.dialect}")
    print(f"baseline (same server, empty 200):            {baseline_rate:8.0f} req/s")
    print(f"webhook (verify + decrypt + store + 200):     {webhook_rate:8.0f} req/s")
    print(f"ratio webhook / baseline:                     {webhook_rate / baseline_rate:8.2f}")
    print(f"events stored: {stored} (expected {args.requests})")
    if stored != args.requests:
        raise SystemExit("stored count does not match")


if __name__ == "__main__":
    main()
