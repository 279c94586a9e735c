"""``scrm inbox``: see stored callbacks and run them again."""

from __future__ import annotations

import click

from bot.cli.context import CliContext, pass_cli, render_table
from bot.cli.times import local_time, zoned

# bot.models.INBOX_STATUSES, spelled out so that `scrm --help` needs no SQLAlchemy (a test keeps them equal)
STATUSES = ("pending", "processing", "handled", "unhandled", "failed", "dead")
FAILED = ("failed", "dead")  # a rerun that ends so exits 1


@click.group(help="The callback inbox: every WeCom event as stored, and its processing status.")
def inbox() -> None:
    pass


@inbox.command("list")
@click.option("--status", type=click.Choice(STATUSES), help="Only events in this status.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100000),
              help="Show at most this many events.")
@pass_cli
def list_events(cli: CliContext, status: str | None, limit: int) -> None:
    """One line per event: id, received at, MsgType/Event/ChangeType, status (newest first)."""
    from sqlalchemy import select

    from bot.models import InboxEvent

    query = select(InboxEvent).order_by(InboxEvent.id.desc()).limit(limit)
    if status:
        query = query.where(InboxEvent.status == status)
    tz = cli.settings().tz
    with cli.db().sessions() as session:
        rows = [[e.id, local_time(e.received_at, tz, zone=False, seconds=True), e.kind, e.status,
                 e.attempts, e.duplicates, (e.last_error or "").strip().splitlines()[-1:][0][:60]
                 if e.last_error else ""] for e in session.scalars(query)]
    if not rows:
        click.echo("no inbox events" + (f" with status {status}" if status else ""))
        return
    click.echo(render_table(["id", zoned("received_at", tz), "type", "status", "attempts", "dup", "last_error"],
                            rows))


@inbox.command("show")
@click.argument("event_id", type=click.IntRange(1, 2**63 - 1))
@pass_cli
def show(cli: CliContext, event_id: int) -> None:
    """Print one event: its fields, status, last error and the decrypted XML."""
    tz = cli.settings().tz
    from bot.models import InboxEvent

    with cli.db().sessions() as session:
        event = session.get(InboxEvent, event_id)
        if event is None:
            raise click.ClickException(f"no inbox event {event_id}")
        click.echo(f"id:          {event.id}\ntype:        {event.kind}\nstatus:      {event.status}\n"
                   f"attempts:    {event.attempts}\nduplicates:  {event.duplicates}\n"
                   f"received_at: {local_time(event.received_at, tz, seconds=True)}\n"
                   f"next_try:    {local_time(event.next_attempt_at, tz, seconds=True)}")
        if event.last_error:
            click.echo(f"last_error:\n{event.last_error}")
        click.echo(f"payload:\n{event.payload}")


@inbox.command("retry")
@click.argument("event_id", type=click.IntRange(1, 2**63 - 1))
@click.option("--queue-only", is_flag=True, help="Only mark it due; let the running worker pick it up.")
@pass_cli
def retry(cli: CliContext, event_id: int, queue_only: bool) -> None:
    """Run a failed, dead or unhandled event again now; exits 1 if it fails again."""
    _rerun(cli, event_id, queue_only, replay=False)


@inbox.command("replay")
@click.argument("event_id", type=click.IntRange(1, 2**63 - 1))
@click.option("--queue-only", is_flag=True, help="Only mark it due; let the running worker pick it up.")
@pass_cli
def replay(cli: CliContext, event_id: int, queue_only: bool) -> None:
    """Run any event again from scratch, even one already handled (handlers are idempotent); exits 1 if
    it fails."""
    _rerun(cli, event_id, queue_only, replay=True)


def _rerun(cli: CliContext, event_id: int, queue_only: bool, replay: bool) -> None:
    from bot.models import InboxEvent
    from bot.web.inbox import build_processor

    processor = build_processor(cli.settings(), cli.db())
    try:
        (processor.replay if replay else processor.retry)(event_id)
    except LookupError as exc:
        raise click.ClickException(str(exc)) from None
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if queue_only:
        click.echo(f"inbox event {event_id} queued")
        return
    status = processor.process(event_id) or "taken by another worker"
    with cli.db().sessions() as session:
        event = session.get(InboxEvent, event_id)
        error = f": {event.last_error.strip().splitlines()[-1]}" if event and event.last_error else ""
    if status in FAILED:
        raise click.ClickException(f"inbox event {event_id}: {status}{error}")
    click.echo(f"inbox event {event_id}: {status}{error}")
