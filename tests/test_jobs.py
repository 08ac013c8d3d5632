"""Periodic jobs: one run per interval cluster-wide, every run recorded, a failing job never stops the loop."""

from __future__ import annotations

import asyncio
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import psycopg
import pytest
import redis.asyncio as aredis
from asgiref.sync import sync_to_async
from django.utils import timezone

from pools import jobs, locks
from pools.jobs import JOBS, Runner, periodic, run_job
from pools.locks import LocalLock, PgAdvisoryLock, RedisLock
from pools.models import JobRun
from pools.settings import update_runtime

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]

REDIS_URL = "redis://127.0.0.1:6379/15"
PG_TEST = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
def register() -> Iterator[Callable[..., str]]:
    """Register throwaway jobs under unique names; they leave the registry after the test."""
    added: list[str] = []

    def add(func, interval: Callable = lambda rt: 3600) -> str:
        name = f"test-{func.__name__}-{uuid.uuid4().hex[:8]}"
        periodic(name, interval=interval)(func)
        added.append(name)
        return name

    yield add
    for name in added:
        JOBS.pop(name, None)


async def job_run(name: str) -> JobRun:
    return await JobRun.objects.aget(name=name)


async def test_it_records_a_run(register) -> None:
    async def tidy() -> str:
        return "tidied 3 things"

    name = register(tidy)
    result = await run_job(name)

    assert (result.outcome, result.message, result.ran) == ("ok", "tidied 3 things", True)
    run = await job_run(name)
    assert (run.outcome, run.message, run.runs) == ("ok", "tidied 3 things", 1)
    assert run.last_started_at <= run.last_finished_at
    assert run.duration_ms is not None

    await run_job(name)
    assert (await job_run(name)).runs == 2


async def test_it_records_a_failure(register) -> None:
    async def broken() -> str:
        raise RuntimeError("the disk is full")

    name = register(broken)
    result = await run_job(name)

    assert result.outcome == "failed"
    run = await job_run(name)
    assert (run.outcome, run.message, run.runs) == ("failed", "RuntimeError: the disk is full", 1)


async def test_it_refuses_an_unknown_job() -> None:
    with pytest.raises(KeyError, match="quota_refresh"):
        await run_job("no-such-job")


def test_a_job_module_that_is_missing_fails_loudly(monkeypatch) -> None:
    # A typo in JOB_MODULES must stop the worker, not silently switch the jobs off.
    monkeypatch.setattr(jobs, "JOB_MODULES", (*jobs.JOB_MODULES, "pools.no_such_jobs"))
    with pytest.raises(ModuleNotFoundError, match=r"pools\.no_such_jobs"):
        jobs.load_jobs()


def test_every_periodic_job_and_the_bulk_poller_are_registered() -> None:
    assert set(jobs.load_jobs()) == {"quota_refresh", "recovery_probe", "proxy_health", "proxy_pool_fetch"}
    assert set(jobs.POLLERS) == {"bulk_tasks"}


async def test_the_loop_survives_a_failing_job(register) -> None:
    async def fails() -> str:
        raise ValueError("boom")

    async def works() -> str:
        return "fine"

    every_moment = lambda rt: 0.001  # noqa: E731 - due at every check
    failing, working = register(fails, every_moment), register(works, every_moment)
    runner = Runner(lock=LocalLock(), only=[failing, working], tick_seconds=0.01, pollers=False)
    loop_task = asyncio.create_task(runner.run_forever())
    try:
        while True:
            runs = {r.name: r async for r in JobRun.objects.filter(name__in=[failing, working])}
            if len(runs) == 2 and min(r.runs for r in runs.values()) >= 3:
                break
            assert not loop_task.done(), loop_task
            await asyncio.sleep(0.02)
        assert not loop_task.done()
        assert (runs[failing].outcome, runs[failing].message) == ("failed", "ValueError: boom")
        assert (runs[working].outcome, runs[working].message) == ("ok", "fine")
    finally:
        loop_task.cancel()
        await asyncio.gather(loop_task, return_exceptions=True)


async def test_it_reads_the_interval_from_the_runtime_settings_each_time(register) -> None:
    calls = []

    async def probe() -> str:
        calls.append(1)
        return "probed"

    name = register(probe, lambda rt: rt.recovery_probe_interval)
    await JobRun.objects.acreate(name=name, last_started_at=timezone.now() - timedelta(seconds=120))
    runner = Runner(lock=LocalLock(), only=[name], pollers=False)

    await sync_to_async(update_runtime)(recovery_probe_interval=3600)
    assert (await runner.run_if_due(JOBS[name])).outcome == "not_due"
    await sync_to_async(update_runtime)(recovery_probe_interval=60)
    assert (await runner.run_if_due(JOBS[name])).outcome == "ok"
    await sync_to_async(update_runtime)(recovery_probe_interval=0)
    assert (await runner.run_if_due(JOBS[name])).outcome == "off"
    assert calls == [1]


# --- the lock: two runners in two threads, each with its own event loop and lock ------------


def redis_lock() -> tuple[RedisLock, Callable]:
    client = aredis.Redis.from_url(REDIS_URL, decode_responses=True)
    return RedisLock(lambda: client, prefix="test-job-lock:"), client.aclose  # job names are unique per test


def pg_lock() -> tuple[PgAdvisoryLock, Callable]:
    lock = PgAdvisoryLock(PG_TEST)
    return lock, lock.close


def local_lock() -> tuple[LocalLock, Callable]:
    async def nothing() -> None:
        pass

    return LocalLock(), nothing


@pytest.mark.parametrize("make_lock", [redis_lock, pg_lock, local_lock], ids=["redis", "postgresql", "process"])
def test_two_runners_race_and_the_job_runs_once(register, make_lock) -> None:
    entered, release = threading.Event(), threading.Event()
    calls: list[str] = []

    async def slow() -> str:
        calls.append(threading.current_thread().name)
        entered.set()
        await asyncio.to_thread(release.wait, 30)
        return "ran once"

    name = register(slow)
    barrier = threading.Barrier(2)
    results: list[jobs.RunResult] = []

    async def contend() -> jobs.RunResult:
        lock, close = make_lock()
        runner = Runner(lock=lock, only=[name], pollers=False)
        try:
            barrier.wait(10)
            return await runner.run_if_due(JOBS[name])
        finally:
            await runner.close()
            await close()

    def thread_main() -> None:
        results.append(asyncio.run(contend()))

    threads = [threading.Thread(target=thread_main, name=f"runner-{i}") for i in range(2)]
    for thread in threads:
        thread.start()
    try:
        assert entered.wait(20)
        # The winner is inside the job and holds the lock: the other runner must give up on the lock.
        for thread in threads:
            if thread.name != calls[0]:
                thread.join(20)
        assert [r.outcome for r in results] == ["locked"]
    finally:
        release.set()
        for thread in threads:
            thread.join(20)
    assert sorted(r.outcome for r in results) == ["locked", "ok"]
    assert len(calls) == 1
    run = JobRun.objects.get(name=name)
    assert (run.runs, run.outcome, run.message) == (1, "ok", "ran once")


def test_a_finished_run_is_not_repeated_within_its_interval(register) -> None:
    calls = []

    async def once() -> str:
        calls.append(1)
        return "done"

    name = register(once)

    async def two_runners() -> list[str]:
        first = Runner(lock=LocalLock(), only=[name], pollers=False)
        second = Runner(lock=LocalLock(), only=[name], pollers=False)
        return [(await runner.run_if_due(JOBS[name])).outcome for runner in (first, second)]

    assert asyncio.run(two_runners()) == ["ok", "not_due"]
    assert calls == [1]


async def test_the_redis_lock_expires_and_only_its_owner_releases_it() -> None:
    client = aredis.Redis.from_url(REDIS_URL, decode_responses=True)
    prefix = f"test-job-lock-{uuid.uuid4().hex[:6]}:"
    try:
        mine, theirs = RedisLock(lambda: client, prefix=prefix, ttl=30), RedisLock(lambda: client, prefix=prefix)
        # (the prefix is unique to this run, so concurrent runs of the suite cannot collide)
        assert await mine.acquire("job")
        assert 0 < await client.pttl(prefix + "job") <= 30_000  # a killed worker's lock frees itself
        assert not await theirs.acquire("job")
        await theirs.release("job")  # not theirs to release
        assert await client.exists(prefix + "job")
        await mine.release("job")
        assert not await client.exists(prefix + "job")
        assert await theirs.acquire("job")
        await theirs.release("job")
    finally:
        await client.aclose()


async def test_the_advisory_lock_is_per_session() -> None:
    name = f"job-{uuid.uuid4().hex[:8]}"
    first, second = PgAdvisoryLock(PG_TEST), PgAdvisoryLock(PG_TEST)
    try:
        assert await first.acquire(name)
        assert not await second.acquire(name)
        await first.release(name)
        assert await second.acquire(name)
        assert not await first.acquire(name)
        await second.close()  # the session ends: PostgreSQL drops its locks once the backend has exited
        while True:
            if await first.acquire(name):
                break
            await asyncio.sleep(0.05)
        await first.release(name)
    finally:
        await first.close()
        await second.close()
    async with await psycopg.AsyncConnection.connect(PG_TEST) as conn:
        cursor = await conn.execute(
            "select count(*) from pg_locks where locktype = 'advisory' and classid = %s and objid = %s",
            (locks.ADVISORY_NAMESPACE, locks.advisory_key(name) & 0xFFFFFFFF),
        )
        assert (await cursor.fetchone())[0] == 0


async def test_the_advisory_lock_connects_with_the_django_database_settings() -> None:
    # tests/conftest.py defines the alias "pg" for PostgreSQL next to the SQLite default.
    lock = PgAdvisoryLock(alias="pg")
    try:
        assert "host=127.0.0.1" in locks.django_conninfo("pg")
        name = f"job-{uuid.uuid4().hex[:8]}"
        assert await lock.acquire(name)
        await lock.release(name)
    finally:
        await lock.close()


def test_it_picks_the_lock_from_the_deployment(settings) -> None:
    settings.REDIS_URL = REDIS_URL
    assert isinstance(locks.default_lock(), RedisLock)
    settings.REDIS_URL = ""
    assert isinstance(locks.default_lock(), LocalLock)  # the suite runs on SQLite


# --- the worker's scheduler ---------------------------------------------------------------


async def test_the_scheduler_starts_once_and_runs_due_jobs(register, settings) -> None:
    settings.PERIODIC_JOBS = True
    seen = asyncio.Event()

    async def heartbeat() -> str:
        seen.set()
        return "beat"

    name = register(heartbeat)
    try:
        assert jobs.ensure_scheduler() is True
        assert jobs.ensure_scheduler() is False  # already running: a cheap no-op
        await asyncio.wait_for(seen.wait(), 30)
        while True:  # the run is recorded just after the job returns
            if await JobRun.objects.filter(name=name, runs=1).aexists():
                break
            await asyncio.sleep(0.02)
        assert {"quota_refresh", "recovery_probe"} <= set(JOBS)
    finally:
        await jobs.stop_scheduler()
    assert jobs._scheduler.task is None


async def test_the_scheduler_stays_off_when_disabled(settings) -> None:
    settings.PERIODIC_JOBS = False
    assert jobs.ensure_scheduler() is False
    assert jobs._scheduler.task is None


# --- the production shape: worker processes on PostgreSQL (+ Redis) ------------------------

ASGI = Path(__file__).resolve().parents[1] / "grok2api" / "asgi.py"


@pytest.mark.skipif("ensure_scheduler" not in ASGI.read_text(), reason="grok2api/asgi.py does not start the runner yet")
@pytest.mark.timeout(180)
@pytest.mark.parametrize("use_redis", [True, False], ids=["redis-lock", "advisory-lock"])
def test_three_workers_run_each_job_once(fake_grok, use_redis: bool) -> None:
    from tests.multiworker import Cluster

    fake_grok.reset()
    env = {"LOG_LEVEL": "DEBUG", "PERIODIC_JOBS": "true"}
    with Cluster(workers=3, fake_url=fake_grok.base_url, redis=use_redis, env=env) as cluster:
        for url in cluster.urls:  # each worker's first request starts its runner (the harness made one already)
            assert httpx.get(url + "/health", timeout=10).status_code == 200
        # Wait until every worker has made its first attempt at quota_refresh (ran it, found it
        # not due, or found it locked), then count the runs: one, whichever worker won.
        while True:
            tried = [re.search(r"periodic job quota_refresh: (ok|failed|not_due|locked)", cluster.log(i))
                     for i in range(3)]
            if all(tried):
                break
            time.sleep(0.1)
        assert [m.group(1) for m in tried].count("ok") == 1, [m.group(0) for m in tried]
        runs = dict(cluster.sql("select name, runs from pools_jobrun where last_finished_at is not null"))
        assert runs["quota_refresh"] == 1
