"""``scrm token create | list | revoke``: API bearer tokens (stored as SHA-256 digests)."""

from __future__ import annotations

import click

from bot.cli.context import CliContext, pass_cli, render_table
from bot.cli.times import local_time, zoned


@click.group("token", help="API bearer tokens.")
def token_group() -> None:
    pass


@token_group.command("create")
@click.argument("name")
@click.option("--read-customers", is_flag=True,
              help="Let the token also read customers (GET /api/v1/customers: names, tiers, tags, predictions). "
                   "Without it a token posts orders and redeems coupons only.")
@pass_cli
def create(cli: CliContext, name: str, read_customers: bool) -> None:
    """Create a token; it is printed once and only its digest is kept."""
    from sqlalchemy import select

    from bot.models import ApiToken
    from bot.web.api import new_token

    if not 1 <= len(name) <= 64 or not name.isprintable():
        raise click.BadParameter("1–64 printable characters (no line breaks or tabs)", param_hint="NAME")
    token, digest = new_token()
    with cli.db().begin() as session:
        if session.scalar(select(ApiToken).where(ApiToken.name == name)):
            raise click.ClickException(f"a token named {name!r} exists; revoke it or choose another name")
        session.add(ApiToken(name=name, token_sha256=digest, read_customers=read_customers))
    click.echo(token)
    click.echo(f"token {name!r} created — store it now, it cannot be shown again", err=True)


@token_group.command("list")
@pass_cli
def list_tokens(cli: CliContext) -> None:
    """One line per token: name, what it may do, created, last used, active or revoked."""
    tz = cli.settings().tz
    from sqlalchemy import select

    from bot.models import ApiToken

    with cli.db().sessions() as session:
        tokens = session.scalars(select(ApiToken).order_by(ApiToken.id))
        rows = [[t.name, "orders, coupons" + (", read customers" if t.read_customers else ""),
                 local_time(t.created_at, tz, zone=False), local_time(t.last_used_at, tz, zone=False),
                 "revoked" if t.revoked_at else "active"] for t in tokens]
    headers = ["name", "may", zoned("created", tz), zoned("last used", tz), "state"]
    click.echo(render_table(headers, rows) if rows else "no tokens")


@token_group.command("revoke")
@click.argument("name")
@pass_cli
def revoke(cli: CliContext, name: str) -> None:
    """Revoke a token: the API refuses it from now on. Exits 1 if it was already revoked."""
    from sqlalchemy import select

    from bot.models import ApiToken, utcnow

    with cli.db().begin() as session:
        token = session.scalar(select(ApiToken).where(ApiToken.name == name))
        if token is None:
            raise click.ClickException(f"no token named {name!r}")
        if token.revoked_at is not None:
            raise click.ClickException(f"token {name!r} was already revoked at "
                                       f"{local_time(token.revoked_at, cli.settings().tz)}")
        token.revoked_at = utcnow()
    click.echo(f"token {name!r} revoked")
