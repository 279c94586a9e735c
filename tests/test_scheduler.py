"""The scheduler: jobs declared once and reconciled on every start, exactly one active scheduler
among several processes (Redis lock), and the job functions doing their work."""

from __future__ import annotations

import pickle
import threading
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select, text

from bot.cli import main
from bot.core.db import Database
from bot.models import Customer, CustomerAggregate, CustomerTag
from bot.schedule import jobs
from bot.schedule.scheduler import JOBS, JOBSTORE_TABLE, SchedulerService, job_table
from bot.startup import load_settings
from tests.support import REDIS_URL


def stored_jobs(db: Database) -> list[str]:
    with db.engine.connect() as conn:
        return sorted(conn.execute(text(f"SELECT id FROM {JOBSTORE_TABLE}")).scalars())


def test_jobs_are_reconciled_on_every_start_and_never_duplicated(database_url):
    settings = load_settings(overrides={"database": {"url": database_url}}, environ={})
    db = Database(settings.database)
    try:
        for _ in range(2):  # a restart
            service = SchedulerService(settings, db).start()
            assert service.active
            service.scheduler.add_job("bot.schedule.jobs:outbox_sweep", "interval", minutes=5,
                                      id="left_over_by_old_code")
            service.stop()
        service = SchedulerService(settings, db).start()
        service.stop()
        assert stored_jobs(db) == sorted(spec.id for spec in JOBS)
        rows = job_table(settings, db)
        assert [r[0] for r in rows] == [spec.id for spec in JOBS]
        assert rows[0][1] == "cron[hour='2', minute='30']" and "(not yet stored)" not in rows[0][2]
    finally:
        db.dispose()


def stored_jobs_due(database_url: str, ago: timedelta | None, only: str | None = None,
                    at: datetime | None = None) -> tuple[Any, Database, datetime]:
    """Settings, the database with every job (or ``only`` one) stored as due ``ago`` (or ``at``), and that time."""
    settings = load_settings(overrides={"database": {"url": database_url}}, environ={})
    db = Database(settings.database)
    SchedulerService(settings, db).start().stop()
    due = at or datetime.now(UTC).replace(microsecond=0) - (ago or timedelta())
    with db.engine.begin() as conn:
        for job_id, state in conn.execute(text(f"SELECT id, job_state FROM {JOBSTORE_TABLE}")).all():
            if only in (None, job_id):
                moved = pickle.loads(state) | {"next_run_time": due}
                conn.execute(text(f"UPDATE {JOBSTORE_TABLE} SET job_state = :state, next_run_time = :at "
                                  "WHERE id = :id"),
                             {"state": pickle.dumps(moved), "at": due.timestamp(), "id": job_id})
    return settings, db, due


def test_a_run_due_while_the_service_was_down_is_made_up_not_skipped(database_url):
    """A restart five minutes after the greetings' time kept no greeting that day: reconciling replaced
    every stored job, and its next run was computed from now (tomorrow)."""
    from bot.schedule.scheduler import PUSHES_EXECUTOR, build_scheduler, reconcile_jobs

    settings, db, due = stored_jobs_due(database_url, timedelta(minutes=5), "holiday_greetings")
    try:
        scheduler = build_scheduler(settings, db)
        scheduler.start(paused=True)  # what a restart does before it resumes
        try:
            reconcile_jobs(scheduler, settings)
            greetings = scheduler.get_job("holiday_greetings")
            assert greetings.next_run_time == due  # still due: it runs on resume (misfire grace 1 h)
            assert greetings.executor == PUSHES_EXECUTOR and scheduler.get_job("nightly_retier").executor == "default"
        finally:
            scheduler.shutdown(wait=False)
    finally:
        db.dispose()


@pytest.mark.parametrize(("back_at", "made_up"), [(time(15, 0), True), (time(21, 30), False)])
def test_a_greeting_missed_for_hours_is_sent_on_its_day_but_not_the_day_after(database_url, monkeypatch, back_at,
                                                                                made_up):
    """Down from before 10:00 until 15:00 on a holiday: past the 1 h misfire grace the scheduler dropped the
    day's greetings (and birthdays). They are made up until the quiet hours that follow (21:00), not later:
    a run made up then would go out the morning after the holiday."""
    shanghai = ZoneInfo("Asia/Shanghai")
    due, back = (datetime.combine(date(2026, 10, 1), moment, shanghai) for moment in (time(10), back_at))

    class BackThen(datetime):  # the scheduler's and its executor's clock: the moment the service is back
        @classmethod
        def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
            return back.astimezone(tz)

    ran = threading.Event()
    monkeypatch.setattr(jobs, "holiday_greetings", lambda: ran.set())
    settings, db, _ = stored_jobs_due(database_url, None, "holiday_greetings", at=due.astimezone(UTC))
    monkeypatch.setattr("apscheduler.schedulers.base.datetime", BackThen)
    monkeypatch.setattr("apscheduler.executors.base.datetime", BackThen)
    try:
        service = SchedulerService(settings, db).start()
        try:
            assert ran.wait(5) is made_up
        finally:
            service.stop()
    finally:
        db.dispose()


@pytest.mark.parametrize(("job_id", "at", "quiet_hours", "hours"), [
    ("holiday_greetings", "10:00", "21:00-09:00", 11), ("holiday_greetings", "22:00", "21:00-09:00", 2),
    ("holiday_greetings", "10:00", "", 14), ("holiday_greetings", "08:00", "00:00-07:00", 16),
    ("nightly_retier", "02:30", "21:00-09:00", 21.5), ("contacts_resync", "03:30", "21:00-09:00", 20.5),
    ("moments_poll", None, "21:00-09:00", 1)])
def test_daily_jobs_may_be_made_up_that_day_greetings_until_quiet_hours(job_id, at, quiet_hours, hours):
    keys = {"holiday_greetings": ("greetings", "send_at"), "nightly_retier": ("scheduler", "retier_at"),
            "contacts_resync": ("scheduler", "contacts_resync_at")}
    times = {keys[job_id][0]: {keys[job_id][1]: at}} if at else {}
    settings = load_settings(overrides={**times, "outbox": {"quiet_hours": quiet_hours}}, environ={})
    spec = next(spec for spec in JOBS if spec.id == job_id)
    assert spec.misfire_grace(settings) == hours * 3600


def test_scrm_jobs_reads_the_job_store_and_changes_nothing(database_url):
    """A due run (next run time in the past) stays due: listing the jobs neither moves it nor tries to
    submit it (a paused scheduler did both, and logged 'cannot schedule new futures after shutdown')."""
    settings, db, due = stored_jobs_due(database_url, timedelta(hours=1))
    try:
        before = store_rows(db)
        result = CliRunner(env={"SCRM_CONFIG": None, "SCRM_DATABASE_URL": database_url}).invoke(main, ["jobs"])
        assert result.exit_code == 0, result.output
        assert store_rows(db) == before
        shown = due.astimezone(settings.tz).strftime("%Y-%m-%d %H:%M:%S")
        assert sum(shown in line for line in result.output.splitlines()) == len(JOBS)
    finally:
        db.dispose()


def store_rows(db: Database) -> list[tuple[str, float, bytes]]:
    with db.engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(f"SELECT id, next_run_time, job_state FROM {JOBSTORE_TABLE} "
                                                        "ORDER BY id"))]


@pytest.mark.skipif(not REDIS_URL, reason="SCRM_TEST_REDIS_URL not set (CI sets it)")
def test_exactly_one_scheduler_is_active_and_a_stand_by_takes_over(database_url):
    import redis

    prefix = "scrm-test-" + str(id(database_url))
    settings = load_settings(overrides={"database": {"url": database_url},
                                        "redis": {"url": REDIS_URL, "key_prefix": prefix},
                                        "scheduler": {"lock_seconds": 30}}, environ={})
    db = Database(settings.database)
    first, second = SchedulerService(settings, db), SchedulerService(settings, db)
    try:
        first.tick()
        second.tick()
        assert (first.active, second.active) == (True, False)
        first.tick()  # the holder renews
        second.tick()
        assert (first.active, second.active) == (True, False)
        first.stop()  # releases the lock
        second.tick()
        assert second.active
    finally:
        first.stop()
        second.stop()
        db.dispose()
        client = redis.Redis.from_url(REDIS_URL)
        client.delete(f"{prefix}:scheduler:lock")
        client.close()


def test_nightly_retier_job_tiers_and_tags(db, app):
    with db.begin() as s:
        customer = Customer(external_userid="wmJOB", name="job")
        s.add(customer)
        s.flush()
        paid = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)
        s.add(CustomerAggregate(customer_id=customer.id, order_count=2, paid_amount_fen=150000,
                                first_order_at=paid, last_order_at=paid, first_order_day=date(2026, 11, 1).toordinal(),
                                last_order_day=date(2026, 11, 1).toordinal()))
    jobs.install(jobs.Runtime(app.extensions["scrm.settings"], db))
    result = jobs.nightly_retier()
    assert result["customers"] == 1 and result["tags"]["repeat_buyer"] == 1
    with db.sessions() as s:
        assert s.scalar(select(func.count()).select_from(CustomerTag)) == 3  # first order, repeat, ≥1000 元
    assert jobs.moments_poll() == {"skipped": "WeCom is not configured"}


def test_every_declared_job_runs_against_the_sandbox(wired, sandbox):
    """Each job function, called as the scheduler calls it, does its work without error."""
    import importlib

    from bot.schedule.jobs import Runtime, install

    processor = wired.extensions["scrm.processor"]
    install(Runtime(wired.extensions["scrm.settings"], wired.extensions["scrm.db"], processor.clients,
                    processor.sender))
    results = {}
    for spec in JOBS:
        module, name = spec.func.split(":")
        results[spec.id] = getattr(importlib.import_module(module), name)()
    assert set(results) == {spec.id for spec in JOBS}
    assert results["broadcast_dispatch"]["runs"] == []  # coupon schedules become broadcasts, none due yet
    with wired.extensions["scrm.db"].sessions() as s:
        from sqlalchemy import select

        from bot.models import Broadcast

        assert sorted(s.scalars(select(Broadcast.name))) == ["coupon:FLASH", "coupon:VIP"]


def test_a_scheduler_stopped_with_sigterm_gives_its_lock_back(database_url, tmp_path):
    """systemd, Docker and Kubernetes stop with SIGTERM, which ended `scrm scheduler` before its clean-up:
    the lease stayed held, and the restarted scheduler (or a standby) ran no job until it lapsed."""
    import os
    import signal
    import subprocess
    import sys

    from bot.models import SchedulerLease

    if not database_url.startswith("sqlite"):
        pytest.skip("one process per database file is enough to show it")
    env = {**os.environ, "SCRM_DATABASE_URL": database_url, "SCRM_CONFIG": ""}
    subprocess.run([sys.executable, "-m", "bot.cli", "init"], env=env, check=True, capture_output=True)
    process = subprocess.Popen([sys.executable, "-X", "faulthandler", "-m", "bot.cli", "scheduler"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert any("scheduler running" in process.stdout.readline() for _ in range(20))  # after the log lines
        process.send_signal(signal.SIGTERM)
        try:
            assert process.wait(20) == 0, process.stdout.read()
        except subprocess.TimeoutExpired:  # where it hangs: faulthandler prints every thread's stack on SIGABRT
            process.send_signal(signal.SIGABRT)
            pytest.fail("no exit 20 s after SIGTERM:\n" + process.communicate(timeout=10)[0])
    finally:
        process.kill()
        process.wait()
        process.stdout.close()
    db = Database(load_settings(overrides={"database": {"url": database_url}}, environ={}).database)
    try:
        with db.sessions() as s:
            lease = s.get(SchedulerLease, "scheduler")
            assert lease.expires_at.year == 1970  # given back: the next scheduler takes it at once
    finally:
        db.dispose()
