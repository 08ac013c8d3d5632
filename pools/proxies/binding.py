"""Which proxy a request leaves through, by the runtime `proxy_mode` (see `pools.proxies`)."""

from __future__ import annotations

import logging
from collections.abc import Collection

from asgiref.sync import sync_to_async
from django.db.models import Count

from pools.models import Account, Proxy, ProxyHealth, ProxySource, mask_token
from pools.proxies.choice import PROXY_FIELDS, USABLE, NoProxyAvailable, ProxyChoice, choice_of
from pools.proxies.pool_url import pool_proxy
from pools.proxies.urls import normalize_proxy_url
from pools.settings import aget_runtime

logger = logging.getLogger(__name__)

BIND_ATTEMPTS = 5  # rebinding races lost to other workers before giving up on this request


async def proxy_for(account_id: int, *, exclude: Collection[int] = ()) -> ProxyChoice | None:
    """The route for a request on `account_id`, skipping the proxy ids in `exclude`.

    Raises NoProxyAvailable when the mode needs a proxy and none is usable.
    """
    runtime = await aget_runtime()
    mode = runtime.proxy_mode
    if mode == "static":
        if not runtime.proxy_url.strip():
            raise NoProxyAvailable("proxy_mode is static but PROXY_URL is empty: set it, or set proxy_mode to none")
        try:
            url = normalize_proxy_url(runtime.proxy_url)
        except ValueError as exc:
            raise NoProxyAvailable(f"proxy_mode is static but PROXY_URL is not usable: {exc}") from exc
        return ProxyChoice(url, runtime.cf_clearance, runtime.user_agent, None, healthy=True)
    if mode == "list":
        bind = sync_to_async(_bound_proxy, thread_sensitive=True)
        proxy = await bind(account_id, frozenset(exclude), runtime.proxy_health_interval)
        return choice_of(proxy, runtime)
    if mode == "pool_url":
        return choice_of(await pool_proxy(frozenset(exclude)), runtime)
    return None


def _bound_proxy(account_id: int, exclude: frozenset[int], health_interval: int) -> Proxy:
    """The account's bound proxy if it is usable, else a new binding, persisted (list mode)."""
    for _ in range(BIND_ATTEMPTS):
        account = (
            Account.objects.select_related("proxy")
            .only("id", "token", "proxy_id", *(f"proxy__{name}" for name in PROXY_FIELDS))
            .filter(pk=account_id)
            .first()
        )
        bound = account.proxy if account is not None else None
        if bound is not None and _usable(bound, exclude):
            return bound
        pick = (
            Proxy.objects.filter(USABLE)
            .exclude(source=ProxySource.POOL_URL)
            .exclude(pk__in=exclude)
            .annotate(bound=Count("accounts"))
            .order_by("bound", "id")
            .first()
        )
        if pick is None:
            raise NoProxyAvailable(_why_no_proxy(exclude, health_interval))
        if account is None:
            return pick  # deleted by an operator mid-request: route it, bind nothing
        # Conditional on the binding we read: if another worker rebound it first, read again.
        if Account.objects.filter(pk=account_id, proxy_id=account.proxy_id).bind_proxy(pick):
            logger.info("account %s bound to proxy %s", mask_token(account.token), pick.masked_url)
            return pick
    raise NoProxyAvailable("the account's proxy binding kept changing under concurrent requests; retry")


def _usable(proxy: Proxy, exclude: frozenset[int]) -> bool:
    return (
        proxy.enabled and proxy.health != ProxyHealth.FAILED and proxy.pk not in exclude
        and proxy.source != ProxySource.POOL_URL
    )


def _why_no_proxy(exclude: frozenset[int], health_interval: int) -> str:
    listed = Proxy.objects.exclude(source=ProxySource.POOL_URL)
    if not listed.exists():
        return (
            "proxy_mode is list but no proxy is listed: add proxies in the admin (Account pools › Proxies), "
            "or set proxy_mode to none or static"
        )
    failed = listed.filter(enabled=True, health=ProxyHealth.FAILED).count()
    disabled = listed.filter(enabled=False).count()
    tried = f", {len(exclude)} already refused this request" if exclude else ""
    return (
        f"no usable proxy in the list ({failed} failed, {disabled} disabled{tried}): the health job re-tests "
        f"failed proxies every {health_interval} s, \"Test now\" in the admin does it at once; or add proxies"
    )
