"""Workers outlive their connections: PostgreSQL backends killed, Redis restarted, no worker restart.

The API handler runs without Django's request signals, so nothing closes a broken
connection between two requests: the database backend (`grok2api.db.postgresql`)
replaces one before it hands it out, and the Redis clients (`pools.shared`) retry a
command on a fresh connection. Each dead connection may cost the request that was
using it when it died, and nothing more.
"""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
import pytest
import redis
from asgiref.sync import sync_to_async
from django.db import OperationalError, connections, transaction

from pools import locks
from pools.locks import PgAdvisoryLock
from pools.models import Account
from tests.multiworker import Cluster, free_port

pytestmark = pytest.mark.timeout(240)

CHAT = {"model": "grok-chat-fast", "messages": [{"role": "user", "content": "hi"}]}
CONSECUTIVE = 10  # requests per worker that must all succeed once it recovered
PG_TEST = "postgresql://postgres@127.0.0.1:5432/test"
IN_PROCESS = pytest.mark.django_db(transaction=True, databases=["default", "pg"], available_apps=["pools"])


def _terminate(where: str, params: tuple) -> list[int]:
    """Kill the sessions `SELECT pid … WHERE <where>` finds and wait until they are gone; returns their pids."""
    with psycopg.connect(PG_TEST, autocommit=True) as admin:
        pids = [pid for (pid,) in admin.execute(f"SELECT pid FROM pg_stat_activity WHERE {where}", params)]
        for pid in pids:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        for _ in range(1000):  # a backend exits a moment after it was told to
            if not admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)).fetchall():
                return pids
            time.sleep(0.01)
    raise AssertionError(f"sessions {pids} did not exit")


def _backend_pid(alias: str = "pg") -> int:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


@IN_PROCESS
def test_the_backend_replaces_a_connection_its_server_closed() -> None:
    first = _backend_pid()
    assert _terminate("pid = %s", (first,)) == [first]
    second = _backend_pid()  # on a new session, not an error
    assert second != first
    assert Account.objects.using("pg").count() == 0


@IN_PROCESS
async def test_the_async_orm_gets_a_new_connection_after_the_server_closed_its_own() -> None:
    test_database = connections["pg"].settings_dict["NAME"]
    assert test_database != "test"  # pytest-django's own database, not the one PG_TEST names
    try:
        assert await Account.objects.using("pg").acount() == 0
        _terminate("datname = %s", (test_database,))
        assert await Account.objects.using("pg").acount() == 0
    finally:
        # The async ORM's thread keeps its connection; the test database can only be dropped without it.
        await sync_to_async(connections.close_all, thread_sensitive=True)()


@IN_PROCESS
def test_a_transaction_whose_connection_died_fails_and_the_next_statement_reconnects() -> None:
    with pytest.raises(OperationalError), transaction.atomic(using="pg"):
        first = _backend_pid()
        _terminate("pid = %s", (first,))
        _backend_pid()  # inside the transaction: no new session can take its place
    assert _backend_pid() != first


async def test_the_advisory_lock_takes_a_new_session_after_its_own_was_killed() -> None:
    name = f"job-{uuid.uuid4().hex[:8]}"
    lock = PgAdvisoryLock(PG_TEST)
    try:
        assert await lock.acquire(name)
        key = (locks.ADVISORY_NAMESPACE, locks.advisory_key(name) & 0xFFFFFFFF)
        holder = "pid IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = %s AND objid = %s)"
        assert len(_terminate(holder, key)) == 1
        await lock.release(name)  # its session is gone, and the lock with it
        assert await lock.acquire(name)  # on a new session
        assert len(_terminate(holder, key)) == 1
        assert await lock.acquire(name)  # the dead session is noticed before the statement
        await lock.release(name)
    finally:
        await lock.close()


def _request(client: httpx.Client, url: str, kind: str = "chat") -> int:
    if kind == "models":
        return client.get(url + "/v1/models").status_code
    reply = client.post(url + "/v1/chat/completions", json=CHAT)
    if reply.status_code == 200:
        assert reply.json()["choices"][0]["message"]["content"] == "You said: hi"
    return reply.status_code


def _start(cluster: Cluster, prefix: str) -> httpx.Client:
    cluster.manage("import_tokens", "-", "--type", "basic", input=f"{prefix}-1\n{prefix}-2\n")
    client = httpx.Client(headers=cluster.headers, timeout=60)
    for url in cluster.urls:
        assert _request(client, url) == 200
        assert _request(client, url, "models") == 200
    return client


def _terminate_backends(cluster: Cluster) -> int:
    """Kill every session the workers have open on their database; returns how many there were."""
    rows = cluster.sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
        (cluster.database,),
    )
    return sum(1 for (killed,) in rows if killed)


class _Load:
    """Threads sending chat requests to every worker until stopped; counts what came back after `mark()`."""

    def __init__(self, client: httpx.Client, urls: list[str], threads: int = 4) -> None:
        self.client, self.urls, self.threads = client, urls, threads
        self.stop = threading.Event()
        self.lock = threading.Condition()
        self.marked = False
        self.before: list[int] = []
        self.after: list[int] = []
        self.pool = ThreadPoolExecutor(threads)

    def __enter__(self) -> _Load:
        self.futures = [self.pool.submit(self._run, i) for i in range(self.threads)]
        return self

    def _run(self, index: int) -> None:
        n = index
        while not self.stop.is_set():
            with self.lock:
                after = self.marked
            status = _request(self.client, self.urls[n % len(self.urls)])
            n += 1
            with self.lock:
                (self.after if after else self.before).append(status)
                self.lock.notify_all()

    def wait_for(self, count: int, *, after: bool) -> None:
        with self.lock:
            assert self.lock.wait_for(lambda: len(self.after if after else self.before) >= count, timeout=120)

    def mark(self) -> None:
        with self.lock:
            self.marked = True

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for future in self.futures:
            future.result()
        self.pool.shutdown()


def _recover(client: httpx.Client, url: str, budget: int) -> list[int]:
    """Requests to one worker until CONSECUTIVE in a row succeed, or more than `budget` failed."""
    statuses: list[int] = []
    while statuses[-CONSECUTIVE:] != [200] * CONSECUTIVE and len(statuses) - statuses.count(200) <= budget:
        statuses.append(_request(client, url, "models" if len(statuses) % 2 else "chat"))
    return statuses


@pytest.mark.parametrize("use_redis", [True, False], ids=["redis-leases", "postgres-leases"])
def test_workers_replace_database_connections_killed_under_load(fake_grok, use_redis: bool) -> None:
    fake_grok.reset()
    with Cluster(workers=2, fake_url=fake_grok.base_url, redis=use_redis) as cluster:
        client = _start(cluster, f"conn-pg-{'r' if use_redis else 'p'}")
        with _Load(client, cluster.urls) as load:
            load.wait_for(8, after=False)
            load.mark()
            killed = _terminate_backends(cluster)
            load.wait_for(12, after=True)
        assert killed >= len(cluster.urls)  # each worker had its connection
        recovered = [_recover(client, url, killed) for url in cluster.urls]
        for statuses in recovered:
            assert statuses[-CONSECUTIVE:] == [200] * CONSECUTIVE, statuses
        failed = [s for s in load.after + [s for r in recovered for s in r] if s != 200]
        # A dead connection costs at most the one request that found it dead.
        assert len(failed) <= killed, (killed, load.after, recovered)


def test_an_idle_worker_replaces_database_connections_killed_between_requests(fake_grok) -> None:
    fake_grok.reset()
    with Cluster(workers=1, fake_url=fake_grok.base_url, redis=False) as cluster:
        client = _start(cluster, "conn-idle")
        killed = _terminate_backends(cluster)
        assert killed >= 1
        statuses = _recover(client, cluster.urls[0], killed)
        assert statuses[-CONSECUTIVE:] == [200] * CONSECUTIVE, statuses
        assert len([s for s in statuses if s != 200]) <= killed, statuses


class RedisServer:
    """A redis-server of this test's own on a free loopback port, restarted at will."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1)
        for _ in range(200):
            assert self.proc.poll() is None, "redis-server exited"
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not answer")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


def test_a_worker_reconnects_to_a_restarted_redis(fake_grok, private_redis: RedisServer) -> None:
    fake_grok.reset()
    with Cluster(workers=1, fake_url=fake_grok.base_url, redis_url=private_redis.url) as cluster:
        client = _start(cluster, "conn-redis")
        url = cluster.urls[0]
        burst = 8
        with ThreadPoolExecutor(burst) as pool:
            # Several requests at once leave several connections in the worker's Redis pool.
            assert list(pool.map(lambda _: _request(client, url), range(burst))) == [200] * burst
            private_redis.restart()
            # Each of them now takes one of those dead connections.
            assert list(pool.map(lambda _: _request(client, url), range(burst))) == [200] * burst
        for i in range(CONSECUTIVE):
            assert _request(client, url, "models" if i % 2 else "chat") == 200
        private_redis.restart()  # and once more, while idle
        for i in range(CONSECUTIVE):
            assert _request(client, url, "models" if i % 2 else "chat") == 200
