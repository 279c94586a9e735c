"""Webhook under load: wrk against gunicorn on 127.0.0.1, the real webhook (verify, decrypt, parse,
durable inbox write, 200) against a bare wechatpy verify+decrypt+parse Flask handler under the same
gunicorn settings (bench/webhook_baseline.py), in the same run: both servers stay up and their
runs alternate, so a change in the machine's load falls on both; the medians are printed.

    python bench/webhook_load.py [--connections 32] [--duration 10] [--rounds 3] [--workers 2] [--database-url URL]

Needs `wrk` (Debian: apt-get install wrk). Every request is a distinct, correctly encrypted event
(bench/webhook_load.lua posts them); the inbox worker is off so the figure is the ack path. Prints
requests/s, p50/p99 latency and errors for both, then checks that every distinct event that was
sent is stored exactly once (each thread's first request, which wrk only inspects, and its last
ones, whose answers wrk may have cut off, are delivered again as WeCom's retries would be). With
--database-url it writes to that database and empties its inbox first: use a scratch database.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import requests
from sqlalchemy import delete, func, select

from bot.core.db import make_engine, upgrade_schema
from bot.models import InboxEvent
from bot.sandbox.delivery import encrypt_callback, event_xml
from bot.sandbox.state import SandboxConfig, SandboxState

ROOT = Path(__file__).resolve().parents[1]
LUA = Path(__file__).with_suffix(".lua")


@dataclass
class LoadResult:
    rate: float
    p50_ms: float
    p99_ms: float
    errors: int
    sent_per_thread: list[int]
    size_per_thread: list[int]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _write_requests(state: SandboxState, folder: Path, threads: int, per_thread: int,
                    offset: int = 0) -> list[list[tuple[str, str]]]:
    """One file per wrk thread of distinct signed callbacks (``offset`` keeps sets apart); returns
    them for the retries."""
    corp = state.config
    every: list[list[tuple[str, str]]] = []
    for thread in range(threads):
        lines = []
        for i in range(per_thread):
            n = (offset * threads + thread) * per_thread + i
            fields = {"ToUserName": corp.corp_id, "FromUserName": "sys", "CreateTime": 1700000000 + n // 50,
                      "MsgType": "event", "Event": "change_external_contact", "ChangeType": "add_external_contact",
                      "UserID": f"staff{n % 50:02d}", "ExternalUserID": f"wm{n:026d}", "State": "load"}
            timestamp, nonce = str(fields["CreateTime"]), str(n)
            body, signature = encrypt_callback(state, event_xml(fields), timestamp, nonce)
            query = urlencode({"msg_signature": signature, "timestamp": timestamp, "nonce": nonce})
            lines.append((query, body))
        (folder / f"requests-{thread}.txt").write_text("".join(f"{q}\t{b}\n" for q, b in lines), encoding="utf-8")
        every.append(lines)
    return every


@contextmanager
def _gunicorn(app: str, workers: int, env: dict[str, str], log: Path):  # type: ignore[no-untyped-def]
    port = _free_port()
    command = [sys.executable, "-m", "gunicorn", "-c", "python:bot.web.gunicorn_conf",
               "--bind", f"127.0.0.1:{port}", "--workers", str(workers), app]
    with log.open("ab") as out:
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=out, stderr=out)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"gunicorn {app} did not start; see {log}")
                try:
                    if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    time.sleep(0.2)
            yield url
        finally:
            process.terminate()
            process.wait(30)


def _wrk(url: str, folder: Path, threads: int, connections: int, duration: int) -> LoadResult:
    command = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s", "--latency",
               "-s", str(LUA), url, "--", str(folder)]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    threads_seen = re.findall(r"thread (\d+) sent (\d+) ok (\d+) refused (\d+) size (\d+)", output)
    p50, p99 = (int(v) for v in re.search(r"p50_us (\d+) p99_us (\d+)", output).groups())  # type: ignore[union-attr]
    socket_errors = sum(int(v) for v in re.findall(r"(?:connect|read|write|timeout) (\d+)",
                                                   re.search(r"Socket errors:.*", output).group(0))) \
        if "Socket errors" in output else 0
    refused = sum(int(t[3]) for t in threads_seen)
    ordered = sorted(threads_seen, key=lambda t: int(t[0]))
    return LoadResult(rate, p50 / 1000, p99 / 1000, refused + socket_errors,
                      [int(t[1]) for t in ordered], [int(t[4]) for t in ordered])


def _report(name: str, results: list[LoadResult]) -> None:
    rates = [r.rate for r in results]
    print(f"{name:<46} {statistics.median(rates):6.0f} req/s (runs: {', '.join(f'{r:.0f}' for r in rates)})   "
          f"p50 {statistics.median(r.p50_ms for r in results):5.1f} ms   "
          f"p99 {statistics.median(r.p99_ms for r in results):5.1f} ms   errors {sum(r.errors for r in results)}")


def _retry_edges(url: str, every: list[list[tuple[str, str]]], result: LoadResult, tail: int) -> None:
    """WeCom-style retries of each thread's first request (wrk builds it once to inspect and never
    sends it) and of its last ones (wrk may have cut their answers off)."""
    with requests.Session() as http:
        for lines, sent in zip(every, result.sent_per_thread, strict=True):
            last = min(sent, len(lines))
            for query, body in lines[:1] + lines[max(1, last - tail):last]:
                reply = http.post(f"{url}/wecom/callback?{query}", data=body.encode(), timeout=10)
                if reply.status_code != 200:
                    raise SystemExit(f"retry answered {reply.status_code}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    parser.add_argument("--rounds", type=int, default=3, help="baseline and webhook runs, alternating")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (both servers)")
    parser.add_argument("--per-thread", type=int, default=0,
                        help="distinct events per wrk thread and round (default: enough for 6,000 req/s; a file "
                             "that wraps around sends duplicates, which take the slower duplicate path)")
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")

    corp = SandboxConfig(corp_id="wwload" + os.urandom(4).hex(), token=os.urandom(12).hex(),
                         encoding_aes_key=os.urandom(32).hex()[:43], secrets={})
    state = SandboxState(corp)
    per_thread = args.per_thread or 6000 * (args.duration + 2) // args.threads
    with tempfile.TemporaryDirectory(prefix="webhook-load-") as tmp:
        started = time.perf_counter()
        folders, every = [], []
        for round_no in range(args.rounds + 1):  # one set per round, and one for the warm-ups
            folder = Path(tmp) / f"round-{round_no}"
            folder.mkdir()
            folders.append(folder)
            every.append(_write_requests(state, folder, args.threads, per_thread, offset=round_no))
        print(f"{(args.rounds + 1) * args.threads * per_thread} distinct signed callbacks written in "
              f"{time.perf_counter() - started:.1f}s")
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("SCRM_")}
        base_env["PYTHONPATH"] = str(ROOT)
        log = Path(tmp) / "gunicorn.log"
        baseline_env = {**base_env, "WEBHOOK_LOAD_TOKEN": corp.token, "WEBHOOK_LOAD_AES_KEY": corp.encoding_aes_key,
                        "WEBHOOK_LOAD_CORP_ID": corp.corp_id}
        database_url = args.database_url or f"sqlite:///{Path(tmp) / 'load.db'}"
        engine = make_engine(database_url)
        upgrade_schema(engine)
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":  # no dead rows left for the next run's inserts to wade through
                conn.exec_driver_sql("TRUNCATE inbox_events")
            else:
                conn.execute(delete(InboxEvent.__table__))
        webhook_env = {**base_env, "SCRM_DATABASE_URL": database_url, "SCRM_WORKER_ENABLED": "false",
                       "SCRM_WECOM_TOKEN": corp.token, "SCRM_WECOM_ENCODING_AES_KEY": corp.encoding_aes_key,
                       "SCRM_WECOM_CORP_ID": corp.corp_id}
        tail = args.connections // args.threads + 1
        baseline: list[LoadResult] = []
        webhook: list[LoadResult] = []
        with _gunicorn("bench.webhook_baseline:app", args.workers, baseline_env, log) as base_url, \
                _gunicorn("bot.web.wsgi:app", args.workers, webhook_env, log) as hook_url:
            _wrk(base_url, folders[0], args.threads, args.connections, 2)  # warm-ups
            warm = _wrk(hook_url, folders[0], args.threads, args.connections, 2)
            _retry_edges(hook_url, every[0], warm, tail)
            for round_no in range(1, args.rounds + 1):
                baseline.append(_wrk(base_url, folders[round_no], args.threads, args.connections, args.duration))
                webhook.append(_wrk(hook_url, folders[round_no], args.threads, args.connections, args.duration))
                _retry_edges(hook_url, every[round_no], webhook[-1], tail)
        with engine.connect() as conn:
            stored, keys = conn.execute(select(func.count(), func.count(func.distinct(InboxEvent.dedupe_key)))
                                        .select_from(InboxEvent)).one()
        engine.dispose()

    distinct = sum(min(sent, size) for r in [warm, *webhook]
                   for sent, size in zip(r.sent_per_thread, r.size_per_thread, strict=True))
    wrapped = any(sent > size for r in webhook for sent, size in zip(r.sent_per_thread, r.size_per_thread,
                                                                      strict=True))
    print(f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s x {args.rounds} rounds, gunicorn "
          f"--workers {args.workers} (gthread, bot/web/gunicorn_conf.py), database: {engine.dialect.name}")
    _report("baseline (wechatpy verify + decrypt + parse)", baseline)
    _report("webhook (… + durable inbox write)", webhook)
    ratios = [w.rate / b.rate for w, b in zip(webhook, baseline, strict=True)]
    print(f"ratio webhook / baseline: median {statistics.median(ratios):.2f} (per round: "
          f"{', '.join(f'{r:.2f}' for r in ratios)}; goal ≥ 0.6; p99 goal ≤ 25 ms)")
    print(f"distinct events sent: {distinct}; stored: {stored} rows, {keys} distinct keys")
    if wrapped:
        print("WARNING: a request file wrapped around, so the webhook's rate includes duplicate deliveries "
              "(a slower path); raise --per-thread for a rate of distinct events")
    if stored != distinct or keys != stored:
        raise SystemExit("FAIL: stored events do not match the distinct events sent")
    if any(r.errors for r in webhook + baseline):
        raise SystemExit("FAIL: some requests were not answered 200")
    print("every distinct event stored exactly once")


if __name__ == "__main__":
    main()
