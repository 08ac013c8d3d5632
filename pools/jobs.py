"""Periodic jobs: registered here, run in every worker, once per interval cluster-wide.

`pools.schedule` registers the jobs with `@periodic(name, interval)`; `interval`
reads the runtime settings each time it is asked, so a change in the admin applies
at the next check (0 or less switches the job off). It also registers pollers
(`@poller(name, every)`): work each worker does on its own every few seconds,
without a lock or a `JobRun` (picking up queued admin bulk tasks). `load_jobs()`
imports the modules in `JOB_MODULES`; one that is missing is an error, never a
job silently switched off.

`ensure_scheduler()` (cheap, idempotent; called on each worker's first request)
starts one asyncio task per worker process that checks every `TICK` seconds
which jobs are due. For a due job it takes a cluster-wide lock (`pools.locks`):

    REDIS_URL set        Redis `SET key token NX PX ttl`, renewed while the job runs
    PostgreSQL           `pg_try_advisory_lock` on a connection of the runner's own
    otherwise (SQLite)   a lock in this process (SQLite deployments are one process)

then, under the lock, reads the job's `JobRun` row: only if its last start is an
interval old does it run the job. So a job runs once per interval across all
workers, whichever worker gets there first. Each run is recorded in `JobRun`
(start, finish, duration, outcome ok/failed, message, runs); an exception is
logged and recorded and never stops the loop. The same loop runs the pollers.
`await run_job(name)` runs one job now.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from pools.locks import JobLock, default_lock
from pools.models import JobRun
from pools.settings import Runtime, aget_runtime

logger = logging.getLogger(__name__)

JobFunc = Callable[[], Awaitable[str | None]]  # returns a short message for the admin

# Modules whose import registers jobs and pollers.
JOB_MODULES = ("pools.schedule",)
TICK = 1.0  # seconds between due checks in one worker
LOCKED_RETRY = 5.0  # seconds before a worker looks again at a job another worker holds
MESSAGE_MAX = 2000


@dataclass(frozen=True)
class Job:
    name: str
    interval: Callable[[Runtime], float]  # seconds between runs; <= 0 disables the job
    func: JobFunc


@dataclass(frozen=True)
class Poller:
    name: str
    every: float  # seconds between two runs in one worker
    func: Callable[[], Coroutine[object, None, object]]


JOBS: dict[str, Job] = {}
POLLERS: dict[str, Poller] = {}


def periodic(name: str, interval: Callable[[Runtime], float]) -> Callable[[JobFunc], JobFunc]:
    def register(func: JobFunc) -> JobFunc:
        JOBS[name] = Job(name, interval, func)
        return func

    return register


PollFunc = Callable[[], Coroutine[object, None, object]]


def poller(name: str, every: float) -> Callable[[PollFunc], PollFunc]:
    def register(func: PollFunc) -> PollFunc:
        POLLERS[name] = Poller(name, every, func)
        return func

    return register


def load_jobs() -> dict[str, Job]:
    """Import the job modules (once; later calls are dictionary lookups) and return the registry."""
    for module in JOB_MODULES:
        importlib.import_module(module)  # a missing module fails here, loudly
    return JOBS


@dataclass(frozen=True)
class RunResult:
    name: str
    outcome: str  # ok | failed: it ran; locked | not_due | off: it did not
    message: str = ""
    started_at: datetime | None = None

    @property
    def ran(self) -> bool:
        return self.outcome in ("ok", "failed")


# --- JobRun rows -------------------------------------------------------------------------


def _claim_run(name: str, interval: float, now: datetime, force: bool) -> tuple[bool, datetime | None]:
    """Under the job's lock: mark it started if it is due (or forced); else say when it last started."""
    with transaction.atomic():
        run, _ = JobRun.objects.get_or_create(name=name)
        last = run.last_started_at
        if not force and last is not None and now - last < timedelta(seconds=interval):
            return False, last
        JobRun.objects.filter(pk=run.pk).update(last_started_at=now)
        return True, now


def _finish_run(name: str, outcome: str, message: str, duration: float) -> None:
    JobRun.objects.filter(name=name).update(
        last_finished_at=timezone.now(),
        duration_ms=max(0, round(duration * 1000)),
        outcome=outcome,
        message=message[:MESSAGE_MAX],
        runs=F("runs") + 1,
    )


# --- the runner -----------------------------------------------------------------------


@dataclass
class Runner:
    """Runs due jobs of this worker under cluster-wide locks. One per worker process (and per test loop)."""

    lock: JobLock = field(default_factory=default_lock)
    only: Iterable[str] | None = None  # job names; None: every registered job
    tick_seconds: float = TICK
    pollers: bool = True  # also run the registered pollers
    _last_started: dict[str, datetime] = field(default_factory=dict, init=False)
    _retry_at: dict[str, float] = field(default_factory=dict, init=False)
    _running: dict[str, asyncio.Task] = field(default_factory=dict, init=False)
    _polls: dict[str, asyncio.Task] = field(default_factory=dict, init=False)
    _poll_at: dict[str, float] = field(default_factory=dict, init=False)

    def jobs(self) -> list[Job]:
        names = set(self.only) if self.only is not None else None
        return [job for name, job in list(JOBS.items()) if names is None or name in names]

    async def run_if_due(self, job: Job, runtime: Runtime | None = None) -> RunResult:
        """Take the lock, and run the job if no worker has started it within its interval."""
        runtime = runtime or await aget_runtime()
        interval = job.interval(runtime)
        if interval <= 0:
            return RunResult(job.name, "off")
        return await self._locked(job, interval, force=False)

    async def run_now(self, job: Job) -> RunResult:
        """Run the job now, whatever its interval, unless another worker is running it."""
        return await self._locked(job, 0, force=True)

    async def _locked(self, job: Job, interval: float, *, force: bool) -> RunResult:
        if not await self.lock.acquire(job.name):
            return RunResult(job.name, "locked")
        try:
            due, started = await sync_to_async(_claim_run, thread_sensitive=True)(
                job.name, interval, timezone.now(), force
            )
            if not due or started is None:
                return RunResult(job.name, "not_due", started_at=started)
            return await self._execute(job, started)
        finally:
            try:
                await self.lock.release(job.name)
            except Exception:
                logger.warning("periodic job %s: could not release its lock", job.name, exc_info=True)

    async def _execute(self, job: Job, started: datetime) -> RunResult:
        began = time.monotonic()
        try:
            message = await job.func() or ""
            outcome = "ok"
        except asyncio.CancelledError:
            await self._record(job.name, "failed", "interrupted: the worker stopped", time.monotonic() - began)
            raise
        except Exception as exc:
            logger.exception("periodic job %s failed", job.name)
            outcome, message = "failed", f"{type(exc).__name__}: {exc}"
        await self._record(job.name, outcome, message, time.monotonic() - began)
        logger.info("periodic job %s: %s %s", job.name, outcome, message)
        return RunResult(job.name, outcome, message, started)

    @staticmethod
    async def _record(name: str, outcome: str, message: str, duration: float) -> None:
        try:
            await sync_to_async(_finish_run, thread_sensitive=True)(name, outcome, message, duration)
        except Exception:
            logger.exception("periodic job %s: could not record its run", name)

    async def tick(self) -> None:
        """Start each due job that is not already running in this worker (each as a task of its own)."""
        runtime = await aget_runtime()
        now = timezone.now()
        clock = asyncio.get_running_loop().time()
        for job in self.jobs():
            running = self._running.get(job.name)
            if running is not None and not running.done():
                continue
            interval = job.interval(runtime)
            if interval <= 0 or self._retry_at.get(job.name, 0.0) > clock:
                continue
            last = self._last_started.get(job.name)
            if last is not None and now - last < timedelta(seconds=interval):
                continue
            self._running[job.name] = asyncio.create_task(self._attempt(job, runtime), name=f"job:{job.name}")
        if self.pollers:
            for poll in list(POLLERS.values()):
                running = self._polls.get(poll.name)
                if clock >= self._poll_at.get(poll.name, 0.0) and (running is None or running.done()):
                    self._poll_at[poll.name] = clock + poll.every
                    self._polls[poll.name] = asyncio.create_task(poll.func(), name=f"poll:{poll.name}")

    async def _attempt(self, job: Job, runtime: Runtime) -> None:
        try:
            result = await self.run_if_due(job, runtime)
        except Exception:
            logger.exception("periodic job %s: could not take its lock or read its last run", job.name)
            self._retry_at[job.name] = asyncio.get_running_loop().time() + LOCKED_RETRY
            return
        if result.outcome == "locked":
            logger.debug("periodic job %s: locked: another worker is running it", job.name)
            self._retry_at[job.name] = asyncio.get_running_loop().time() + LOCKED_RETRY
        elif result.started_at is not None:
            if result.outcome == "not_due":
                logger.debug("periodic job %s: not_due: another worker ran it at %s", job.name, result.started_at)
            self._last_started[job.name] = result.started_at

    async def run_forever(self) -> None:
        try:
            while True:
                try:
                    await self.tick()
                except Exception:
                    logger.exception("periodic job runner: a check failed; trying again")
                await asyncio.sleep(self.tick_seconds)
        finally:
            await self.close()

    async def close(self) -> None:
        tasks = [t for t in (*self._running.values(), *self._polls.values()) if not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await self.lock.close()
        except Exception:
            logger.warning("periodic job runner: could not close its lock", exc_info=True)


# --- this process's scheduler ----------------------------------------------------------


@dataclass
class _Scheduler:
    task: asyncio.Task | None = None
    guard: threading.Lock = field(default_factory=threading.Lock)


_scheduler = _Scheduler()


def _alive(task: asyncio.Task | None) -> bool:
    return task is not None and not task.done() and not task.get_loop().is_closed()


def ensure_scheduler() -> bool:
    """Start this worker's job runner on the running event loop, once; True when this call started it.

    Cheap after the first call (an attribute check). Does nothing outside an event
    loop, or when `settings.PERIODIC_JOBS` is False (the test suite).
    """
    if _alive(_scheduler.task) or not getattr(settings, "PERIODIC_JOBS", True):
        return False
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return False
    with _scheduler.guard:
        if _alive(_scheduler.task):
            return False
        load_jobs()
        runner = Runner()
        # A fresh context: the task must not inherit the request it started in (its request id,
        # or asgiref's thread-sensitive context, whose executor ends with that request).
        _scheduler.task = loop.create_task(
            runner.run_forever(), name="grok2api-periodic-jobs", context=contextvars.Context()
        )
    logger.info("periodic job runner started: %s", ", ".join(sorted(JOBS)) or "no jobs")
    return True


async def stop_scheduler() -> None:
    """Stop this worker's runner (shutdown, tests). Call it on the loop the runner runs on."""
    task, _scheduler.task = _scheduler.task, None
    if task is None or task.done():
        return
    loop = task.get_loop()
    if loop is asyncio.get_running_loop():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    elif not loop.is_closed():
        loop.call_soon_threadsafe(task.cancel)


async def run_job(name: str) -> RunResult:
    """Run one registered job now (admin "run now", tests), under its lock; records its `JobRun`."""
    jobs = load_jobs()
    if name not in jobs:
        raise KeyError(f"no periodic job {name!r}; registered: {', '.join(sorted(jobs))}")
    runner = Runner(only=[name], pollers=False)
    try:
        return await runner.run_now(jobs[name])
    finally:
        await runner.close()
