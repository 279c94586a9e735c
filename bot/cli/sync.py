"""``scrm sync contacts | tags | moments`` and ``scrm tags check | merge``."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import click

from bot.cli.context import CliContext, pass_cli, render_table
from bot.tagging.rules import RuleError, TagRules


def _clients(cli: CliContext) -> Any:
    from bot.wecom.client import build_clients

    settings = cli.settings()
    if not settings.wecom.corp_id or not (settings.wecom.contact_secret or settings.wecom.secret):
        raise click.ClickException("WeCom is not configured: set wecom.corp_id and wecom.secret (or contact_secret)")
    return build_clients(settings)


def _summary(result: Any) -> str:
    return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in asdict(result).items() if not isinstance(v, list))


@click.group("sync")
def sync_group() -> None:
    """Reconcile with WeCom: contacts, corp tags, moment interactions."""


@sync_group.command("contacts")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@pass_cli
def sync_contacts_cmd(cli: CliContext, no_progress: bool) -> None:
    """Full reconcile of every follow user's customers (heals missed callbacks)."""
    from tqdm import tqdm

    from bot.contacts.sync import sync_contacts

    clients, rules = _clients(cli), TagRules.from_settings(cli.rule_settings())
    with cli.db().begin() as session, tqdm(unit="member", desc="syncing contacts", disable=no_progress) as bar:
        result = sync_contacts(session, clients.contact, rules, progress=bar.update)
    click.echo(_summary(result))


@sync_group.command("tags")
@pass_cli
def sync_tags_cmd(cli: CliContext) -> None:
    """Mirror WeCom's corp tag library here, then push tags put on customers here to WeCom."""
    from tqdm import tqdm

    from bot.tagging.sync import mirror_corp_tags, push_pending, retry_failed_pushes

    clients = _clients(cli)
    with cli.db().begin() as session:
        mirrored = mirror_corp_tags(session, clients.contact)
        retried = retry_failed_pushes(session)
    click.echo(f"library: {_summary(mirrored)}")
    with cli.db().begin() as session, tqdm(unit="customer", desc="pushing tags") as bar:
        pushed = push_pending(session, clients.contact, progress=bar.update)
    click.echo(f"pushed: customers {pushed.customers}, tags added {pushed.added}, removed {pushed.removed}, "
               f"failed {pushed.failed}" + (f" (retried {retried} earlier failures)" if retried else ""))
    for error in dict.fromkeys(pushed.errors):
        click.echo(f"  {error}")


@sync_group.command("moments")
@pass_cli
def sync_moments_cmd(cli: CliContext) -> None:
    """Poll likes and comments on recent moments (WeCom sends no callback for them)."""
    from tqdm import tqdm

    from bot.contacts.moments import poll_moments
    from bot.tagging.sync import push_pending

    clients, settings = _clients(cli), cli.rule_settings()
    with cli.db().begin() as session, tqdm(unit="moment", desc="polling moments") as bar:
        result = poll_moments(session, clients.contact, settings, TagRules.from_settings(settings),
                              progress=bar.update)
        if settings.tags.push_to_wecom:
            push_pending(session, clients.contact)
    click.echo(_summary(result))


@click.group("tags")
def tags_group() -> None:
    """One tag system: report near-duplicates and unused tags, merge synonyms."""


@tags_group.command("check")
@pass_cli
def tags_check_cmd(cli: CliContext) -> None:
    """Near-duplicate tags (same after folding width, case, spaces, common suffixes) and unused tags."""
    from bot.tagging.system import check_tags

    with cli.db().sessions() as session:
        report = check_tags(session)
    if report.near_duplicates:
        click.echo("near-duplicates (merge with `scrm tags merge A B`):")
        rows = [[i + 1, name, used] for i, group in enumerate(report.near_duplicates) for name, used in group]
        click.echo(render_table(["#", "tag", "customers"], rows))
    else:
        click.echo("no near-duplicate tags")
    click.echo(f"unused tags ({len(report.unused)}): " + ("、".join(report.unused) or "none"))
    if report.aliases:
        click.echo("aliases: " + ", ".join(f"{a} → {t}" for a, t in report.aliases))


@tags_group.command("merge")
@click.argument("source")
@click.argument("target")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_cli
def tags_merge_cmd(cli: CliContext, source: str, target: str, yes: bool) -> None:
    """Move every customer from tag SOURCE to TARGET ("组/标签"); SOURCE's rows stay as history and
    SOURCE becomes an alias of TARGET (this is not undone by merging back). WeCom is updated by the next
    `scrm sync tags`. Asks first, with the counts, unless --yes."""
    from bot.tagging.system import merge_tags

    rules = TagRules.from_settings(cli.rule_settings())
    db = cli.db()
    try:
        if not yes:  # the counts from the merge itself, rolled back: no lock is held while the operator reads
            with db.sessions() as session, session.begin():
                preview = merge_tags(session, rules, source, target)
                session.rollback()
            click.confirm(f"merge {source} into {target}: {preview.moved} customers move, {preview.already_had} "
                          f"already have it; {source} becomes an alias for good. Go ahead?", abort=True)
        with db.begin() as session:
            result = merge_tags(session, rules, source, target)
    except (LookupError, ValueError, RuleError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"merged {source} into {target}: {result.moved} customers moved, {result.already_had} already had it"
               + ("" if yes or (result.moved, result.already_had) == (preview.moved, preview.already_had)
                  else " (tags changed while you answered)"))
