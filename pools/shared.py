"""What workers share: a Redis client per event loop (when REDIS_URL is set).

django-redis is synchronous; the request path uses `redis.asyncio` against the
same server. Without REDIS_URL the deployment is one process, and callers fall
back to in-process state.
"""

from __future__ import annotations

import asyncio
import weakref

import redis
import redis.asyncio as aredis
from django.conf import settings

_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aredis.Redis] = weakref.WeakKeyDictionary()
_sync_client: redis.Redis | None = None
POOL_SIZE = 100  # Redis connections per worker and event loop
POOL_WAIT = 20.0  # seconds a caller waits for one before giving up


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
    pool = aredis.BlockingConnectionPool.from_url(
        url, max_connections=POOL_SIZE, timeout=POOL_WAIT, decode_responses=True
    )
    return aredis.Redis(connection_pool=pool)


def sync_redis() -> redis.Redis | None:
    """A blocking client for sync code (admin saves, commands); None without REDIS_URL."""
    global _sync_client
    if not settings.REDIS_URL:
        return None
    if _sync_client is None:
        _sync_client = redis.Redis.from_url(settings.REDIS_URL, decode_responses=True)
    return _sync_client
