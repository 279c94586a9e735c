"""``scrm user add | list``: operator accounts for the console (password hashes only)."""

from __future__ import annotations

import sys

import click

from bot.cli.context import CliContext, pass_cli, render_table
from bot.cli.times import local_time, zoned

# bot.models.OPERATOR_ROLES, spelled out so that `scrm --help` needs no SQLAlchemy (a test keeps them equal)
OPERATOR_ROLES = ("admin", "operator", "viewer")


@click.group("user", help="Operator accounts for the web console.")
def user_group() -> None:
    pass


@user_group.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(OPERATOR_ROLES), required=True,
              help="admin: everything; operator: broadcasts and customers, not users; viewer: reads only.")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin (scripts).")
@pass_cli
def add_user(cli: CliContext, name: str, role: str, password_stdin: bool) -> None:
    """Create an operator; the password is prompted for (twice) unless --password-stdin. NAME: 1–64
    characters without spaces, control or invisible characters (Chinese is fine)."""
    from bot.web.console.accounts import AccountError, add_operator

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("password", hide_input=True, confirmation_prompt=True)
    try:
        with cli.db().begin() as session:
            add_operator(session, name, role, password, actor="cli")
    except AccountError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"operator {name!r} ({role}) created")


@user_group.command("list")
@pass_cli
def list_users(cli: CliContext) -> None:
    """One line per operator: name, role, created, last sign-in."""
    from sqlalchemy import select

    from bot.models import Operator

    tz = cli.settings().tz
    with cli.db().sessions() as session:
        rows = [[o.name, o.role, local_time(o.created_at, tz, zone=False), local_time(o.last_login_at, tz, zone=False),
                 "active" if o.active else "disabled"]
                for o in session.scalars(select(Operator).order_by(Operator.id))]
    click.echo(render_table(["name", "role", zoned("created", tz), zoned("last sign-in", tz), "state"], rows)
               if rows else "no operators")


@user_group.command("set")
@click.argument("name")
@click.option("--role", type=click.Choice(OPERATOR_ROLES), help="A new role.")
@click.option("--enable/--disable", "active", default=None,
              help="Let the operator sign in again, or not (their sessions end at once).")
@click.option("--password-stdin", is_flag=True, help="A new password from the first line of stdin (sessions end).")
@click.option("--new-password", "prompt_password", is_flag=True, help="Prompt for a new password (twice).")
@pass_cli
def set_user(cli: CliContext, name: str, role: str | None, active: bool | None, password_stdin: bool,
             prompt_password: bool) -> None:
    """Change an operator's role, state or password. The last active admin stays an active admin."""
    from bot.web.console.accounts import AccountError, change_operator

    if role is None and active is None and not password_stdin and not prompt_password:
        raise click.UsageError("nothing to change: give --role, --enable/--disable, --new-password or --password-stdin")
    password = None
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif prompt_password:
        password = click.prompt("new password", hide_input=True, confirmation_prompt=True)
    try:
        with cli.db().begin() as session:
            operator = change_operator(session, name, actor="cli", role=role, active=active, password=password)
            summary = f"{operator.name!r}: {operator.role}, {'active' if operator.active else 'disabled'}"
    except AccountError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"operator {summary}{'; password changed' if password is not None else ''}")


@user_group.command("unlock")
@click.argument("name")
@pass_cli
def unlock_user(cli: CliContext, name: str) -> None:
    """Let NAME sign in again at once: forget its failed sign-ins from every address (5 from one address,
    or 20 from all, within 15 minutes refuse further tries until the window passes)."""
    from bot.web.console.accounts import unlock

    with cli.db().begin() as session:
        cleared = unlock(session, name, actor="cli")
    click.echo(f"{name.strip()!r}: {cleared} failed sign-in{'' if cleared == 1 else 's'} forgotten"
               if cleared else f"{name.strip()!r} had no recent failed sign-ins; nothing to unlock")
