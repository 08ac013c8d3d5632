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


def redis_url() -> str:
    return settings.REDIS_URL


def async_redis() -> aredis.Redis | None:
    """This loop's async Redis client, or None when REDIS_URL is unset."""
    if not settings.REDIS_URL:
        return None
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        client = _clients[loop] = aredis.Redis.from_url(settings.REDIS_URL, decode_responses=True)
    return client


def sync_redis() -> redis.Redis | None:
    """A blocking client for sync code (admin saves, commands); None without REDIS_URL."""
    global _sync_client
    if not settings.REDIS_URL:
        return None
    if _sync_client is None:
        _sync_client = redis.Redis.from_url(settings.REDIS_URL, decode_responses=True)
    return _sync_client
