"""``scrm transfer plan | run | status``: 在职继承 / 离职继承, nobody's customers lost when staff change."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from bot.cli.context import CliContext, pass_cli, render_table
from bot.cli.times import local_time


def _who(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--from", "handover", help="The member (userid) handing over, still at the company (在职继承)."),
        click.option("--departed", is_flag=True,
                     help="Departed members' customers and groups, as WeCom lists them (离职继承)."),
        click.option("--member", "departed_members", multiple=True,
                     help="With --departed: only this departed member; repeatable."),
        click.option("--to", "rest", multiple=True, required=True,
                     help="Member who takes over the customers no rule matched; repeat for several (in turn)."),
        click.option("--rule", "rules", multiple=True,
                     help="KEY:VALUE=USERID[,USERID…]: matching customers go to these members in turn; KEY is "
                          "rfm, value, stage or tag (e.g. 'rfm:重要价值=wang,li', 'tag:客户等级/VIP=wang'). "
                          "First match wins; repeatable."),
        click.option("--customer", "customers", multiple=True,
                     help="Only this customer (external_userid); repeatable."),
        click.option("--customers-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="Only these customers: one external_userid per line."),
        click.option("--no-groups", is_flag=True, help="With --departed: leave their groups alone."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _plan(cli: CliContext, session: Any, api: Any, handover: str | None, departed: bool,
          departed_members: tuple[str, ...], rest: tuple[str, ...], rules: tuple[str, ...],
          customers: tuple[str, ...], customers_file: Path | None, no_groups: bool) -> Any:
    from bot.contacts.transfer import parse_routes, plan_departed, plan_onjob
    from segments.policy import TierPolicy

    if bool(handover) == departed:
        raise click.UsageError("give either --from USERID (在职继承) or --departed (离职继承)")
    chosen = list(customers)
    if customers_file is not None:
        text = customers_file.read_text(encoding="utf-8-sig", errors="replace")
        chosen += [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    bad = [c for c in chosen if len(c) > 128 or not c.isascii()]
    if bad:
        raise click.BadParameter(f"not an external_userid: {bad[0][:40]!r}")
    policy = TierPolicy.of(cli.settings())
    routes = parse_routes(session, rules, policy.value_tiers, policy.stages)
    if handover:
        return plan_onjob(session, handover, list(rest), routes, chosen or None)
    if chosen:
        raise click.UsageError("--customer / --customers-file go with --from; --departed takes all WeCom lists")
    return plan_departed(session, api, list(rest), routes, list(departed_members) or None, not no_groups)


def _api(cli: CliContext) -> Any:
    from bot.cli.sync import _clients

    return _clients(cli).contact.transfer


def _print_plan(plan: Any, details: bool) -> None:
    if not plan.rows and not plan.groups:
        click.echo("nothing to hand over")
    if plan.rows:
        click.echo(render_table(["from", "to", "why", "customers"], [list(row) for row in plan.summary()]))
    if details and plan.rows:
        click.echo("")
        click.echo(render_table(["customer", "from", "to", "why"],
                                [[r.external_userid, r.handover_userid, r.takeover_userid, r.why] for r in plan.rows]))
    if plan.groups:
        click.echo(f"groups: {len(plan.groups)} to new owners (" + ", ".join(
            f"{owner} {n}" for owner, n in sorted(_count(g.takeover_userid for g in plan.groups).items())) + ")")
    for external_userid, why in plan.skipped:
        click.echo(f"skipped {external_userid}: {why}")
    if plan.unknown_members:
        click.echo(f"note: {', '.join(plan.unknown_members)}: no customer here is followed by them — check the "
                   "userid: WeCom refuses an unknown member (60111) for every customer handed to them")


def _count(values: Any) -> dict[str, int]:
    from collections import Counter

    return dict(Counter(values))


@click.group("transfer")
def transfer_group() -> None:
    """在职/离职继承: hand a member's customers (and a departed member's groups) to others."""


@transfer_group.command("plan")
@_who
@click.option("--details", is_flag=True, help="List every customer, not only the totals.")
@pass_cli
def plan_cmd(cli: CliContext, details: bool, **who: Any) -> None:
    """Dry run: who goes where and why. Changes nothing here or in WeCom."""
    from bot.contacts.transfer import TransferError

    api = _api(cli) if who["departed"] else None
    try:
        with cli.db().sessions() as session:
            plan = _plan(cli, session, api, **who)
    except TransferError as exc:
        raise click.ClickException(str(exc)) from None
    _print_plan(plan, details)
    click.echo(f"plan only: {len(plan.rows)} customers, {len(plan.groups)} groups (scrm transfer run … to do it)")


@transfer_group.command("run")
@_who
@click.option("--message", help="Sent to each customer when an on-job hand-over succeeds (≤ 200 characters).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@pass_cli
def run_cmd(cli: CliContext, message: str | None, yes: bool, no_progress: bool, **who: Any) -> None:
    """Hand over (transfer_customer, ≤ 100 per call). Each customer has 24 hours to refuse:
    `scrm transfer status --poll` records the outcomes."""
    from tqdm import tqdm

    from bot.contacts.transfer import TransferError, run_plan

    if message is not None and not 1 <= len(message) <= 200:
        raise click.BadParameter("--message is 1 to 200 characters")
    if message and who["departed"]:
        raise click.UsageError("--message is for on-job hand-overs (WeCom sends none for departed members)")
    api = _api(cli)
    try:
        with cli.db().sessions() as session:
            plan = _plan(cli, session, api, **who)
            _print_plan(plan, details=False)
            if not plan.rows and not plan.groups:
                return
            if not yes:
                click.confirm(f"hand over {len(plan.rows)} customers and {len(plan.groups)} groups?", abort=True)
            with tqdm(total=len(plan.rows), unit="customer", desc="handing over", disable=no_progress) as bar:
                result = run_plan(session, api, plan, cli.now(), message, progress=bar.update,
                                  tz=cli.settings().tz)
    except TransferError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"batch {result.batch}: {result.calls} calls, {result.started} started (the customer has 24 h to "
               f"refuse), {result.failed} refused by WeCom, {result.unknown} without an answer"
               + (f", {result.under_way} already being handed over in WeCom" if result.under_way else "")
               + (f"; groups moved {result.groups_moved}, failed {result.groups_failed}, without an answer "
                  f"{result.groups_unknown}" if plan.groups else "")
               + (f", moved or being moved before this run (WeCom 90508 / 90507) {result.groups_already}"
                  if result.groups_already else ""))
    for reason, n in result.errors.most_common():
        click.echo(f"  {n} × {reason}")


@transfer_group.command("status")
@click.option("--batch", "batches", multiple=True, help="Only this batch; repeatable (default: the latest 10).")
@click.option("--poll", is_flag=True, help="Ask WeCom (transfer_result) for the outcome of waiting customers first.")
@click.option("--wait", type=click.IntRange(0, 7 * 86400), default=0,
              help="With --poll: keep polling until nothing waits or this many seconds passed.")
@click.option("--interval", type=click.IntRange(10, 86400), default=600, show_default=True,
              help="Seconds between polls with --wait.")
@pass_cli
def status_cmd(cli: CliContext, batches: tuple[str, ...], poll: bool, wait: int, interval: int) -> None:
    """Each batch: customers per outcome, and every refusal or failure with its reason."""
    import time

    from sqlalchemy import func, select

    from bot.contacts.transfer import batch_status, poll_results
    from bot.models import Transfer

    deadline = time.monotonic() + wait
    while poll:
        api = _api(cli)
        with cli.db().begin() as session:
            changed = poll_results(session, api, cli.now(), batches[0] if len(batches) == 1 else None)
            waiting = session.scalar(select(func.count()).select_from(Transfer).where(Transfer.status == "waiting"))
        click.echo("polled: " + (", ".join(f"{k} {v}" for k, v in sorted(changed.items())) or "no change")
                   + f"; still waiting {waiting}")
        if not waiting or time.monotonic() + interval > deadline:
            break
        time.sleep(interval)
    tz = cli.settings().tz
    with cli.db().sessions() as session:
        rows = batch_status(session, batches or None)
    if not rows:
        click.echo("no hand-overs yet")
        return
    order = ("planned", "waiting", "succeeded", "refused", "takeover_full", "no_record", "failed")
    click.echo(render_table(["batch", "kind", f"started ({tz.key})", *order, "groups"],
                            [[r.batch, r.kind, local_time(r.started_at, tz, zone=False),
                              *(r.counts.get(s, 0) for s in order),
                              ", ".join(f"{k} {v}" for k, v in sorted(r.groups.items())) or "-"] for r in rows]))
    for r in rows:
        for external_userid, handover, takeover, reason in r.problems:
            click.echo(f"{r.batch}: {external_userid} {handover} → {takeover}: {reason}")
