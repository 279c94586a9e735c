"""Fixtures: settings, a migrated database (SQLite by default, PostgreSQL when
SCRM_TEST_DATABASE_URL is set), the app, the WeCom sandbox, and a signed-callback helper."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from bot.core.db import make_engine, upgrade_schema
from bot.models import Base
from bot.sandbox import SandboxConfig, SandboxState, create_sandbox_app
from bot.web.app import create_app
from bot.web.serving import BackgroundServer
from tests.support import PG_URL, Callbacks, random_text, secret_for

CLOCK_SHIFT_ENV = "SCRM_TEST_CLOCK_SHIFT_DAYS"


def pytest_configure(config: pytest.Config) -> None:
    """``SCRM_TEST_CLOCK_SHIFT_DAYS=N`` runs the whole suite with the wall clock N days ahead (CI runs
    +365 and +1826.4, the fraction landing the run at another time of day), which proves no test
    mixes a fixed date with today's. time-machine moves the realtime clocks only; libfaketime was
    tried and cannot be used: Debian's 0.9.10 makes Python's ``time.sleep`` fail with EINVAL when
    monotonic time is left real, and hangs ``Event.wait`` when it is moved too (upstream #426)."""
    days = os.environ.get(CLOCK_SHIFT_ENV, "").strip()
    if days:
        import time_machine

        traveller = time_machine.travel(datetime.now(UTC) + timedelta(days=float(days)), tick=True)
        traveller.start()
        config.add_cleanup(traveller.stop)


def pytest_report_header(config: pytest.Config) -> str | None:
    days = os.environ.get(CLOCK_SHIFT_ENV, "").strip()
    return f"wall clock moved {days} days ahead: now {datetime.now(UTC):%Y-%m-%d %H:%M} UTC" if days else None


@pytest.fixture(scope="session")
def migrated_template(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A database at the newest schema: a SQLite file to copy, or the PostgreSQL test database."""
    if PG_URL:
        engine = make_engine(PG_URL)
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
        upgrade_schema(engine)
        engine.dispose()
        return PG_URL
    path = tmp_path_factory.mktemp("template") / "scrm.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade_schema(engine)
    engine.dispose()
    return str(path)


@pytest.fixture
def database_url(migrated_template: str, tmp_path: Path) -> str:
    if PG_URL:
        engine = make_engine(PG_URL)
        tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
        with engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
        engine.dispose()
        return PG_URL
    target = tmp_path / "scrm.db"
    shutil.copyfile(migrated_template, target)
    return f"sqlite:///{target}"


@pytest.fixture
def corp() -> SandboxConfig:
    """Fresh random credentials per test: nothing may depend on particular values."""
    return SandboxConfig(
        corp_id="ww" + random_text(16).lower(),
        token=random_text(secrets.choice([3, 16, 32])),
        encoding_aes_key=random_text(43),
        secrets={"app-" + random_text(20): "app", "contact-" + random_text(20): "contact"},
        callback_timeout=5.0,
        callback_retry_delay=0.0,
    )


@pytest.fixture
def sandbox_state(corp: SandboxConfig) -> SandboxState:
    return SandboxState(corp)


@pytest.fixture
def sandbox(sandbox_state: SandboxState) -> Iterator[BackgroundServer]:
    with BackgroundServer(create_sandbox_app(sandbox_state)) as server:
        yield server


@pytest.fixture
def overrides(database_url: str, corp: SandboxConfig) -> dict[str, dict[str, Any]]:
    return {
        "database": {"url": database_url},
        "redis": {"url": ""},
        "wecom": {"corp_id": corp.corp_id, "token": corp.token, "encoding_aes_key": corp.encoding_aes_key,
                  "secret": secret_for(corp, "app"), "contact_secret": secret_for(corp, "contact"),
                  "agent_id": corp.agent_id, "api_base_url": "http://127.0.0.1:9/cgi-bin/",
                  "busy_backoff_seconds": 0.0},
        "worker": {"backoff_base_seconds": 10.0, "max_attempts": 3},
        "app": {"secret_key": "test-" + random_text(40)},
    }


@pytest.fixture
def app(overrides: dict[str, dict[str, Any]]) -> Iterator[Any]:
    app = create_app(overrides, environ={}, start_worker=False)
    app.config["TESTING"] = True
    yield app
    app.extensions["scrm.db"].dispose()


@pytest.fixture
def cli_env(database_url: str) -> dict[str, str]:
    """Environment for running ``scrm`` in-process against this test's database."""
    return {"SCRM_DATABASE_URL": database_url}


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture
def db(app: Any) -> Any:
    return app.extensions["scrm.db"]


@pytest.fixture
def processor(app: Any) -> Any:
    return app.extensions["scrm.processor"]


@pytest.fixture
def wired(overrides: dict[str, dict[str, Any]], sandbox: BackgroundServer,
          sandbox_state: SandboxState) -> Iterator[Any]:
    """The bot served on a real port, its WeCom client pointed at the sandbox, and the sandbox
    delivering callbacks to it. The inbox is processed on demand (``app.extensions['scrm.processor']``)."""
    settings = {**overrides, "wecom": {**overrides["wecom"], "api_base_url": f"{sandbox.url}/cgi-bin/"}}
    app = create_app(settings, environ={}, start_worker=False)
    with BackgroundServer(app) as bot:
        sandbox_state.config.callback_url = f"{bot.url}/wecom/callback"
        app.extensions["bot.url"] = bot.url
        yield app
    app.extensions["scrm.db"].dispose()


@pytest.fixture
def callbacks(client: Any, corp: SandboxConfig) -> Callbacks:
    return Callbacks(client, corp)


@pytest.fixture(autouse=True)
def _sql_echo_stays_in_its_test() -> Iterator[None]:
    """``database.echo`` sets the ``sqlalchemy.engine`` logger's level for the whole process (as it should in
    a service): the next test gets the level it had, not every statement logged."""
    engine_log = logging.getLogger("sqlalchemy.engine")
    level = engine_log.level
    yield
    engine_log.setLevel(level)
