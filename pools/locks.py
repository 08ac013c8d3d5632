"""Cluster-wide locks for periodic jobs: one holder at a time, across workers and hosts.

    LocalLock        one process (SQLite): a thread lock per name, shared by the process's loops
    RedisLock        `SET key token NX PX ttl`; renewed every ttl/3 while held, so a long job
                     keeps it and a killed worker's lock expires; released only by its owner
    PgAdvisoryLock   `pg_try_advisory_lock` on a connection of its own: held while that
                     session lives, gone when it dies
    default_lock()   Redis when REDIS_URL is set, else PostgreSQL when the database is, else local

Each lock object belongs to one runner (and its event loop); the exclusion is between
lock objects, whichever process or thread holds them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from django.db import connections

from pools import shared
from pools.pg import hung_up

if TYPE_CHECKING:
    import psycopg
    import redis.asyncio as aredis

logger = logging.getLogger(__name__)

LOCK_TTL = 60.0  # Redis lock expiry; renewed every third of it while the holder runs


class JobLock(Protocol):
    async def acquire(self, name: str) -> bool: ...
    async def release(self, name: str) -> None: ...
    async def close(self) -> None: ...


class LocalLock:
    """One process (SQLite): a thread lock per job name, shared by every event loop of the process."""

    _guard = threading.Lock()
    _locks: dict[str, threading.Lock] = {}

    def __init__(self) -> None:
        self._held: set[str] = set()  # a thread lock has no owner: only release what this object took

    async def acquire(self, name: str) -> bool:
        with self._guard:
            lock = self._locks.setdefault(name, threading.Lock())
        if not lock.acquire(blocking=False):
            return False
        self._held.add(name)
        return True

    async def release(self, name: str) -> None:
        if name in self._held:
            self._held.discard(name)
            self._locks[name].release()

    async def close(self) -> None:
        for name in list(self._held):
            await self.release(name)


# Delete or extend the key only while it still holds our token (another worker may own it after expiry).
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"


class RedisLock:
    """`SET key token NX PX ttl`; renewed while held, so a long job keeps it and a killed worker loses it."""

    def __init__(self, client_factory: Callable[[], aredis.Redis | None] | None = None, *,
                 prefix: str = "grok2api:job-lock:", ttl: float = LOCK_TTL) -> None:
        self._client_factory = client_factory or shared.async_redis
        self.prefix = prefix
        self.ttl_ms = int(ttl * 1000)
        self._held: dict[str, tuple[str, asyncio.Task]] = {}

    def _client(self) -> aredis.Redis:
        client = self._client_factory()
        if client is None:  # default_lock() picks this lock only when REDIS_URL is set
            raise RuntimeError("RedisLock needs REDIS_URL")
        return client

    async def acquire(self, name: str) -> bool:
        client = self._client()
        token = uuid.uuid4().hex
        if not await client.set(self.prefix + name, token, nx=True, px=self.ttl_ms):
            return False
        renew = asyncio.create_task(self._renew(client, name, token), name=f"job-lock-renew:{name}")
        self._held[name] = (token, renew)
        return True

    async def _renew(self, client: aredis.Redis, name: str, token: str) -> None:
        while True:
            await asyncio.sleep(self.ttl_ms / 3000)
            try:
                if not await client.eval(_RENEW, 1, self.prefix + name, token, self.ttl_ms):
                    logger.warning("periodic job %s: lost its Redis lock while running", name)
                    return
            except Exception:
                logger.warning("periodic job %s: could not renew its Redis lock", name, exc_info=True)

    async def release(self, name: str) -> None:
        held = self._held.pop(name, None)
        if held is None:
            return
        token, renew = held
        renew.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renew
        await self._client().eval(_RELEASE, 1, self.prefix + name, token)

    async def close(self) -> None:
        for name in list(self._held):
            with contextlib.suppress(Exception):
                await self.release(name)


ADVISORY_NAMESPACE = 0x67726F6B  # "grok": the first key of pg_try_advisory_lock(int, int)


def advisory_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big", signed=True)


class PgAdvisoryLock:
    """`pg_try_advisory_lock` on a connection of its own: held as long as that session, freed if it dies.

    Session-level advisory locks need a real session: behind a transaction-pooling
    PgBouncer, point the runner at PostgreSQL directly. psycopg is imported where a
    method needs it: the SQLite default never loads the driver (~9 MB per worker).
    """

    def __init__(self, conninfo: str | None = None, *, alias: str = "default") -> None:
        self.conninfo = conninfo
        self.alias = alias
        self._conn: psycopg.AsyncConnection | None = None

    async def _connection(self) -> psycopg.AsyncConnection:
        import psycopg

        if self._conn is not None and not self._conn.closed and hung_up(self._conn):
            await self._conn.close()  # the server ended the session (restart, pg_terminate_backend)
        if self._conn is None or self._conn.closed:
            conninfo = self.conninfo or django_conninfo(self.alias)
            self._conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
        return self._conn

    async def acquire(self, name: str) -> bool:
        import psycopg

        try:
            return await self._try_lock(await self._connection(), name)
        except psycopg.OperationalError:
            if self._conn is None or not self._conn.closed:
                raise
        # The session died under the statement, and the locks it held with it: once more, on a new one.
        return await self._try_lock(await self._connection(), name)

    @staticmethod
    async def _try_lock(conn: psycopg.AsyncConnection, name: str) -> bool:
        cursor = await conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (ADVISORY_NAMESPACE, advisory_key(name)))
        row = await cursor.fetchone()
        return bool(row and row[0])

    async def release(self, name: str) -> None:
        import psycopg

        if self._conn is None or self._conn.closed:
            return  # the session is gone, and its locks with it
        try:
            await self._conn.execute("SELECT pg_advisory_unlock(%s, %s)", (ADVISORY_NAMESPACE, advisory_key(name)))
        except psycopg.OperationalError:
            if not self._conn.closed:
                raise

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None


def django_conninfo(alias: str = "default") -> str:
    """A libpq connection string for the Django database `alias` (PostgreSQL)."""
    from psycopg.conninfo import make_conninfo

    db = connections[alias].settings_dict
    params = {
        "dbname": db.get("NAME"), "user": db.get("USER"), "password": db.get("PASSWORD"),
        "host": db.get("HOST"), "port": str(db.get("PORT") or ""),
    }
    options = {k: v for k, v in (db.get("OPTIONS") or {}).items() if k in ("sslmode", "sslrootcert", "options")}
    return make_conninfo("", **{k: v for k, v in params.items() if v}, **options)


def default_lock() -> JobLock:
    return {
        shared.Coordination.REDIS: RedisLock,
        shared.Coordination.POSTGRES: PgAdvisoryLock,
        shared.Coordination.LOCAL: LocalLock,
    }[shared.coordination()]()
