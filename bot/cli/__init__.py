"""``scrm``: one click group per domain, mounted here."""

from __future__ import annotations

import gc
import importlib
from typing import Any

import click

from bot.cli.context import CliContext, resume_collector

# Each command's module is imported when that command runs (or for `scrm --help`): `scrm retier` does not
# pay for the console, the scheduler or the demo (about 40 ms of a command's start).
COMMANDS = {
    "backup": "bot.cli.data:backup_cmd",
    "broadcast": "bot.cli.campaigns:broadcast_group",
    "channels": "bot.cli.channels:channels_group",
    "config": "bot.cli.service:config_group",
    "coupons": "bot.cli.campaigns:coupons_group",
    "customer": "bot.cli.tiers:customer_group",
    "demo": "bot.cli.demo:demo",
    "export": "bot.cli.tiers:export_group",
    "groups": "bot.cli.groups:groups_group",
    "holidays": "bot.cli.service:holidays_cmd",
    "import-customers": "bot.cli.tiers:import_customers_cmd",
    "import-orders": "bot.cli.tiers:import_orders_cmd",
    "inbox": "bot.cli.inbox:inbox",
    "init": "bot.cli.service:init",
    "jobs": "bot.cli.service:jobs_cmd",
    "predict": "bot.cli.predict:predict_group",
    "restore": "bot.cli.data:restore_cmd",
    "retier": "bot.cli.tiers:retier_cmd",
    "sandbox": "bot.cli.service:sandbox",
    "scheduler": "bot.cli.service:scheduler_cmd",
    "serve": "bot.cli.service:serve",
    "sync": "bot.cli.sync:sync_group",
    "tags": "bot.cli.sync:tags_group",
    "token": "bot.cli.tokens:token_group",
    "transfer": "bot.cli.transfer:transfer_group",
    "user": "bot.cli.users:user_group",
    "worker": "bot.cli.service:worker",
}


class LazyGroup(click.Group):
    """A group whose subcommands are named here and imported on first use (click's documented pattern)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def resolve_command(self, ctx: click.Context,
                        args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] not in COMMANDS and not self.commands:
            for name in COMMANDS:  # a mistyped name: click's "Did you mean …?" looks in self.commands
                self.add_command(self.get_command(ctx, name), name)  # type: ignore[arg-type]
        return super().resolve_command(ctx, args)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, name = target.split(":")
        command: click.Command = getattr(importlib.import_module(module), name)
        return command


# Long-running commands log at INFO like the web app; the others print their result and log only
# warnings (on stderr), unless --verbose or app.log_level says otherwise.
SERVICES = ("serve", "worker", "scheduler", "sandbox")


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_file", envvar="SCRM_CONFIG", type=click.Path(dir_okay=False),
              help="TOML config file (default: $SCRM_CONFIG; env vars SCRM_<SECTION>_<KEY> override it).")
@click.option("-v", "--verbose", is_flag=True,
              help="Log at INFO or finer on stderr (default: app.log_level, or when that is empty WARNING, "
                   "INFO for serve/worker/scheduler/sandbox).")
@click.pass_context
def main(ctx: click.Context, config_file: str | None, verbose: bool) -> None:
    """wecom-scrm-bot: customer tiering for WeCom."""
    # A caller may pass the clock as the context object (tests: ``CliRunner().invoke(main, args, obj=clock)``).
    clock = {"clock": ctx.obj} if callable(ctx.obj) else {}
    ctx.obj = CliContext(config_file, "INFO" if ctx.invoked_subcommand in SERVICES else "WARNING", verbose, **clock)
    ctx.call_on_close(ctx.obj.close)
    if ctx.invoked_subcommand in SERVICES:  # long-running, and the sandbox opens no database
        resume_collector()


def run(args: list[str] | None = None, **extra: Any) -> None:
    """The ``scrm`` program (``python -m bot.cli``): ``main`` with the cyclic garbage collector off while
    the command imports its libraries. SQLAlchemy and the models make some 500,000 long-lived objects,
    which the collector would walk again and again, and once more at exit (about a tenth of a small
    command's start); when the command opens its database they are set aside for good (``gc.freeze``,
    as for a server before it forks) and collection resumes (``CliContext.db``; a service at once).
    Tests call ``main``; ``args`` and ``extra`` go to it (the bench passes its clock)."""
    gc.disable()
    try:
        main(args, **extra)
    finally:
        gc.enable()
