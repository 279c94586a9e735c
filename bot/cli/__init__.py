"""``scrm``: one click group per domain, mounted here."""

from __future__ import annotations

import click

from bot.cli.campaigns import broadcast_group, coupons_group
from bot.cli.channels import channels_group
from bot.cli.context import CliContext
from bot.cli.data import backup_cmd, forget_cmd, restore_cmd
from bot.cli.demo import demo
from bot.cli.groups import groups_group
from bot.cli.inbox import inbox
from bot.cli.predict import predict_group
from bot.cli.service import config_group, holidays_cmd, init, jobs_cmd, sandbox, scheduler_cmd, serve, worker
from bot.cli.sync import sync_group, tags_group
from bot.cli.tiers import customer_group, export_group, import_customers_cmd, import_orders_cmd, retier_cmd
from bot.cli.tokens import token_group
from bot.cli.transfer import transfer_group
from bot.cli.users import user_group

# Long-running commands log at INFO like the web app; the others print their result and log only
# warnings (on stderr), unless --verbose or app.log_level says otherwise.
SERVICES = ("serve", "worker", "scheduler", "sandbox")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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


main.add_command(init)
main.add_command(serve)
main.add_command(sandbox)
main.add_command(demo)
main.add_command(inbox)
main.add_command(worker)
main.add_command(config_group, "config")
main.add_command(import_orders_cmd)
main.add_command(import_customers_cmd)
main.add_command(retier_cmd)
main.add_command(predict_group)
main.add_command(customer_group)
main.add_command(export_group)
main.add_command(token_group)
main.add_command(user_group)
main.add_command(sync_group)
main.add_command(tags_group)
main.add_command(scheduler_cmd)
main.add_command(jobs_cmd)
main.add_command(holidays_cmd)
main.add_command(broadcast_group)
main.add_command(coupons_group)
main.add_command(backup_cmd)
main.add_command(restore_cmd)
customer_group.add_command(forget_cmd)
main.add_command(channels_group)
main.add_command(transfer_group)
main.add_command(groups_group)
