"""``scrm demo``: run the whole loop locally and show what happened."""

from __future__ import annotations

import logging
import os
import shlex
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import click

from bot.cli.context import DEMO_DATABASE, CliContext, pass_cli, render_table, resume_collector

if TYPE_CHECKING:
    from bot.demo import run as demo_run
    from bot.demo.campaigns import CampaignScenes

DEFAULT_DB = DEMO_DATABASE


@contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    """Only errors from ``name`` (and below it) while the block runs."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(max(logging.ERROR, logger.getEffectiveLevel()))
    try:
        yield
    finally:
        logger.setLevel(before)


@click.command()
@click.option("--customers", default=3000, show_default=True, type=click.IntRange(1, 1_000_000),
              help="Customers (with orders) to seed.")
@click.option("--events", default=400, show_default=True, type=click.IntRange(1, 100_000),
              help="Callbacks in the burst.")
@click.option("--retry-share", default=0.1, show_default=True, type=click.FloatRange(0, 1),
              help="Share of callbacks WeCom re-sends (they must be stored and handled once).")
@click.option("--database", "database_path", default=DEFAULT_DB, show_default=True,
              type=click.Path(dir_okay=False), help="SQLite file for the demo (recreated each run).")
@click.option("--no-serve", is_flag=True, help="Exit after the report instead of serving until Ctrl-C.")
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
@pass_cli
def demo(cli: CliContext, customers: int, events: int, retry_share: float, database_path: str,
         no_serve: bool, no_progress: bool) -> None:
    """Start a local WeCom sandbox and the bot on SQLite, seed a demo brand, drive a burst of
    encrypted callbacks through the real webhook, and print what happened."""
    from bot.core.db import DatabaseUnavailable, sqlite_path_problem
    from bot.demo import run as demo_run

    resume_collector()  # the demo opens its own database (not CliContext.db) and then serves until Ctrl-C
    path = Path(database_path).absolute()
    problem = sqlite_path_problem(path)
    if problem:
        raise click.ClickException(f"--database {database_path}: {problem}")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    progress = not no_progress
    try:
        run, _ = demo_run.start(f"sqlite:///{path}")
    except DatabaseUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    try:
        click.echo(f"sandbox WeCom at {run.sandbox.url}   bot webhook at {run.bot.url}/wecom/callback")
        check = run_verify(run)
        click.echo(f"callback URL verification (as the admin console does it): {'ok' if check['ok'] else check}")
        data, counts = demo_run.seed(run, customers, progress)
        click.echo(f"seeded {counts['staff']} staff, {counts['customers']} customers, {counts['orders']} orders "
                   f"into {path.name}")
        burst = demo_run.drive(run, demo_run.plan_burst(data, events), retry_share, progress)
        drained = demo_run.wait_for_inbox(run)
        _report(run, burst, drained, path)
        link = demo_run.sidebar_link(run)
        if link:
            click.echo(f"\nstaff sidebar (聊天工具栏) — open in a browser, sign in as {link[1]} on the sandbox's page:"
                       f"\n  {link[0]}")
        name, password = demo_run.add_console_operator(run)
        console = f"operator console {run.bot.url}/console/ — sign in as {name} / {password}"
        click.echo(f"\n{console}")
        if no_serve:
            return
        click.echo(f"\nserving — webhook {run.bot.url}/wecom/callback · health {run.bot.url}/healthz · "
                   f"sandbox control {run.sandbox.url}/_sandbox/state\n{console}\n"
                   "no scheduler runs in the demo (its figures stay as printed): a broadcast scheduled in its "
                   "console stays scheduled; `scrm serve` on your own database runs the scheduler.\nCtrl-C to stop.")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        click.echo("\nstopped")
    finally:
        run.stop()


def run_verify(run: demo_run.DemoRun) -> dict:
    import requests

    return requests.post(f"{run.sandbox.url}/_sandbox/verify_url", json={}, timeout=10).json()


def _report(run: demo_run.DemoRun, burst: dict, drained: bool, path: Path) -> None:
    from bot.demo import run as demo_run
    from bot.demo.campaigns import run_campaign_scenes
    from bot.demo.groups import run_group_scene
    from bot.demo.scenes import run_scenes

    deliveries = burst["deliveries"]
    rate = len(deliveries) / burst["elapsed"] if burst["elapsed"] else 0.0
    click.echo(f"\n{len(deliveries)} callbacks delivered ({burst['retried']} of them WeCom-style re-sends), "
               f"{burst['acked']} answered 200 in {burst['elapsed']:.2f}s = {rate:.0f} callbacks/s; "
               f"ack latency {demo_run.latency_summary(burst['latencies'])}")
    if not drained:
        click.echo("warning: the inbox did not drain within the time limit")
    click.echo("\nWhat the webhook received, stored and handled:")
    click.echo(render_table(["event", "delivered", "stored", "dup dropped", "handled", "unhandled", "failed",
                             "waiting"], demo_run.inbox_table(run, deliveries)))
    click.echo("\nWeCom API calls the bot made (recorded by the sandbox):")
    click.echo(render_table(["endpoint", "errcode", "calls"], demo_run.api_calls_table(run)))
    result, rows = demo_run.retier_table(run)
    click.echo(f"\nRe-tiered {result.customers} customers in {result.seconds:.2f}s (SQL over per-customer "
               "aggregates; `scrm customer show ID` explains one):")
    click.echo(render_table(["dimension", "value", "customers"], rows))
    click.echo("\nWhat customers got (each scene goes through WeCom's callbacks and API, in the sandbox):")
    click.echo(render_table(["scene", "what happened"], run_scenes(run, _first_staff(run))))
    click.echo("\n客户群 — groups made in WeCom, members joining and leaving through callbacks:")
    click.echo(render_table(["scene", "what happened"], run_group_scene(run)))
    click.echo("\nWhat the service sends on its own (broadcasts, coupons, tier actions, greetings):")
    scenes = run_campaign_scenes(run)
    click.echo(render_table(["scene", "what happened"], scenes.rows))
    from bot.demo.handover import run_handover_scenes

    click.echo("\nChannels and a hand-over (渠道活码, 在职继承), through the sandbox's WeCom:")
    # The hand-over scene has a customer refuse on purpose; its table reports that, so the handler's
    # warning for it would only break the table on the terminal.
    with _quiet_logger("handlers"):
        rows = run_handover_scenes(run)
    click.echo(render_table(["scene", "what happened"], rows))
    counts = demo_run.database_counts(run)
    click.echo(f"\n{path.name} now holds {counts['customers']} customers and {counts['orders']} orders. Look "
               "around (every other scrm command uses database.url, scrm.db by default, so each line names the "
               "demo's database):")
    for command in look_around_commands(path, scenes):
        click.echo(f"  {command}")


def look_around_commands(path: Path, scenes: CampaignScenes) -> list[str]:
    """Commands to copy, each carrying the demo's database (relative when it lies below the
    working directory, as a newcomer typed it)."""
    try:
        shown = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        shown = str(path)
    if shown.startswith(".."):
        shown = str(path)
    from bot.demo.groups import VIP_GROUP

    prefix = f"SCRM_DATABASE_URL={shlex.quote(f'sqlite:///{shown}')} scrm"
    commands = [f"{prefix} inbox list"]
    if scenes.upgraded_customer_id is not None:
        commands.append(f"{prefix} customer show {scenes.upgraded_customer_id}")
    commands += [f"{prefix} broadcast report {shlex.quote(scenes.broadcast)} --days {scenes.report_days}",
                 f"{prefix} tags check", f"{prefix} groups show {shlex.quote(VIP_GROUP)}"]
    return commands


def _first_staff(run: demo_run.DemoRun) -> str:
    from sqlalchemy import select

    from bot.models import Staff

    with run.app.extensions["scrm.db"].sessions() as session:
        return session.scalar(select(Staff.userid).order_by(Staff.id).limit(1)) or ""
