"""``scrm token create | list | revoke``: API bearer tokens (stored as SHA-256 digests)."""

from __future__ import annotations

import click

from bot.cli.context import CliContext, pass_cli, render_table


@click.group("token", help="API bearer tokens.")
def token_group() -> None:
    pass


@token_group.command("create")
@click.argument("name")
@pass_cli
def create(cli: CliContext, name: str) -> None:
    """Create a token; it is printed once and only its digest is kept."""
    from sqlalchemy import select

    from bot.api import new_token
    from bot.models import ApiToken

    if not 1 <= len(name) <= 64:
        raise click.BadParameter("1–64 characters", param_hint="NAME")
    token, digest = new_token()
    with cli.db().begin() as session:
        if session.scalar(select(ApiToken).where(ApiToken.name == name)):
            raise click.ClickException(f"a token named {name!r} exists; revoke it or choose another name")
        session.add(ApiToken(name=name, token_sha256=digest))
    click.echo(token)
    click.echo(f"token {name!r} created — store it now, it cannot be shown again", err=True)


@token_group.command("list")
@pass_cli
def list_tokens(cli: CliContext) -> None:
    from sqlalchemy import select

    from bot.models import ApiToken

    with cli.db().sessions() as session:
        tokens = session.scalars(select(ApiToken).order_by(ApiToken.id))
        rows = [[t.name, t.created_at.isoformat(timespec="seconds"),
                 t.last_used_at.isoformat(timespec="seconds") if t.last_used_at else "-",
                 "revoked" if t.revoked_at else "active"] for t in tokens]
    click.echo(render_table(["name", "created", "last used", "state"], rows) if rows else "no tokens")


@token_group.command("revoke")
@click.argument("name")
@pass_cli
def revoke(cli: CliContext, name: str) -> None:
    from sqlalchemy import select

    from bot.models import ApiToken, utcnow

    with cli.db().begin() as session:
        token = session.scalar(select(ApiToken).where(ApiToken.name == name))
        if token is None:
            raise click.ClickException(f"no token named {name!r}")
        token.revoked_at = token.revoked_at or utcnow()
    click.echo(f"token {name!r} revoked")
