"""APScheduler with a persistent SQLAlchemy job store. Jobs are declared once, in :data:`JOBS`,
and reconciled at every start (stable ids, ``replace_existing``), so restarts never duplicate
them. With Redis configured, a lock keeps exactly one scheduler active across processes; the
others stand by and take over when the holder stops renewing it."""

from __future__ import annotations

import logging
import pickle
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Column, LargeBinary, MetaData, Table, Unicode, inspect, or_, select, update
from sqlalchemy.exc import IntegrityError

from bot.core.config import Settings
from bot.core.db import Database
from bot.core.times import local_time
from bot.models import SchedulerLease, utcnow
from bot.outbox.policy import parse_quiet_hours
from bot.schedule.jobs import Runtime, install
from bot.startup import RuleReloader

logger = logging.getLogger(__name__)
JOBSTORE_TABLE = "scheduler_jobs"


@dataclass(frozen=True)
class JobSpec:
    id: str
    func: str  # "module:function", stored by reference
    description: str
    trigger: Callable[[Settings], Any]
    grace: Callable[[Settings], int] | None = None  # seconds a missed run may still be made up; else the default

    def misfire_grace(self, settings: Settings) -> int:
        return self.grace(settings) if self.grace else MISFIRE_GRACE_SECONDS

    @property
    def executor(self) -> str:
        return PUSHES_EXECUTOR if self.id in PUSH_JOBS else "default"


# Jobs that plan or submit pushes to customers check the contact caps, then write, and submit what is
# due: two of them at once (a greeting and a sequence step planned in the same second, two submits of
# the same rows) each passed the cap the other was about to use, and both submitted. They take turns
# on one thread; the rest (re-tier, contact sync, polls) keep the pool.
PUSHES_EXECUTOR = "pushes"
PUSH_JOBS = frozenset({"holiday_greetings", "mass_send", "broadcast_dispatch", "coupon_pushes", "sequences",
                       "tier_actions"})


MISFIRE_GRACE_SECONDS = 3600


def _rest_of_the_day(key: str, section: str = "scheduler", quiet: bool = False) -> Callable[[Settings], int]:
    """From the job's time to midnight, or with ``quiet`` to the quiet hours that follow it that day: a
    daily run missed while the service was down (a crash overnight, a restart at noon) is made up that
    day. Not later: a greeting made up in the evening would go out only when quiet hours end, the day
    after the holiday, and a re-tier made up the next day would run just before its own."""
    def grace(settings: Settings) -> int:
        hour, minute = getattr(getattr(settings, section), key).split(":")
        at = int(hour) * 3600 + int(minute) * 60
        quiet_start, quiet_end = parse_quiet_hours(settings.outbox.quiet_hours)
        until = 24 * 3600
        start = quiet_start.hour * 3600 + quiet_start.minute * 60
        if quiet and quiet_start != quiet_end and start > at:
            until = start
        return max(60, until - at)

    return grace


def _daily(key: str, section: str = "scheduler") -> Callable[[Settings], Any]:
    def trigger(settings: Settings) -> Any:
        hour, minute = getattr(getattr(settings, section), key).split(":")
        return CronTrigger(hour=int(hour), minute=int(minute), timezone=settings.tz)

    return trigger


def _every(key: str, unit: str, section: str = "scheduler") -> Callable[[Settings], Any]:
    return lambda settings: IntervalTrigger(**{unit: getattr(getattr(settings, section), key)}, timezone=settings.tz)


# Job functions are stored by reference in the job store; the scheduler replaces a stored job whose
# reference changed (a module move) when it reconciles the declared list at start.
JOBS_MODULE = "bot.schedule.jobs"
JOBS: tuple[JobSpec, ...] = (
    JobSpec("nightly_retier", f"{JOBS_MODULE}:nightly_retier", "re-tier everyone, then order/tier auto-tags",
            _daily("retier_at"), grace=_rest_of_the_day("retier_at")),
    JobSpec("contacts_resync", f"{JOBS_MODULE}:contacts_resync", "full contact and group reconcile with WeCom",
            _daily("contacts_resync_at"), grace=_rest_of_the_day("contacts_resync_at")),
    JobSpec("moments_poll", f"{JOBS_MODULE}:moments_poll", "poll moment likes and comments",
            _every("moments_poll_minutes", "minutes")),
    JobSpec("tags_push", f"{JOBS_MODULE}:tags_push", "push tags put on here to WeCom",
            _every("tags_push_minutes", "minutes")),
    JobSpec("outbox_sweep", f"{JOBS_MODULE}:outbox_sweep", "send pending conversational messages",
            _every("outbox_sweep_seconds", "seconds")),
    JobSpec("holiday_greetings", f"{JOBS_MODULE}:holiday_greetings", "节假日问候 (lunar holidays) and 生日礼品",
            _daily("send_at", "greetings"), grace=_rest_of_the_day("send_at", "greetings", quiet=True)),
    JobSpec("mass_send", f"{JOBS_MODULE}:mass_send", "submit due mass messages (deferred past quiet hours)",
            _every("outbox_sweep_seconds", "seconds")),
    JobSpec("mass_results", f"{JOBS_MODULE}:mass_results", "record which mass messages members actually sent",
            _every("tags_push_minutes", "minutes")),
    JobSpec("mass_reminders", f"{JOBS_MODULE}:mass_reminders", "remind members of unconfirmed mass messages (≤3/24 h)",
            _every("tags_push_minutes", "minutes")),
    JobSpec("broadcast_dispatch", f"{JOBS_MODULE}:broadcast_dispatch", "plan due broadcasts and scheduled tier coupons",
            _every("dispatch_minutes", "minutes", "broadcasts")),
    JobSpec("coupon_pushes", f"{JOBS_MODULE}:coupon_pushes", "coupon after each paid order; expire old coupons",
            _every("dispatch_minutes", "minutes", "broadcasts")),
    JobSpec("sequences", f"{JOBS_MODULE}:sequences", "follow-up sequence steps that came due",
            _every("run_every_minutes", "minutes", "sequences")),
    JobSpec("tier_actions", f"{JOBS_MODULE}:tier_actions", "actions on tier changes (VIP welcome, win-back, alerts)",
            _every("tags_push_minutes", "minutes")),
    JobSpec("transfer_results", "bot.schedule.handover_jobs:transfer_results",
            "record how waiting hand-overs ended (在职/离职继承)", _every("tags_push_minutes", "minutes")),
)


class SharedEngineJobStore(SQLAlchemyJobStore):
    """APScheduler's job store on the app's own engine, which the web's request threads and the
    worker use too. APScheduler disposes its store's engine when the scheduler shuts down, as when a
    scheduler loses the Redis lock and stands down: that left the connections other threads held
    attached to a discarded pool, closed only when the garbage collector found them. The engine is
    the Database's to dispose (at process exit)."""

    def shutdown(self) -> None:
        return None


def build_scheduler(settings: Settings, db: Database) -> BackgroundScheduler:
    store = SharedEngineJobStore(engine=db.engine, tablename=JOBSTORE_TABLE)
    return BackgroundScheduler(jobstores={"default": store}, timezone=settings.tz,
                               executors={"default": ThreadPoolExecutor(10), PUSHES_EXECUTOR: ThreadPoolExecutor(1)},
                               job_defaults={"coalesce": True, "max_instances": 1,
                                             "misfire_grace_time": MISFIRE_GRACE_SECONDS})


def reconcile_jobs(scheduler: BackgroundScheduler, settings: Settings) -> None:
    """Make the stored jobs exactly :data:`JOBS`: add or replace each, remove any other. A stored job
    whose trigger, function and executor are unchanged keeps its next run time: replacing it computed
    the next run from now, so a run due while the service was down (the day's greetings, the nightly
    re-tier, a restart a few minutes after their time) was skipped instead of made up (within the
    job's misfire grace)."""
    wanted = {spec.id for spec in JOBS}
    stored = {job.id: job for job in scheduler.get_jobs()}
    for job_id in stored.keys() - wanted:
        scheduler.remove_job(job_id)
    for spec in JOBS:
        trigger, job, grace = spec.trigger(settings), stored.get(spec.id), spec.misfire_grace(settings)
        if job is not None and str(job.trigger) == str(trigger) and job.func_ref == spec.func \
                and job.executor == spec.executor and str(job.trigger.timezone) == str(trigger.timezone):
            if job.misfire_grace_time != grace:
                scheduler.modify_job(spec.id, misfire_grace_time=grace)
            if job.name != spec.description:
                scheduler.modify_job(spec.id, name=spec.description)
            continue
        scheduler.add_job(spec.func, trigger=trigger, id=spec.id, name=spec.description, executor=spec.executor,
                          misfire_grace_time=grace, replace_existing=True)


class SchedulerLock:
    """``SET key token NX EX ttl`` in Redis, renewed by its holder; released on stop."""

    RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('expire', KEYS[1], ARGV[2]) end return 0"
    RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"

    def __init__(self, redis_url: str, key: str, ttl: int) -> None:
        import redis

        self.client = redis.Redis.from_url(redis_url)
        self.key, self.ttl, self.token = key, ttl, secrets.token_hex(16)

    def acquire_or_renew(self, held: bool) -> bool:
        if held:
            return bool(self.client.eval(self.RENEW, 1, self.key, self.token, self.ttl))
        return bool(self.client.set(self.key, self.token, nx=True, ex=self.ttl))

    def release(self) -> None:
        self.client.eval(self.RELEASE, 1, self.key, self.token)
        self.client.close()


class DatabaseLock:
    """Without Redis, the same lock as a lease row in the database (scheduler_leases): taken when free or
    expired, renewed by its holder, given back on stop."""

    NAME = "scheduler"

    def __init__(self, db: Database, ttl: int) -> None:
        self.db, self.ttl, self.token = db, ttl, secrets.token_hex(16)

    def acquire_or_renew(self, held: bool) -> bool:
        now = utcnow()
        until = now + timedelta(seconds=self.ttl)
        with self.db.begin() as session:
            taken = session.execute(update(SchedulerLease).where(
                SchedulerLease.name == self.NAME,
                or_(SchedulerLease.holder == self.token, SchedulerLease.expires_at < now)).values(
                holder=self.token, expires_at=until)).rowcount
            if taken:
                return True
            if held or session.get(SchedulerLease, self.NAME) is not None:
                return False  # another process holds it (or took it over from this one)
            try:
                with session.begin_nested():
                    session.add(SchedulerLease(name=self.NAME, holder=self.token, expires_at=until))
            except IntegrityError:  # another process took the free lease first
                return False
        return True

    def release(self) -> None:
        try:
            with self.db.begin() as session:
                session.execute(update(SchedulerLease).where(
                    SchedulerLease.name == self.NAME, SchedulerLease.holder == self.token).values(
                    expires_at=datetime(1970, 1, 1, tzinfo=UTC)))
        except Exception:  # noqa: BLE001 - at exit with the database gone: the lease runs out by itself
            logger.warning("scheduler lease not given back; it lapses in %ds", self.ttl)


class SchedulerService:
    """Runs the scheduler while it holds the lock: in Redis when configured, else a lease row in the
    database, so however many processes start one, one runs the jobs."""

    def __init__(self, settings: Settings, db: Database, clients: Any = None, sender: Any = None) -> None:
        self.settings, self.db = settings, db
        install(Runtime(settings, db, clients, sender, RuleReloader(db, settings)))
        self.scheduler: BackgroundScheduler | None = None
        self.lock: SchedulerLock | DatabaseLock = (
            SchedulerLock(settings.redis.url, f"{settings.redis.key_prefix}:scheduler:lock",
                          settings.scheduler.lock_seconds) if settings.redis.url
            else DatabaseLock(db, settings.scheduler.lock_seconds))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def active(self) -> bool:
        return self.scheduler is not None and self.scheduler.running

    def start(self) -> SchedulerService:
        try:
            self.tick()  # the first round at once: a process alone is active when start returns
        except Exception:  # noqa: BLE001 - the standby loop tries again
            logger.exception("scheduler lock round failed")
        self._thread = threading.Thread(target=self._standby, name="scrm-scheduler-lock", daemon=True)
        self._thread.start()
        return self

    def tick(self) -> None:
        """One lock round: take or renew the lock; start or stop the scheduler to match."""
        held = self.lock.acquire_or_renew(self.active)
        if held and not self.active:
            self._activate()
        elif not held and self.active:
            logger.warning("scheduler lock lost; standing by")
            self._deactivate()

    def _standby(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - Redis hiccups must not kill the standby loop
                logger.exception("scheduler lock round failed")
            self._stop.wait(max(1.0, self.settings.scheduler.lock_seconds / 3))

    def _activate(self) -> None:
        self.scheduler = build_scheduler(self.settings, self.db)
        self.scheduler.start(paused=True)
        reconcile_jobs(self.scheduler, self.settings)
        self.scheduler.resume()
        logger.info("scheduler active with %d jobs", len(JOBS))

    def _deactivate(self) -> None:
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        self.scheduler = None

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        self._deactivate()
        self.lock.release()


def job_table(settings: Settings, db: Database, now: datetime | None = None) -> list[list[str]]:
    """Each declared job with its trigger and next run time, read from the job store (or, for a
    job no scheduler has stored yet, computed from its trigger as of ``now``). Changes nothing: no
    scheduler is started, since even a paused one reschedules due jobs and submits them."""
    now = now or datetime.now(settings.tz)
    stored = stored_job_states(db)
    rows = []
    for spec in JOBS:
        state = stored.get(spec.id)
        trigger = state["trigger"] if state else spec.trigger(settings)
        next_run = state["next_run_time"] if state else trigger.get_next_fire_time(None, now.astimezone(settings.tz))
        shown = local_time(next_run, settings.tz, seconds=True) if next_run else "- (paused)"
        rows.append([spec.id, str(trigger), shown + ("" if state else " (not yet stored)"), spec.description])
    return rows


def stored_job_states(db: Database) -> dict[str, dict[str, Any]]:
    """The job store's rows, read only (none if no scheduler has created the store yet). Each state is
    what APScheduler pickled there itself; nothing else writes that table."""
    if not inspect(db.engine).has_table(JOBSTORE_TABLE):
        return {}
    table = Table(JOBSTORE_TABLE, MetaData(), Column("id", Unicode(191)), Column("job_state", LargeBinary))
    with db.engine.connect() as conn:
        return {job_id: pickle.loads(state) for job_id, state in conn.execute(select(table.c.id, table.c.job_state))}
