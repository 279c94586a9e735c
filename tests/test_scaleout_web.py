"""`scrm serve --workers N` runs gunicorn with the shipped config: several web processes store each
callback once, and stopping `scrm serve` stops them all."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from sqlalchemy import func, select

from bot.cli.service import gunicorn_command
from bot.core.db import make_engine
from bot.models import InboxEvent
from tests.support import PG_URL, Callbacks, contact_event


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_healthy(url: str, process: subprocess.Popen, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, "scrm serve exited"
        try:
            if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not come up")


def _raw_status(port: int, target: str, chunked_body: bytes) -> int:
    request = (f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/xml\r\n"
               "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode() + chunked_body
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(request)
        raw.shutdown(socket.SHUT_WR)
        answer = raw.recv(200)
    return int(answer.split(b" ", 2)[1])


def test_the_gunicorn_command_uses_the_shipped_config_and_the_wsgi_entry():
    command = gunicorn_command("127.0.0.1", 8000, 4)
    assert command[:3] == [sys.executable, "-m", "gunicorn"]
    assert command[command.index("-c") + 1] == "python:bot.web.gunicorn_conf"
    assert command[-1] == "bot.web.wsgi:app"
    assert command[command.index("--workers") + 1] == "4"


@pytest.mark.parametrize("configured", ["", "k8Jq2vR9xLmP4tW7zB1nC6dF3gH5sY0aE"])
def test_the_workers_of_one_serve_share_one_secret_key(monkeypatch, tmp_path, configured):
    """With app.secret_key empty each gunicorn worker made its own: a session signed by one was refused by the
    next, so operators were signed out at random. One key is made for the run (a configured one is kept)."""
    from click.testing import CliRunner

    import bot.cli.service as service
    from bot.cli import main

    started: list[dict[str, str]] = []

    class Gunicorn:
        def __init__(self, command: list[str], env: dict[str, str]) -> None:
            started.append(env)

        def wait(self, timeout: float | None = None) -> int:
            return 0

    monkeypatch.setattr(service.subprocess, "Popen", Gunicorn)
    env = {"SCRM_CONFIG": None, "SCRM_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
           "SCRM_APP_SECRET_KEY": configured, "SCRM_SCHEDULER_ENABLED": "false"}
    for _ in range(2):
        result = CliRunner(env=env).invoke(main, ["init"])
        result = CliRunner(env=env).invoke(main, ["serve", "--workers", "3"])
        assert result.exit_code == 0, result.output
    keys = [run["SCRM_APP_SECRET_KEY"] for run in started]
    if configured:
        assert keys == [configured, configured] and "is empty" not in result.output
    else:
        assert all(len(key) >= 32 for key in keys) and keys[0] != keys[1] and "share a key" in result.output


def test_the_shipped_config_loads_with_gunicorn():
    from gunicorn.config import Config

    config = Config()
    import bot.web.gunicorn_conf as conf

    for name in ("bind", "workers", "worker_class", "threads", "timeout", "keepalive", "preload_app"):
        config.set(name, getattr(conf, name))
    assert config.worker_class_str == "gthread" and config.threads >= 2 and not config.preload_app


@pytest.mark.skipif(bool(PG_URL), reason="the served processes open the SQLite file the test copies")
def test_serve_with_workers_stores_every_callback_once_and_stops_cleanly(database_url, corp, tmp_path: Path):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCRM_")}
    env.update(SCRM_DATABASE_URL=database_url, SCRM_WECOM_TOKEN=corp.token, SCRM_WECOM_CORP_ID=corp.corp_id,
               SCRM_WECOM_ENCODING_AES_KEY=corp.encoding_aes_key, SCRM_REDIS_URL="",
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    log = (tmp_path / "serve.log").open("wb")
    command = [sys.executable, "-c", "from bot.cli import main; main()", "serve", "--workers", "2",
               "--port", str(port), "--no-worker", "--no-scheduler"]
    process = subprocess.Popen(command, env=env, cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process)
        signer = Callbacks(None, corp)
        with requests.Session() as http:
            for i in range(20):
                query, body = signer.sign(contact_event(ExternalUserID=f"wm_gunicorn_{i}"), nonce=f"n{i}")
                for _ in range(2):  # each delivered twice, as WeCom's retries do
                    reply = http.post(f"{url}/wecom/callback", params=query, data=body.encode(), timeout=10)
                    assert reply.status_code == 200
        # Broken chunked framing, which only a raw socket can send: the client's fault, a 400 (not a 500).
        query, _ = signer.sign(contact_event(ExternalUserID="wm_broken_chunks"))
        line = "&".join(f"{k}={v}" for k, v in query.items())
        for chunks in (b"zz\r\nabc\r\n0\r\n\r\n", b"3\r\nabcXX0\r\n\r\n"):
            assert _raw_status(port, f"/wecom/callback?{line}", chunks) == 400
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
        log.close()
    engine = make_engine(database_url)
    with engine.connect() as conn:
        rows = conn.execute(select(func.count(), func.sum(InboxEvent.duplicates)).select_from(InboxEvent)).one()
    engine.dispose()
    assert tuple(rows) == (20, 20)
    with pytest.raises(requests.ConnectionError):  # gunicorn's master and workers are gone too
        requests.get(f"{url}/healthz", timeout=1)


def test_gunicorn_workers_set_the_apps_objects_aside_from_the_garbage_collector(monkeypatch):
    import gc

    from gunicorn.config import Config

    from bot.web import gunicorn_conf

    Config().set("post_worker_init", gunicorn_conf.post_worker_init)  # gunicorn takes it as that hook
    frozen: list[bool] = []
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(True))
    gunicorn_conf.post_worker_init(object())
    assert frozen == [True]
