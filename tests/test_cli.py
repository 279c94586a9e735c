"""The ``scrm`` command line: init, config, inbox list/show/retry/replay, and the demo."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from bot.cli import main
from tests.support import contact_event


@pytest.fixture
def config_file(tmp_path: Path, overrides) -> Path:
    w = overrides["wecom"]
    path = tmp_path / "config.toml"
    path.write_text(
        f'[database]\nurl = "{overrides["database"]["url"]}"\n'
        f'[wecom]\ncorp_id = "{w["corp_id"]}"\ntoken = "{w["token"]}"\nencoding_aes_key = "{w["encoding_aes_key"]}"\n'
        f'secret = "{w["secret"]}"\napi_base_url = "{w["api_base_url"]}"\n'
        '[worker]\nmax_attempts = 3\n', encoding="utf-8")
    return path


def scrm(*args: str, env: dict[str, str] | None = None):
    return CliRunner(env={"SCRM_CONFIG": None, **(env or {})}).invoke(main, list(args), catch_exceptions=False)


def test_init_creates_and_reports_the_schema(tmp_path):
    result = scrm("init", env={"SCRM_DATABASE_URL": f"sqlite:///{tmp_path / 'new.db'}"})
    assert result.exit_code == 0
    from alembic.script import ScriptDirectory

    from bot.core.db import MIGRATIONS_DIR

    head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
    assert f"schema revision {head}" in result.output
    assert (tmp_path / "new.db").exists()


def test_config_show_masks_secrets(config_file, overrides):
    result = scrm("--config", str(config_file), "config", "show")
    assert result.exit_code == 0
    assert overrides["wecom"]["secret"] not in result.output
    assert overrides["wecom"]["token"] not in result.output or len(overrides["wecom"]["token"]) < 4
    assert '"secret": "***"' in result.output


def test_bad_config_is_a_clear_error(tmp_path):
    result = scrm("init", env={"SCRM_APP_TIMEZONE": "Atlantis/Capital",
                               "SCRM_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"})
    assert result.exit_code == 1
    assert "configuration error" in result.output and "app.timezone" in result.output


def test_inbox_list_show_retry_replay(config_file, callbacks, processor):
    callbacks.post(contact_event())
    callbacks.post({"ToUserName": "c", "CreateTime": 7, "MsgType": "event", "Event": "some_future_event"})
    listing = scrm("--config", str(config_file), "inbox", "list")
    assert listing.exit_code == 0
    lines = listing.output.splitlines()
    assert re.search(r"^2\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\s+event/some_future_event\s+pending", lines[2])
    assert re.search(r"^1\s+.*event/change_external_contact/add_external_contact\s+pending", lines[3])

    shown = scrm("--config", str(config_file), "inbox", "show", "2")
    assert "some_future_event" in shown.output and "status:      pending" in shown.output

    # The configured api_base_url points nowhere, so the add handler fails: the operator sees why.
    processor.run_once()
    failed = scrm("--config", str(config_file), "inbox", "list", "--status", "failed")
    assert "add_external_contact" in failed.output and "ConnectionError" in failed.output

    retried = scrm("--config", str(config_file), "inbox", "retry", "1")
    assert retried.exit_code == 1 and "inbox event 1: failed" in retried.stderr  # it failed again

    replayed = scrm("--config", str(config_file), "inbox", "replay", "2")
    assert replayed.exit_code == 0 and "inbox event 2: unhandled" in replayed.output

    missing = scrm("--config", str(config_file), "inbox", "retry", "99")
    assert missing.exit_code == 1 and "no inbox event 99" in missing.output


def test_demo_runs_end_to_end_and_reports(tmp_path):
    db = tmp_path / "demo.db"
    result = scrm("demo", "--no-serve", "--no-progress", "--customers", "60", "--events", "40",
                  "--database", str(db))
    assert result.exit_code == 0, result.output
    out = result.output
    assert "callback URL verification (as the admin console does it): ok" in out
    assert "seeded 20 staff, 60 customers" in out
    assert re.search(r"44 callbacks delivered \(4 of them WeCom-style re-sends\), 44 answered 200", out)
    total = re.search(r"^total\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$", out, re.M)
    assert total, out
    delivered, stored, dups, handled, unhandled, failed, waiting = map(int, total.groups())
    assert (delivered, stored, dups) == (44, 40, 4)
    assert handled + unhandled == 40 and failed == 0 and waiting == 0 and handled > 0
    assert "externalcontact/get" in out
    assert unhandled == 0  # every event family the demo sends now has a handler
    assert re.search(r"new customer via live_0618\s+tags here \['渠道/直播间'\], in WeCom \['直播间'\]; welcome: ", out)
    assert re.search(r"6 questions in one go\s+5 replies sent, 1 not sent: kf window full", out)
    assert re.search(r"kf「退订」\s+opted out: True", out)
    assert "second poll 0" in out
    assert re.search(r"broadcast preview \+ plan\s+audience \d+: \d+ to send, \d+ held out", out)
    planned = re.search(r"(\d+) to send, .*the preview expected ≈(\d+) to send", out)
    assert planned and abs(int(planned.group(1)) - int(planned.group(2))) <= 3  # the preview told the truth
    assert re.search(r"coupon redeemed twice\s+\S+ .*first → redeemed; second → refused, already redeemed", out)
    assert re.search(r"tier change → actions\s+.* (mid|low) → high: .*owner told: 升级提醒", out)
    assert re.search(r"^operator console http://127\.0\.0\.1:\d+/console/ — sign in as demo / \S{16}$", out, re.M)
