"""What workers share, and through what: Redis (when REDIS_URL is set), PostgreSQL, or this process alone.

django-redis is synchronous; the request path uses `redis.asyncio` against the
same server. Without REDIS_URL the deployment is one process, and callers fall
back to in-process state.

A Redis restart leaves every pooled connection dead, and redis-py's pools hand them
out as they are (the async pool does not notice that the server hung up), so each
client retries a command that fails with a connection error on a fresh connection, up
to `RETRIES` times after a short backoff: the command after a restart succeeds, and a
healthy connection pays nothing. Timeouts are not retried: a slow server is not a dead
connection, and a script that did run must not run twice.
"""

from __future__ import annotations

import asyncio
import enum
import weakref

import redis
import redis.asyncio as aredis
from django.conf import settings
from django.db import connections
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aredis.Redis] = weakref.WeakKeyDictionary()
_sync_client: redis.Redis | None = None
POOL_SIZE = 100  # Redis connections per worker and event loop
POOL_WAIT = 20.0  # seconds a caller waits for one before giving up
RETRIES = 3  # reconnections a command may try after a connection error; waits of at most 0.05, 0.1, 0.2 s


def _backoff() -> ExponentialWithJitterBackoff:
    return ExponentialWithJitterBackoff(cap=0.2, base=0.025)


def redis_url() -> str:
    return settings.REDIS_URL


def async_redis() -> aredis.Redis | None:
    """This loop's async Redis client, or None when REDIS_URL is unset."""
    if not settings.REDIS_URL:
        return None
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        client = _clients[loop] = connect_async(settings.REDIS_URL)
    return client


def connect_async(url: str) -> aredis.Redis:
    """An async client whose callers wait for a free connection in a burst instead of failing.

    redis-py's default pool raises "Too many connections" past 100 at once, which a
    worker serving hundreds of requests reaches the moment they all check something.
    """
    retry = AsyncRetry(_backoff(), RETRIES, supported_errors=(redis.ConnectionError,))
    pool = aredis.BlockingConnectionPool.from_url(
        url, max_connections=POOL_SIZE, timeout=POOL_WAIT, decode_responses=True, retry=retry
    )
    return aredis.Redis(connection_pool=pool)


def sync_redis() -> redis.Redis | None:
    """A blocking client for sync code (admin saves, commands); None without REDIS_URL."""
    global _sync_client
    if not settings.REDIS_URL:
        return None
    if _sync_client is None:
        retry = Retry(_backoff(), RETRIES, supported_errors=(redis.ConnectionError,))
        _sync_client = redis.Redis.from_url(settings.REDIS_URL, decode_responses=True, retry=retry)
    return _sync_client


class Coordination(enum.Enum):
    REDIS = "redis"  # leases, settings versions and job locks in Redis: many workers, many hosts
    POSTGRES = "postgres"  # in PostgreSQL rows and advisory locks: one worker per host
    LOCAL = "local"  # in this process: SQLite, one worker


def coordination() -> Coordination:
    """Where workers share leases and job locks; decided here once, for every part that shares state."""
    if settings.REDIS_URL:
        return Coordination.REDIS
    if connections["default"].vendor == "postgresql":
        return Coordination.POSTGRES
    return Coordination.LOCAL
