"""Proxy-pool URL mode: the current proxy is whatever the pool URL last handed out."""

from __future__ import annotations

import asyncio
import logging
import weakref

from asgiref.sync import sync_to_async
from django.db import transaction

from gateway.grok import GrokClient, UpstreamError
from pools.models import Account, Proxy, ProxySource
from pools.proxies.choice import PROXY_FIELDS, USABLE, NoProxyAvailable, client_config
from pools.proxies.urls import parse_pool_answer
from pools.settings import aget_runtime

logger = logging.getLogger(__name__)

POOL_KEEP = 20  # pool-fetched proxies kept for the admin's history; older retired ones are deleted

# Per event loop (an asyncio.Lock belongs to one loop). It only keeps the requests of
# one worker from fetching together; the current pool proxy itself lives in the database.
_fetch_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


def _fetch_lock() -> asyncio.Lock:
    loop = asyncio.get_running_loop()
    lock = _fetch_locks.get(loop)
    if lock is None:
        lock = _fetch_locks[loop] = asyncio.Lock()
    return lock


def _pool_current(exclude: frozenset[int]) -> Proxy | None:
    return (
        Proxy.objects.filter(USABLE, source=ProxySource.POOL_URL)
        .exclude(pk__in=exclude)
        .only(*PROXY_FIELDS)
        .order_by("-id")
        .first()
    )


async def pool_proxy(exclude: frozenset[int]) -> Proxy:
    """The current pool proxy; fetches a new one when there is none usable (first use, after a failure)."""
    current = await sync_to_async(_pool_current, thread_sensitive=True)(exclude)
    if current is not None:
        return current
    async with _fetch_lock():
        # Another request of this worker may have fetched meanwhile.
        current = await sync_to_async(_pool_current, thread_sensitive=True)(exclude)
        if current is not None:
            return current
        fetched = await refresh_pool_proxy()
        current = await sync_to_async(_pool_current, thread_sensitive=True)(exclude)
    if current is None:
        raise NoProxyAvailable(
            f"the proxy-pool URL handed out {fetched.masked_url}, which has failed: "
            "check the pool, or switch proxy_mode"
        )
    return current


async def refresh_pool_proxy() -> Proxy:
    """Fetch a proxy from `proxy_pool_url` and make it the current pool proxy; returns its row.

    A URL seen before keeps its health: one that failed stays failed until the
    health job restores it. Raises NoProxyAvailable when nothing usable comes back.
    """
    runtime = await aget_runtime()
    if not runtime.proxy_pool_url.strip():
        raise NoProxyAvailable("proxy_mode is pool_url but proxy_pool_url is empty: set it in the runtime settings")
    try:
        text = await GrokClient(client_config(runtime)).fetch_text(runtime.proxy_pool_url.strip())
        url = parse_pool_answer(text)
    except (UpstreamError, ValueError) as exc:
        logger.warning("proxy-pool fetch failed: %s", exc)
        raise NoProxyAvailable(f"could not get a proxy from the proxy-pool URL: {exc}") from exc
    proxy = await sync_to_async(_adopt_pool_proxy, thread_sensitive=True)(url)
    logger.info("proxy pool handed out %s (%s)", proxy.masked_url, proxy.health)
    return proxy


def _adopt_pool_proxy(url: str) -> Proxy:
    with transaction.atomic():
        proxy, created = Proxy.objects.get_or_create(url=url, defaults={"source": ProxySource.POOL_URL})
        if not created:
            Proxy.objects.filter(pk=proxy.pk).update(source=ProxySource.POOL_URL, enabled=True)
            proxy.refresh_from_db()
        retired = Proxy.objects.filter(source=ProxySource.POOL_URL, enabled=True).exclude(pk=proxy.pk)
        Account.objects.filter(proxy__in=retired).unbind_proxies()
        retired.update(enabled=False)
        keep = Proxy.objects.filter(source=ProxySource.POOL_URL).order_by("-id").values_list("pk", flat=True)
        old = Proxy.objects.filter(source=ProxySource.POOL_URL, enabled=False).exclude(pk__in=list(keep[:POOL_KEEP]))
        old.delete()
    return proxy
