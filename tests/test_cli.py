"""The ``scrm`` command line: init, config, inbox list/show/retry/replay, and the demo."""

from __future__ import annotations

import re
import shlex
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


@pytest.mark.parametrize("command", [["inbox", "list"], ["customer", "show", "1"], ["tags", "check"], ["retier"],
                                     ["broadcast", "report", "x"], ["token", "list"]])
def test_commands_other_than_init_refuse_a_missing_database(tmp_path, command):
    url = f"sqlite:///{tmp_path / 'typo' / 'scrm.db'}"
    result = scrm(*command, env={"SCRM_DATABASE_URL": url})
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: no database at {tmp_path / 'typo' / 'scrm.db'} (database.url {url})")
    assert "run `scrm init`" in result.output
    assert not (tmp_path / "typo").exists()  # nothing created on the way


def test_init_creates_the_missing_directory_and_then_commands_work(tmp_path):
    env = {"SCRM_DATABASE_URL": f"sqlite:///{tmp_path / 'new' / 'scrm.db'}"}
    assert scrm("init", env=env).exit_code == 0
    listing = scrm("inbox", "list", env=env)
    assert listing.exit_code == 0 and listing.output == "no inbox events\n"


def test_a_database_without_the_schema_is_not_used(tmp_path):
    (tmp_path / "empty.db").touch()
    result = scrm("inbox", "list", env={"SCRM_DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}"})
    assert result.exit_code == 1 and "no scrm schema" in result.output and "run `scrm init`" in result.output


@pytest.mark.parametrize("case", ["through a file", "not a database", "a directory", "unreachable postgresql"])
@pytest.mark.parametrize("command", [["init"], ["inbox", "list"]])
def test_an_unusable_database_is_one_line_naming_the_setting(tmp_path, case, command):
    (tmp_path / "notes.txt").write_text("not a database, just notes\n" * 200, encoding="utf-8")
    url, cause = {
        "through a file": (f"sqlite:///{tmp_path / 'notes.txt' / 'scrm.db'}", "notes.txt is a file, not a directory"),
        "not a database": (f"sqlite:///{tmp_path / 'notes.txt'}", "notes.txt is not a SQLite database"),
        "a directory": (f"sqlite:///{tmp_path}", f"{tmp_path} is a directory"),
        # port 1 on loopback: refused at once, and no shared server is touched
        "unreachable postgresql": ("postgresql://scrm:hunter2@127.0.0.1:1/scrm", "cannot connect: "),
    }[case]
    result = scrm(*command, env={"SCRM_DATABASE_URL": url})
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: database.url ") and cause in lines[0]
    assert "hunter2" not in result.output
    assert (tmp_path / "notes.txt").read_text(encoding="utf-8").startswith("not a database")


def test_demo_refuses_a_database_path_through_a_file(tmp_path):
    (tmp_path / "notes.txt").write_text("notes", encoding="utf-8")
    result = scrm("demo", "--no-serve", "--database", str(tmp_path / "notes.txt" / "demo.db"))
    assert result.exit_code == 1
    notes = tmp_path / "notes.txt"
    assert result.output == f"Error: --database {notes / 'demo.db'}: {notes} is a file, not a directory\n"


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
    assert re.search(r"channel report 直播间 \(live_0618\)\s+\d+ adds \(12 just now by QR scan\)", out), out
    assert re.search(r"hand-over: \S+'s (\d+) customers .* transfer_customer calls; after 24 h: \d+ taken over, 1 "
                     r"refused \(客户拒绝 \(customer_refused\)\); tiers unchanged: True", out), out
    assert re.search(r"broadcast preview \+ plan\s+sent 14 days and an hour ago .*: audience \d+: \d+ to send, "
                     r"\d+ held out \(10% per tier\)", out)
    planned = re.search(r"(\d+) to send, .*the preview expected ≈(\d+) to send", out)
    assert planned and abs(int(planned.group(1)) - int(planned.group(2))) <= 3  # the preview told the truth
    assert re.search(r"coupon redeemed twice\s+\S+ .*first → redeemed; second → refused, already redeemed", out)
    upgrade = re.search(r"tier change → actions\s+\S+ \(id (\d+)\) was (mid|low) .* posted to /api/v1/orders; "
                        r"the re-tier moved \d+ customers' value tier in all: \S+ (mid|low) → high \(paid .* owner "
                        r"told: 升级提醒", out)
    assert upgrade, out
    # `scrm demo` points at the staff sidebar, signed in through the sandbox's OAuth2 page
    assert re.search(r"staff sidebar \(聊天工具栏\) — open in a browser, sign in as \S+ on the sandbox's page:\n"
                     r"  http://127\.0\.0\.1:\d+/sidebar/\?sandbox_contact=\S+", out)
    assert re.search(r"^operator console http://127\.0\.0\.1:\d+/console/ — sign in as demo / \S{16}$", out, re.M)
    effect = re.search(r"effect report\s+simulated: .*: (\d+) orders posted to /api/v1/orders → ordered within 14 "
                       r"days: sent (\d+) of (\d+) \([\d.]+%\), held out (\d+) of (\d+) \([\d.]+%\); lift "
                       r"(\S+ pts \(95% CI \S+ … \S+\))", out)
    assert effect and int(effect.group(1)) > 0, out

    # The closing hints carry the demo's database, and each shows the demo's data as printed.
    hints = [shlex.split(line) for line in out.splitlines() if line.startswith("  SCRM_DATABASE_URL=")]
    assert [h[2:4] for h in hints] == [["inbox", "list"], ["customer", "show"], ["broadcast", "report"],
                                       ["tags", "check"], ["groups", "show"]]
    runs = {}
    for setting, program, *args in hints:
        name, _, url = setting.partition("=")
        assert (name, url, program) == ("SCRM_DATABASE_URL", f"sqlite:///{db}", "scrm")
        runs[args[0]] = scrm(*args, env={name: url})
        assert runs[args[0]].exit_code == 0, runs[args[0]].output
    assert re.search(r"^\d+\s+\S+ \S+\s+event/\S+\s+handled", runs["inbox"].output, re.M)
    assert hints[1][4] == upgrade.group(1)
    assert "value tier: high [high]" in runs["customer"].output
    report = runs["broadcast"].output
    ordered, sent, held_ordered, held = effect.group(2, 3, 4, 5)
    assert re.search(rf"^sent\s+{sent}\s+{ordered}\s", report, re.M), report
    assert re.search(rf"^held out\s+{held}\s+{held_ordered}\s", report, re.M), report
    assert f"lift in share who ordered: {effect.group(6)}" in report
    assert runs["tags"].exit_code == 0
    assert re.search(r"group 小满咖啡会员群\s+\d+ members, \d+ known customers: 重要价值 \d+", out), out
    assert re.search(r"小满咖啡会员群 welcome \(group_welcome/default.important_value.j2\)\s+尊敬的 %NICKNAME%", out)
    assert re.search(r"broadcast to both groups\s+2 group message\(s\) planned", out)
    assert "known customers" in runs["groups"].output and "群活码 https://" in runs["groups"].output


def test_the_demo_upgrade_buys_just_past_the_top_rule():
    from bot.demo.campaigns import orders_to_reach
    from segments.policy import ValueRule

    high = ValueRule("high", amount_gt_fen=100000, orders_gt=5, activity_in=("high",))
    assert orders_to_reach(high, orders=3, paid_fen=124920) == (3, 99)  # an ordinary order is enough
    count, yuan = orders_to_reach(high, orders=0, paid_fen=0)
    assert count == 6 and count * yuan * 100 > 100000 and (count * (yuan - 1)) * 100 <= 100000
    assert orders_to_reach(high, orders=9, paid_fen=200000) == (1, 99)


def test_scrm_starts_without_the_heavy_libraries():
    """`scrm --help` took about 2 s: every command module imported SQLAlchemy, Flask, Alembic and
    friends at start. Each command now imports what it needs when it runs."""
    import subprocess
    import sys

    heavy = ("sqlalchemy", "flask", "alembic", "apscheduler", "wechatpy", "pandas", "numpy", "jinja2", "tqdm")
    code = ("import sys, bot.cli; from click.testing import CliRunner; "
            "assert CliRunner().invoke(bot.cli.main, ['--help']).exit_code == 0; "
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[1]).stdout.strip()
    assert loaded == "[]"


def test_inbox_status_choices_are_the_models():
    from bot.cli.inbox import STATUSES
    from bot.cli.tiers import ENCODINGS
    from bot.models import INBOX_STATUSES
    from segments.imports import ENCODINGS as IMPORT_ENCODINGS

    assert STATUSES == INBOX_STATUSES and ENCODINGS == IMPORT_ENCODINGS
    from bot.cli.users import OPERATOR_ROLES
    from bot.models import OPERATOR_ROLES as MODEL_ROLES

    assert OPERATOR_ROLES == MODEL_ROLES
    from bot.cli import predict as cli_predict
    from bot.core.config import PredictionsSettings
    from segments import predict

    assert cli_predict.DEFAULT_HOLDOUT_DAYS == predict.DEFAULT_HOLDOUT_DAYS
    defaults = PredictionsSettings()
    assert (defaults.horizon_days, defaults.discount_rate) == (predict.DEFAULT_HORIZON_DAYS,
                                                               predict.DEFAULT_DISCOUNT_RATE)
    assert predict.minimum_from_settings(defaults) == predict.KLAVIYO_MINIMUM


def test_a_command_loads_only_its_own_command_module():
    """`scrm retier` does not import the demo, the scheduler or the console's commands (a command's start)."""
    import subprocess
    import sys

    code = ("import sys; from click.testing import CliRunner; from bot.cli import main; "
            "r = CliRunner().invoke(main, ['retier', '--help']); assert r.exit_code == 0, r.output; "
            "print(sorted(m for m in sys.modules if m.startswith('bot.cli.')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[1]).stdout.strip()
    assert loaded == "['bot.cli.context', 'bot.cli.data', 'bot.cli.tiers']"
    listed = CliRunner(env={"SCRM_CONFIG": None}).invoke(main, ["--help"]).output
    assert all(f"  {name} " in listed for name in ("retier", "demo", "serve", "import-orders", "groups"))
    mistyped = CliRunner().invoke(main, ["retierr"]).output
    assert "No such command 'retierr'" in mistyped and "retier" in mistyped.split("No such command 'retierr'")[1]


def test_the_scrm_program_collects_no_garbage_until_its_database_is_open(tmp_path, monkeypatch):
    """`scrm` (bot.cli.run) imports its libraries with the collector off, sets their objects aside when the
    command opens its database, and collects from then on; the service commands run with it on."""
    import gc

    from bot.cli import run
    from bot.cli.context import CliContext

    seen: dict[str, bool] = {}
    opened = CliContext.db

    def db(self: CliContext, create: bool = False):
        seen["before"] = gc.isenabled()
        database = opened(self, create)
        seen["after"], seen["set_aside"] = gc.isenabled(), gc.get_freeze_count() > 0
        return database

    monkeypatch.setattr(CliContext, "db", db)
    monkeypatch.setenv("SCRM_DATABASE_URL", f"sqlite:///{tmp_path / 'scrm.db'}")
    monkeypatch.setenv("SCRM_CONFIG", "")
    try:
        with pytest.raises(SystemExit) as done:
            run(["init"])
    finally:
        gc.unfreeze()  # this test process goes on
    assert done.value.code == 0 and gc.isenabled()
    assert seen == {"before": False, "after": True, "set_aside": True}


def test_the_demo_collects_garbage_although_it_opens_its_own_database(tmp_path, monkeypatch):
    """`scrm demo` seeds, drives callbacks and serves without CliContext.db: the collector is back on first."""
    import gc

    from bot.cli import run
    from bot.core.db import DatabaseUnavailable
    from bot.demo import run as demo_run

    seen: list[bool] = []

    def start(url: str):
        seen.append(gc.isenabled())
        raise DatabaseUnavailable("stopped here by the test")

    monkeypatch.setattr(demo_run, "start", start)
    monkeypatch.setenv("SCRM_CONFIG", "")
    try:
        with pytest.raises(SystemExit) as done:
            run(["demo", "--no-serve", "--database", str(tmp_path / "demo.db")])
    finally:
        gc.unfreeze()
    assert done.value.code == 1 and seen == [True]


def test_a_database_from_a_newer_version_is_refused_in_one_line_without_alembic_at_every_start(tmp_path):
    import sqlite3
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'scrm.db'}"
    assert scrm("init", env={"SCRM_DATABASE_URL": url}).exit_code == 0
    code = ("import sys; from click.testing import CliRunner; from bot.cli import main; "
            "r = CliRunner().invoke(main, ['retier']); assert r.exit_code == 0, r.output; "
            "assert 'alembic' not in sys.modules")  # a database at the newest schema never loads Alembic
    subprocess.run([sys.executable, "-c", code], check=True, env={**__import__("os").environ,
                                                                 "SCRM_DATABASE_URL": url, "SCRM_CONFIG": ""})
    with sqlite3.connect(tmp_path / "scrm.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    result = CliRunner(env={"SCRM_CONFIG": None, "SCRM_DATABASE_URL": url}).invoke(main, ["retier"])
    assert result.exit_code == 1 and "its schema cannot be upgraded by this version" in result.output
    assert "Traceback" not in result.output


def test_a_customers_own_tuiding_is_undone_by_hand_only_when_they_asked(cli_env, db):
    """The sidebar refuses to switch back on a customer who wrote 退订 to 微信客服; `scrm customer opt-in` did."""
    from datetime import UTC, datetime

    from sqlalchemy import select

    from bot.contacts.customers import set_opted_out
    from bot.models import Customer

    with db.begin() as session:
        customer = Customer(external_userid="wmSTOP", name="止")
        session.add(customer)
        session.flush()
        set_opted_out(session, customer, True, datetime(2026, 11, 1, tzinfo=UTC), via="kf")
    refused = scrm("customer", "opt-in", "wmSTOP", env=cli_env)
    assert refused.exit_code == 1 and "sent 退订 themselves" in refused.output and "--customer-asked" in refused.output
    shown = scrm("customer", "show", "wmSTOP", env=cli_env).output
    assert "opted out of broadcasts and pushes (退订) since 2026-11-01 08:00 Asia/Shanghai, by the customer" in shown
    asked = scrm("customer", "opt-in", "wmSTOP", "--customer-asked", "--by", "zhangsan", env=cli_env)
    assert asked.exit_code == 0 and "receiving broadcasts and pushes again" in asked.output
    assert "opted out" not in scrm("customer", "show", "wmSTOP", env=cli_env).output
    with db.sessions() as session:
        assert session.scalar(select(Customer.opted_out).where(Customer.external_userid == "wmSTOP")) is False


def test_customer_opt_out_and_back_in_is_recorded_with_who_asked(cli_env, db):
    """A customer who said 退订 to a member (not to 微信客服) is switched off by hand; planning then skips them."""
    from sqlalchemy import select

    from bot.models import Customer, Interaction

    with db.begin() as session:
        session.add(Customer(external_userid="wmQUIET", name="静"))
    out = scrm("customer", "opt-out", "wmQUIET", "--by", "zhangsan", env=cli_env)
    assert out.exit_code == 0 and "opted out of broadcasts and pushes" in out.output
    again = scrm("customer", "opt-out", "wmQUIET", env=cli_env)
    assert "already so; nothing changed" in again.output
    with db.sessions() as session:
        assert session.scalar(select(Customer.opted_out).where(Customer.external_userid == "wmQUIET"))
        trail = session.scalar(select(Interaction).where(Interaction.kind == "opted_out"))
        assert (trail.staff_userid, trail.detail) == ("zhangsan", {"via": "cli"})
    back = scrm("customer", "opt-in", "wmQUIET", env=cli_env)
    assert back.exit_code == 0 and "receiving broadcasts and pushes again" in back.output
    missing = scrm("customer", "opt-out", "nobody", env=cli_env)
    assert missing.exit_code != 0 and "no customer nobody" in missing.output
