"""``scrm`` as a good Unix tool: help on every command, exit status that tells failure, local times
that name their zone, no log lines in the output by default."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from zoneinfo import ZoneInfo

import click
import pytest
from click.testing import CliRunner
from sqlalchemy import select

from bot.cli import main
from bot.cli.times import local_time
from bot.models import ApiToken, InboxEvent

ZONE = "America/New_York"  # not the default zone, nor UTC


def scrm(env: dict[str, str], *args: str):
    return CliRunner(env={"SCRM_CONFIG": None, **env}).invoke(main, list(args), catch_exceptions=False)


def commands(command: click.Command, path: str = "scrm") -> Iterator[tuple[str, click.Command]]:
    yield path, command
    if isinstance(command, click.Group):
        ctx = click.Context(command)
        for name in command.list_commands(ctx):
            yield from commands(command.get_command(ctx, name), f"{path} {name}")


def test_every_command_and_option_has_help():
    missing = [path for path, command in commands(main) if not (command.help or command.short_help)]
    missing += [f"{path} {param.opts[0]}" for path, command in commands(main) for param in command.params
                if isinstance(param, click.Option) and not param.help]
    assert missing == []
    assert len(list(commands(main))) > 30  # the walk reached the subcommands


@pytest.fixture
def root_level() -> Iterator[None]:
    """Commands set the root logger's level; give the next test the level it had."""
    level = logging.getLogger().level
    yield
    logging.getLogger().setLevel(level)


def test_revoking_a_revoked_token_says_so_and_fails(cli_env, root_level):
    assert scrm(cli_env, "token", "create", "shop").exit_code == 0
    assert scrm(cli_env, "token", "revoke", "shop").exit_code == 0
    again = scrm(cli_env, "token", "revoke", "shop")
    assert again.exit_code == 1 and "token 'shop' was already revoked at" in again.stderr


def test_times_are_local_and_name_their_zone(cli_env, db, callbacks, root_level):
    env = {**cli_env, "SCRM_APP_TIMEZONE": ZONE}
    scrm(env, "token", "create", "shop")
    callbacks.post({"ToUserName": "c", "CreateTime": 7, "MsgType": "event", "Event": "some_future_event"})
    with db.sessions() as session:
        created_at = session.scalar(select(ApiToken.created_at))
        received_at = session.scalar(select(InboxEvent.received_at))
    tokens = scrm(env, "token", "list").stdout
    assert f"created ({ZONE})" in tokens and local_time(created_at, ZoneInfo(ZONE), zone=False) in tokens
    shown = scrm(env, "inbox", "show", "1").stdout
    assert f"received_at: {local_time(received_at, ZoneInfo(ZONE), seconds=True)}" in shown
    assert shown.count(ZONE) == 1 and "next_try:    -" in shown
    assert f"received_at ({ZONE})" in scrm(env, "inbox", "list").stdout


def test_commands_log_warnings_only_unless_told(cli_env, callbacks, caplog, root_level):
    """Replaying an event without a handler logs at INFO: not by default, but with --verbose."""
    callbacks.post({"ToUserName": "c", "CreateTime": 7, "MsgType": "event", "Event": "some_future_event"})
    caplog.clear()
    quiet = scrm(cli_env, "inbox", "replay", "1")
    assert quiet.exit_code == 0 and quiet.stderr == ""
    assert not [r for r in caplog.records if r.levelno < logging.WARNING]
    assert logging.getLogger().level == logging.WARNING
    scrm(cli_env, "--verbose", "inbox", "replay", "1")
    assert any("has no handler" in r.getMessage() for r in caplog.records)
    scrm({**cli_env, "SCRM_APP_LOG_LEVEL": "DEBUG"}, "inbox", "replay", "1")
    assert logging.getLogger().level == logging.DEBUG  # a configured level is kept
