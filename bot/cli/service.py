"""``scrm init | serve | sandbox | config show``."""

from __future__ import annotations

import json
import os
import secrets
import signal
import string
import subprocess
import sys
from typing import Any

import click

from bot.cli.context import CliContext, pass_cli, render_table


@click.command()
@pass_cli
def init(cli: CliContext) -> None:
    """Create the database, or upgrade it to the newest schema."""
    from alembic.runtime.migration import MigrationContext

    from bot.core.config import redact_url

    db = cli.db(create=True)
    with db.engine.connect() as conn:
        revision = MigrationContext.configure(conn).get_current_revision()
    click.echo(f"database {redact_url(db.url)} is at schema revision {revision}")


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Web processes. 1: one threaded process; more: gunicorn with bot/web/gunicorn_conf.py.")
@click.option("--no-worker", is_flag=True, help="Do not process the inbox in the web process(es).")
@click.option("--no-scheduler", is_flag=True, help="Do not run scheduled jobs in this process.")
@pass_cli
def serve(cli: CliContext, host: str, port: int, workers: int, no_worker: bool, no_scheduler: bool) -> None:
    """Run the web app (webhook, API), with the inbox worker and the scheduler in-process.

    With --workers 1 one threaded process serves everything (the embedded mode). With --workers N
    gunicorn runs N web processes, each with an inbox worker thread unless --no-worker (with Redis,
    `scrm worker` processes take the queued events: give the web --no-worker then), and this process
    runs the scheduler. Creates or upgrades the database on start."""
    from werkzeug.serving import run_simple

    from bot.core.db import DatabaseUnavailable
    from bot.schedule.scheduler import SchedulerService
    from bot.web.app import create_app
    from bot.web.inbox import build_processor
    from bot.web.serving import PrivateRequestHandler

    settings = cli.settings()
    db = cli.db(create=True)  # once, before any web process starts
    try:
        app = create_app(settings=settings, start_worker=False if no_worker else None) if workers == 1 else None
    except DatabaseUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    # The embedded app's processor is shared with the scheduler (one WeCom token cache per process).
    processor = app.extensions["scrm.processor"] if app else build_processor(settings, db)
    service = None
    if app is not None:  # gunicorn's path passes SIGTERM on to gunicorn (_serve_gunicorn)
        _sigterm_as_interrupt()
    if settings.scheduler.enabled and not no_scheduler:
        service = SchedulerService(settings, db, processor.clients, processor.sender)
    try:
        if service is not None:
            service.start()
        click.echo(f"webhook: http://{host}:{port}/wecom/callback   health: http://{host}:{port}/healthz")
        if app is not None:
            run_simple(host, port, app, threaded=True, use_reloader=False, request_handler=PrivateRequestHandler)
        else:
            _serve_gunicorn(cli, host, port, workers, no_worker)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM before the server took over its own handling
        click.echo("stopped")
    finally:
        if service:
            service.stop()


def gunicorn_command(host: str, port: int, workers: int) -> list[str]:
    """gunicorn with the shipped config; the bind and worker count from the command line win over it."""
    return [sys.executable, "-m", "gunicorn", "-c", "python:bot.web.gunicorn_conf", "--bind", f"{host}:{port}",
            "--workers", str(workers), "bot.web.wsgi:app"]


def _serve_gunicorn(cli: CliContext, host: str, port: int, workers: int, no_worker: bool) -> None:
    """gunicorn in a child process: its workers fork from a master that runs no scheduler thread."""
    env = dict(os.environ)
    if cli.config_file:
        env["SCRM_CONFIG"] = os.path.abspath(cli.config_file)
    if no_worker:
        env["SCRM_WORKER_ENABLED"] = "false"
    if not cli.settings().app.secret_key:
        # Each worker would make its own random key: a console or sidebar session signed by one worker was
        # refused by the next (signed out at random). One key for this run's workers; gone at restart.
        env["SCRM_APP_SECRET_KEY"] = secrets.token_urlsafe(48)
        click.echo("app.secret_key is empty: the workers share a key made for this run, so sessions end when "
                   "scrm serve restarts (set app.secret_key to keep them)", err=True)
    child = subprocess.Popen(gunicorn_command(host, port, workers), env=env)
    # A process manager stops `scrm serve` with SIGTERM: passed on, so gunicorn is never orphaned.
    signal.signal(signal.SIGTERM, lambda *_: child.terminate())
    try:
        code = child.wait()
    except KeyboardInterrupt:
        child.terminate()  # gunicorn's graceful stop: workers finish their requests
        code = child.wait(30)
    if code not in (0, -signal.SIGTERM):
        raise click.ClickException(f"gunicorn stopped with exit code {code}")


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8001, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on.")
@click.option("--callback-url", default="http://127.0.0.1:8000/wecom/callback", show_default=True,
              help="The bot's webhook, where encrypted callbacks are delivered.")
@pass_cli
def sandbox(cli: CliContext, host: str, port: int, callback_url: str) -> None:
    """Serve a local WeCom: the API the bot calls, plus /_sandbox/ control endpoints.

    Uses wecom.corp_id, token, encoding_aes_key and the secrets from the config; any that are
    missing are generated and printed so the bot can be pointed at this sandbox."""
    from werkzeug.serving import run_simple

    from bot.sandbox import SandboxConfig, SandboxState, create_sandbox_app

    w = cli.settings().wecom
    cfg = SandboxConfig(
        corp_id=w.corp_id or "ww" + _random(16).lower(),
        token=w.token or _random(32),
        encoding_aes_key=w.encoding_aes_key or _random(43),
        secrets={},
        agent_id=w.agent_id or 1000002,
        callback_url=callback_url,
    )
    app_secret = w.secret or _random(43)
    cfg.secrets = {app_secret: "app", (w.contact_secret or app_secret): "contact", (w.kf_secret or app_secret): "kf"}
    app = create_sandbox_app(SandboxState(cfg))
    click.echo("sandbox WeCom — point the bot at it with:")
    env = {"SCRM_WECOM_API_BASE_URL": f"http://{host}:{port}/cgi-bin/", "SCRM_WECOM_CORP_ID": cfg.corp_id,
           "SCRM_WECOM_AGENT_ID": str(cfg.agent_id)}
    generated = {"SCRM_WECOM_TOKEN": (w.token, cfg.token), "SCRM_WECOM_ENCODING_AES_KEY": (w.encoding_aes_key,
                 cfg.encoding_aes_key), "SCRM_WECOM_SECRET": (w.secret, app_secret)}
    for name, (configured, value) in generated.items():
        env[name] = "(from your config)" if configured else value
    for name, value in env.items():
        click.echo(f"  export {name}={value}")
    click.echo(f"control API: http://{host}:{port}/_sandbox/   callbacks go to {callback_url}")
    run_simple(host, port, app, threaded=True, use_reloader=False)


def _random(length: int) -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


@click.group("config", help="Inspect the effective configuration.")
def config_group() -> None:
    pass


@config_group.command("show")
@pass_cli
def config_show(cli: CliContext) -> None:
    """Print the effective settings (defaults → file → env) with every secret masked."""
    click.echo(json.dumps(cli.settings().redacted(), indent=2, ensure_ascii=False))


@click.command()
@click.option("--burst", is_flag=True, help="With Redis: stop once the queue is empty (for tests and cron).")
@pass_cli
def worker(cli: CliContext, burst: bool) -> None:
    """Process the inbox and send due messages in the foreground, apart from the web processes.

    With redis.url set this is an RQ worker: it runs the jobs the webhook enqueues, and sweeps the
    database for rows whose job was lost (while Redis is unreachable it does the work in-process).
    Without Redis it polls the database every worker.poll_seconds. Run as many as you like: every
    event and message is claimed in the database, so none runs twice."""
    import time

    from bot.web.inbox import build_processor

    settings = cli.settings()
    processor = build_processor(settings, cli.db())
    if settings.redis.url:
        from bot.tasks.queue import TaskQueue, connect
        from bot.tasks.worker import QueueWorker

        tasks = TaskQueue(connect(settings.redis.url, timeout_seconds=10.0), settings.redis.key_prefix)
        click.echo(f"RQ worker on queue {tasks.queue.name}, {settings.worker.threads} job(s) at a time, sweeping "
                   f"every {settings.worker.poll_seconds}s (Ctrl-C to stop)")
        QueueWorker(processor, tasks, settings.worker.poll_seconds, settings.worker.threads).run(burst=burst)
        return
    if burst:
        click.echo("inbox worker polling the database until nothing is due (--burst)")
        while processor.run_once() or (processor.sender and processor.sender.send_due()):
            pass
        return
    from bot.inbox.worker import InboxWorker

    threads = InboxWorker(processor, settings.worker.poll_seconds, sender=processor.sender,
                          threads=settings.worker.threads)
    _sigterm_as_interrupt()
    try:
        click.echo(f"inbox worker, {settings.worker.threads} thread(s), polling every "
                   f"{settings.worker.poll_seconds}s (Ctrl-C to stop)")
        threads.start()
        while threads.running:
            time.sleep(1)
    except KeyboardInterrupt:
        click.echo("stopped")
    finally:
        threads.stop()


def _sigterm_as_interrupt() -> None:
    """A process manager (systemd, Docker, Kubernetes) stops a service with SIGTERM, which ended the process
    at once: its clean-up never ran, so a stopped scheduler kept the lock until it lapsed and a restart ran
    no job for up to a minute. SIGTERM now stops it as Ctrl-C does."""
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


@click.command("scheduler")
@pass_cli
def scheduler_cmd(cli: CliContext) -> None:
    """Run the scheduler alone. Any number may run, beside `scrm serve`'s too: one is active (a lock in
    Redis when configured, else a lease row in the database), the others stand by."""
    import time

    from bot.schedule.scheduler import SchedulerService
    from bot.web.inbox import build_processor

    settings = cli.settings()
    processor = build_processor(settings, cli.db())
    service = SchedulerService(settings, cli.db(), processor.clients, processor.sender)
    _sigterm_as_interrupt()
    try:  # from its start: a SIGTERM while it starts still gives the lock back
        service.start()
        click.echo(("scheduler running" if service.active else "scheduler standing by (another process runs the "
                    "jobs; this one takes over when its lock lapses)") + "; Ctrl-C to stop")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        click.echo("stopped")
    finally:
        service.stop()


@click.command("jobs")
@pass_cli
def jobs_cmd(cli: CliContext) -> None:
    """List the scheduled jobs with their next run times, as stored (changes nothing)."""
    from bot.schedule.scheduler import job_table

    click.echo(render_table(["job", "trigger", "next run", "what"], job_table(cli.settings(), cli.db(), cli.now())))


@click.command("holidays")
@click.option("--year", type=click.IntRange(1901, 2099), help="Calendar year (default: this year, local).")
@click.option("--all", "show_all", is_flag=True, help="Every known holiday, not only those in greetings.holidays.")
@pass_cli
def holidays_cmd(cli: CliContext, year: int | None, show_all: bool) -> None:
    """The greeting calendar: one holiday a line, its Chinese name and its date (YYYY-MM-DD)."""
    from datetime import datetime

    from bot.campaigns.holidays import calendar

    settings = cli.settings()
    year = year or datetime.now(settings.tz).year
    for day, holiday in calendar(year, None if show_all else settings.greetings.holidays):
        click.echo(f"{holiday.name} {day.isoformat()}")
