"""``scrm channels create | list | update | delete | sync | report``: 渠道活码 (WeCom 「联系我」 codes)
with the tags, starting stage and welcome applied to the customers each brings, and what each brought."""

from __future__ import annotations

import json
from datetime import date, datetime
from typing import Any

import click

from bot.cli.context import CliContext, pass_cli, render_table
from bot.cli.times import local_iso, local_time, zoned


def _contact_api(cli: CliContext) -> Any:
    from bot.cli.sync import _clients

    return _clients(cli).contact.contact_way


def _stages(cli: CliContext) -> tuple[str, ...]:
    from segments.policy import STAGE_PATHS

    return STAGE_PATHS[cli.settings().tiers.stage_path]


def _fen(text: str | None) -> int | None:
    from bot.contacts.channels import ChannelError, cost_fen

    if text is None:
        return None
    try:
        return cost_fen(text)
    except ChannelError as exc:
        raise click.BadParameter(str(exc)) from None


def _when(cli: CliContext, text: str | None) -> datetime | None:
    """``YYYY-MM-DD`` (end of that day) or ``YYYY-MM-DD HH:MM``, in app.timezone."""
    if text is None:
        return None
    tz = cli.settings().tz
    for fmt, end_of_day in (("%Y-%m-%d %H:%M", False), ("%Y-%m-%d", True)):
        try:
            parsed = datetime.strptime(text.strip(), fmt)
        except ValueError:
            continue
        if end_of_day:
            parsed = parsed.replace(hour=23, minute=59, second=59)
        return parsed.replace(tzinfo=tz)
    raise click.BadParameter(f"{text!r}: use YYYY-MM-DD or 'YYYY-MM-DD HH:MM' ({tz.key})")


def _warn_template(cli: CliContext, name: str) -> None:
    from bot.outbox.messages import MessageTemplates

    if not MessageTemplates.from_settings(cli.settings()).has("welcome", name):
        click.echo(f"note: no welcome/{name}.j2 template yet: the welcome falls back to welcome/default", err=True)


def _yuan(fen: int | None) -> str:
    return "-" if fen is None else f"{fen / 100:,.2f}"


@click.group("channels")
def channels_group() -> None:
    """渠道活码: channel codes (WeCom 「联系我」), their rules and their report."""


@channels_group.command("create")
@click.argument("name")
@click.option("--state", "state", required=True, help="The channel key WeCom echoes on each add (≤ 30 characters).")
@click.option("--member", "members", multiple=True, required=True,
              help="Member (userid) who receives the adds; repeat for several (WeCom takes turns).")
@click.option("--tag", "tags", multiple=True, help="Tag put on each customer it brings (\"组/标签\"); repeatable.")
@click.option("--stage", help="Lifecycle stage a new customer starts at (default: the path's first).")
@click.option("--welcome", default="default", show_default=True,
              help="Welcome template: templates/messages/welcome/<name>[.<tier>].j2.")
@click.option("--verify/--skip-verify", "verify", default=False,
              help="Require the member to confirm each add (default: customers add without confirmation).")
@click.option("--expires", help="Delete the code in WeCom after this (YYYY-MM-DD or 'YYYY-MM-DD HH:MM', local).")
@click.option("--cost", help="What the channel cost, in 元 (for cost per high-tier customer).")
@pass_cli
def create_cmd(cli: CliContext, name: str, state: str, members: tuple[str, ...], tags: tuple[str, ...],
               stage: str | None, welcome: str, verify: bool, expires: str | None, cost: str | None) -> None:
    """Create a channel and its QR code in WeCom (add_contact_way); prints the code's URL."""
    from bot.contacts.channels import ChannelError, ChannelSpec, create_channel, seed_from_config

    spec = ChannelSpec(state=state, name=name, members=list(members), tags=list(tags), stage=stage, welcome=welcome,
                       skip_verify=not verify, expires_at=_when(cli, expires), cost_fen=_fen(cost))
    api = _contact_api(cli)
    config_id = qr_code = None
    try:
        with cli.db().begin() as session:
            seed_from_config(session, cli.settings())
            row = create_channel(session, api, spec, _stages(cli), cli.now())
            config_id, qr_code = row.config_id, row.qr_code
    except ChannelError as exc:
        raise click.ClickException(str(exc)) from None
    except Exception:
        if config_id:  # WeCom made the code but it was not saved here: do not leave it orphaned
            api.del_contact_way(config_id)
        raise
    _warn_template(cli, welcome)
    click.echo(f"channel {state} ({name}) created: config_id {config_id}")
    click.echo(f"QR code: {qr_code or '-'}")


@channels_group.command("list")
@click.option("--json", "as_json", is_flag=True,
              help="JSON instead of a table (expires_at: ISO 8601 in app.timezone, with its offset).")
@click.option("--all", "show_all", is_flag=True, help="Include deleted channels.")
@pass_cli
def list_cmd(cli: CliContext, as_json: bool, show_all: bool) -> None:
    """Channels with their members, rules, expiry and QR code."""
    from sqlalchemy import select

    from bot.contacts.channels import seed_from_config
    from bot.models import Channel

    tz = cli.settings().tz
    with cli.db().begin() as session:
        seed_from_config(session, cli.settings())
        rows = list(session.scalars(select(Channel).order_by(Channel.state)))
    rows = [r for r in rows if show_all or r.status != "deleted"]
    if as_json:
        click.echo(json.dumps([{"state": r.state, "name": r.name, "status": r.status, "members": r.members,
                                "tags": r.tags, "stage": r.stage, "welcome": r.welcome, "skip_verify": r.skip_verify,
                                "expires_at": local_iso(r.expires_at, tz),
                                "config_id": r.config_id, "qr_code": r.qr_code, "cost_fen": r.cost_fen,
                                "source": r.source} for r in rows], ensure_ascii=False, indent=2))
        return
    if not rows:
        click.echo("no channels yet: scrm channels create NAME --state KEY --member USERID")
        return
    click.echo(render_table(
        ["state", "name", "status", "members", "tags", "stage", "welcome", zoned("expires", tz), "cost 元", "QR code"],
        [[r.state, r.name, r.status + ("" if r.config_id or r.status != "active" else " (no code)"),
          ",".join(r.members or []) or "-", "、".join(r.tags or []) or "-", r.stage or "-", r.welcome,
          local_time(r.expires_at, tz, zone=False), _yuan(r.cost_fen), r.qr_code or "-"] for r in rows]))


@channels_group.command("update")
@click.argument("state")
@click.option("--name", help="New name (also the code's remark in WeCom).")
@click.option("--member", "members", multiple=True, help="Replace the members (repeat for several).")
@click.option("--tag", "tags", multiple=True, help="Replace the tags (repeatable).")
@click.option("--no-tags", is_flag=True, help="Remove every tag.")
@click.option("--stage", help="New starting stage.")
@click.option("--welcome", help="New welcome template name.")
@click.option("--verify/--skip-verify", "verify", default=None, help="Require the member's confirmation, or not.")
@click.option("--expires", help="New expiry (YYYY-MM-DD or 'YYYY-MM-DD HH:MM').")
@click.option("--no-expiry", is_flag=True, help="Remove the expiry.")
@click.option("--cost", help="New cost in 元.")
@pass_cli
def update_cmd(cli: CliContext, state: str, name: str | None, members: tuple[str, ...], tags: tuple[str, ...],
               no_tags: bool, stage: str | None, welcome: str | None, verify: bool | None, expires: str | None,
               no_expiry: bool, cost: str | None) -> None:
    """Change a channel: members, name and skip-verify go to WeCom (update_contact_way)."""
    from bot.contacts.channels import ChannelError, seed_from_config, update_channel

    changes: dict[str, Any] = {}
    for key, value in (("name", name), ("stage", stage), ("welcome", welcome)):
        if value is not None:
            changes[key] = value
    if members:
        changes["members"] = list(members)
    if tags or no_tags:
        changes["tags"] = [] if no_tags else list(tags)
    if verify is not None:
        changes["skip_verify"] = not verify
    if expires or no_expiry:
        changes["expires_at"] = None if no_expiry else _when(cli, expires)
    if cost is not None:
        changes["cost_fen"] = _fen(cost)
    if not changes:
        raise click.UsageError("nothing to change: give at least one option")
    api = _contact_api(cli) if {"members", "name", "skip_verify"} & set(changes) else None
    try:
        with cli.db().begin() as session:
            seed_from_config(session, cli.settings())
            update_channel(session, api, state, changes, _stages(cli), cli.now())
    except ChannelError as exc:
        raise click.ClickException(str(exc)) from None
    if welcome:
        _warn_template(cli, welcome)
    click.echo(f"channel {state} updated: {', '.join(sorted(changes))}")


@channels_group.command("delete")
@click.argument("state")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_cli
def delete_cmd(cli: CliContext, state: str, yes: bool) -> None:
    """Delete the code in WeCom (del_contact_way); its customers keep their history and report."""
    from bot.contacts.channels import ChannelError, delete_channel

    if not yes:
        click.confirm(f"delete channel {state} and its QR code in WeCom?", abort=True)
    api = _contact_api(cli)
    try:
        with cli.db().begin() as session:
            delete_channel(session, api, state)
    except ChannelError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"channel {state} deleted")


@channels_group.command("sync")
@pass_cli
def sync_cmd(cli: CliContext) -> None:
    """Reconcile with WeCom (list_contact_way + get_contact_way); delete expired codes."""
    from dataclasses import asdict

    from bot.contacts.channels import ChannelError, seed_from_config, sync_channels

    api = _contact_api(cli)
    try:
        with cli.db().begin() as session:
            seeded = seed_from_config(session, cli.settings())
            result = sync_channels(session, api, cli.now())
    except ChannelError as exc:
        raise click.ClickException(str(exc)) from None
    parts = [f"{k.replace('_', ' ')} {v}" for k, v in asdict(result).items()]
    click.echo(", ".join(parts) + (f", seeded from config {seeded}" if seeded else ""))


@channels_group.command("report")
@click.option("--since", type=click.DateTime(["%Y-%m-%d"]), help="Customers added on or after this day (local).")
@click.option("--until", type=click.DateTime(["%Y-%m-%d"]), help="Customers added on or before this day (local).")
@click.option("--channel", "states", multiple=True, help="Only this channel (state); repeatable.")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of tables.")
@pass_cli
def report_cmd(cli: CliContext, since: datetime | None, until: datetime | None, states: tuple[str, ...],
               as_json: bool) -> None:
    """Per channel: adds per day, deletions, tier mix (value tier, RFM segment), orders and revenue
    of the customers it brought, and cost per high-tier customer."""
    from bot.contacts.channels import seed_from_config
    from segments.rfm import SEGMENT_NAMES

    first: date | None = since.date() if since else None
    last: date | None = until.date() if until else None
    if first and last and first > last:
        raise click.BadParameter("--since is after --until")
    with cli.db().begin() as session:
        seed_from_config(session, cli.settings())
        from bot.contacts.channels import channel_report

        reports = channel_report(session, cli.settings(), cli.now(), first, last, list(states) or None)
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in reports], ensure_ascii=False, indent=2))
        return
    if not reports:
        click.echo("no channels and no adds through a channel yet")
        return
    click.echo(render_table(
        ["channel", "name", "adds", "customers", "deleted", "高/中/低价值", "orders", "revenue 元", "cost 元",
         "cost per 高价值 元"],
        [[r.state, r.name, r.adds, r.customers, r.deletions,
          f"{r.value_tiers.get('high', 0)}/{r.value_tiers.get('mid', 0)}/{r.value_tiers.get('low', 0)}",
          r.orders, _yuan(r.revenue_fen), _yuan(r.cost_fen), _yuan(r.cost_per_high_fen)] for r in reports]))
    for r in reports:
        if not r.adds:
            continue
        one_year = len({day[:4] for day in r.adds_per_day}) == 1  # MM-DD alone would repeat across years
        days = "  ".join(f"{day[5:] if one_year else day}:{count}" for day, count in r.adds_per_day.items())
        mix = "、".join(f"{SEGMENT_NAMES.get(k, k)} {v}" for k, v in sorted(r.rfm_segments.items(),
                                                                          key=lambda kv: -kv[1]))
        click.echo(f"\n{r.state} adds per day: {days}")
        click.echo(f"{r.state} RFM: {mix or 'no buyers yet'}")
