"""Proxies: which one a request to Grok leaves through, and what we learn about them.

    proxy_for(account_id) -> ProxyChoice | None, by the runtime `proxy_mode`:
        none      None: straight to Grok
        static    the runtime `proxy_url` (PROXY_URL); `proxy_id` None
        list      the account's sticky `Proxy` (`Account.proxy`), bound on first use to the
                  healthy enabled proxy with the fewest accounts, rebound when it fails
        pool_url  the current proxy fetched from `proxy_pool_url`, re-fetched every
                  `proxy_pool_interval` s (job `proxy_pool_fetch`) and once it has failed
    report_blocked(choice, reason)  a Cloudflare/anti-bot 403 or a proxy failure: the proxy is
                                    marked failed and its accounts unbound (the next
                                    `proxy_for` binds them elsewhere)
    report_ok(choice)               a request got through: mark the proxy healthy if it was not
    check_proxies(ids=None)         probe proxies through `gateway.grok`, restore the ones
                                    that work (job `proxy_health`, admin "Test now")

    ProxyError
     └── NoProxyAvailable           the mode needs a proxy and none is usable

A `cf_clearance` cookie belongs to the IP and user agent that solved it, so each
proxy carries its own; the runtime `cf_clearance` and user agent fill in when a
proxy has none. Bindings, health and the pool's current proxy live in the
database, so every worker sees the same ones. A worker's only local state is a
lock that keeps its own concurrent requests from fetching the pool URL at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field, replace
from typing import ParamSpec, TypeVar
from urllib.parse import urlsplit

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import transaction
from django.db.models import Count, F, Q
from django.utils import timezone

from gateway.grok import ClientConfig, GrokClient, UpstreamError
from pools.jobs import periodic
from pools.models import Account, Proxy, ProxyHealth, ProxySource, mask_proxy_url, mask_token
from pools.settings import Runtime, aget_runtime

logger = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")

SCHEMES = ("http", "https", "socks5", "socks5h")
BIND_ATTEMPTS = 5  # rebinding races lost to other workers before giving up on this request
CHECK_CONCURRENCY = 10  # probes in flight at once during a health check
POOL_KEEP = 20  # pool-fetched proxies kept for the admin's history; older retired ones are deleted

# List mode binds accounts to the operator's proxies, never to ones a pool URL handed out.
_USABLE = Q(enabled=True) & ~Q(health=ProxyHealth.FAILED)


class ProxyError(Exception):
    """No proxy could be chosen for a request."""


class NoProxyAvailable(ProxyError):
    """The proxy mode needs a proxy and none is usable; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class ProxyChoice:
    """The route of one request: the proxy, and the clearance and user agent that go with its IP."""

    url: str = field(repr=False)
    cf_clearance: str = field(repr=False)
    user_agent: str
    proxy_id: int | None = None  # None: the static PROXY_URL, which has no row
    healthy: bool = False  # known healthy when chosen; `report_ok` writes only when not

    def __repr__(self) -> str:
        return f"<ProxyChoice {self.proxy_id or 'static'} {self.masked_url}>"

    @property
    def masked_url(self) -> str:
        return mask_proxy_url(self.url)


def normalize_proxy_url(url: str) -> str:
    """`scheme://[user:password@]host[:port]` with a supported scheme; socks5 becomes socks5h.

    socks5h resolves host names at the proxy, so DNS lookups leave through it too.
    Raises ValueError naming what is wrong (the password never shows).
    """
    text = url.strip()
    shown = mask_proxy_url(text)
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise ValueError(f"proxy URL {shown!r} has no scheme: write http://, https://, socks5:// or socks5h://")
    scheme = scheme.lower()
    if scheme == "socks5":
        scheme = "socks5h"
    if scheme not in SCHEMES:
        raise ValueError(f"unsupported proxy scheme {scheme}:// in {shown!r}: use {', '.join(SCHEMES)}")
    rest = rest.rstrip("/")
    parts = urlsplit(f"{scheme}://{rest}")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError as exc:
        raise ValueError(f"proxy URL {shown!r} has an invalid port") from exc
    if not parts.hostname:
        raise ValueError(f"proxy URL {shown!r} has no host")
    if parts.path or parts.query or parts.fragment:
        raise ValueError(f"proxy URL {shown!r} must be scheme://[user:password@]host:port, with nothing after")
    return f"{scheme}://{rest}"


def parse_pool_answer(text: str) -> str:
    """The proxy URL in a proxy-pool answer: plain text (first line) or JSON `{"proxy": "…"}`.

    A bare `host:port`, which many pools answer, is taken as an http proxy.
    """
    body = text.strip()
    if body.startswith(("{", '"')):
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise ValueError("the proxy-pool URL answered JSON that does not parse") from exc
        value = data.get("proxy") if isinstance(data, dict) else data
        if not isinstance(value, str):
            raise ValueError('the proxy-pool URL answered JSON without "proxy": expected {"proxy": "host:port"}')
        body = value.strip()
    body = body.splitlines()[0].strip() if body else ""
    if not body:
        raise ValueError("the proxy-pool URL answered nothing")
    if "://" not in body:
        body = f"http://{body}"
    return normalize_proxy_url(body)


def client_config(runtime: Runtime, choice: ProxyChoice | None = None) -> ClientConfig:
    """How `gateway.grok` reaches Grok for one request: straight, or along `choice`."""
    config = ClientConfig(
        base_url=settings.GROK_BASE_URL,
        assets_url=settings.GROK_ASSETS_URL,
        impersonate=runtime.impersonate,
        user_agent=runtime.user_agent,
        statsig_id=runtime.statsig_constant,
        cf_clearance=runtime.cf_clearance,
        max_clients=runtime.max_upstream_streams,
    )
    if choice is None:
        return config
    return replace(config, proxy_url=choice.url, cf_clearance=choice.cf_clearance, user_agent=choice.user_agent)


def asset_proxy_url(runtime: Runtime) -> str:
    """The proxy for asset downloads (`asset_proxy_url`), normalised; "" for none."""
    return normalize_proxy_url(runtime.asset_proxy_url) if runtime.asset_proxy_url.strip() else ""


# --- choosing ------------------------------------------------------------------


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
        proxy = await _db(_bound_proxy)(account_id, frozenset(exclude), runtime.proxy_health_interval)
        return _choice(proxy, runtime)
    if mode == "pool_url":
        return _choice(await _pool_proxy(frozenset(exclude)), runtime)
    return None


def _choice(proxy: Proxy, runtime: Runtime) -> ProxyChoice:
    return ProxyChoice(
        url=proxy.url,
        cf_clearance=proxy.cf_clearance or runtime.cf_clearance,
        user_agent=proxy.user_agent or runtime.user_agent,
        proxy_id=proxy.pk,
        healthy=proxy.health == ProxyHealth.OK,
    )


def _db(func: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """`func` run in Django's sync thread: one hop for a whole block of ORM work."""
    return sync_to_async(func, thread_sensitive=True)


_PROXY_FIELDS = ["id", "url", "enabled", "health", "cf_clearance", "user_agent", "source"]


def _bound_proxy(account_id: int, exclude: frozenset[int], health_interval: int) -> Proxy:
    """The account's bound proxy if it is usable, else a new binding, persisted (list mode)."""
    for _ in range(BIND_ATTEMPTS):
        account = (
            Account.objects.select_related("proxy")
            .only("id", "token", "proxy_id", *(f"proxy__{name}" for name in _PROXY_FIELDS))
            .filter(pk=account_id)
            .first()
        )
        bound = account.proxy if account is not None else None
        if bound is not None and _usable(bound, exclude):
            return bound
        pick = (
            Proxy.objects.filter(_USABLE)
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
        if Account.objects.filter(pk=account_id, proxy_id=account.proxy_id).update(proxy=pick):
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


# --- the pool URL ----------------------------------------------------------------

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
        Proxy.objects.filter(_USABLE, source=ProxySource.POOL_URL)
        .exclude(pk__in=exclude)
        .only(*_PROXY_FIELDS)
        .order_by("-id")
        .first()
    )


async def _pool_proxy(exclude: frozenset[int]) -> Proxy:
    """The current pool proxy; fetches a new one when there is none usable (first use, after a failure)."""
    current = await _db(_pool_current)(exclude)
    if current is not None:
        return current
    async with _fetch_lock():
        current = await _db(_pool_current)(exclude)  # another request of this worker may have fetched
        if current is not None:
            return current
        fetched = await refresh_pool_proxy()
        current = await _db(_pool_current)(exclude)
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
    proxy = await _db(_adopt_pool_proxy)(url)
    logger.info("proxy pool handed out %s (%s)", proxy.masked_url, proxy.health)
    return proxy


def _adopt_pool_proxy(url: str) -> Proxy:
    with transaction.atomic():
        proxy, created = Proxy.objects.get_or_create(url=url, defaults={"source": ProxySource.POOL_URL})
        if not created:
            Proxy.objects.filter(pk=proxy.pk).update(source=ProxySource.POOL_URL, enabled=True)
            proxy.refresh_from_db()
        retired = Proxy.objects.filter(source=ProxySource.POOL_URL, enabled=True).exclude(pk=proxy.pk)
        Account.objects.filter(proxy__in=retired).update(proxy=None)
        retired.update(enabled=False)
        keep = Proxy.objects.filter(source=ProxySource.POOL_URL).order_by("-id").values_list("pk", flat=True)
        old = Proxy.objects.filter(source=ProxySource.POOL_URL, enabled=False).exclude(pk__in=list(keep[:POOL_KEEP]))
        old.delete()
    return proxy


# --- what requests learn -----------------------------------------------------------


async def report_blocked(choice: ProxyChoice | None, reason: str) -> None:
    """The route was refused (Cloudflare/anti-bot 403) or the proxy failed: mark it failed, unbind it."""
    if choice is None or choice.proxy_id is None:
        logger.warning("request refused on %s: %s", choice.masked_url if choice else "the direct route", reason)
        return
    unbound = await _db(_mark_failed)(choice.proxy_id, reason)
    logger.warning("proxy %s marked failed (%s); %d account(s) unbound", choice.masked_url, reason, unbound)


def _mark_failed(proxy_id: int, reason: str) -> int:
    with transaction.atomic():
        Proxy.objects.filter(pk=proxy_id).update(
            health=ProxyHealth.FAILED,
            failure_count=F("failure_count") + 1,
            last_error=reason[:500],
            last_checked_at=timezone.now(),
        )
        return Account.objects.filter(proxy_id=proxy_id).update(proxy=None)


async def report_ok(choice: ProxyChoice | None) -> None:
    """A request got through `choice`. Writes only when the proxy was not known healthy."""
    if choice is None or choice.proxy_id is None or choice.healthy:
        return
    await _db(_mark_ok)(choice.proxy_id)


def _mark_ok(proxy_id: int) -> int:
    now = timezone.now()
    return (
        Proxy.objects.filter(pk=proxy_id)
        .exclude(health=ProxyHealth.OK)
        .update(health=ProxyHealth.OK, last_checked_at=now, last_ok_at=now)
    )


# --- health ------------------------------------------------------------------------------


@dataclass
class HealthReport:
    healthy: int = 0
    failed: int = 0
    errors: dict[int, str] = field(default_factory=dict)  # proxy id -> why it failed

    def __str__(self) -> str:
        return f"{self.healthy} healthy, {self.failed} failed"


async def check_proxies(ids: Collection[int] | None = None, *, test_url: str = "") -> HealthReport:
    """Probe proxies and record the result: the ids given, else every enabled one not known healthy.

    Each probe goes through `GrokClient.probe` with the proxy's own clearance and
    user agent, to `test_url` or Grok's rate-limits endpoint. A proxy that answers
    is healthy again; one that fails is marked failed and its accounts unbound.
    """
    runtime = await aget_runtime()
    proxies = await _db(_to_check)(None if ids is None else list(ids))
    limit = asyncio.Semaphore(CHECK_CONCURRENCY)

    async def probe(proxy: Proxy) -> tuple[int, str | None]:
        async with limit:
            try:
                await GrokClient(client_config(runtime, _choice(proxy, runtime))).probe(test_url)
            except UpstreamError as exc:
                return proxy.pk, str(exc) or type(exc).__name__
            return proxy.pk, None

    results = await asyncio.gather(*(probe(p) for p in proxies))
    report = HealthReport()
    for proxy_id, error in results:
        if error is None:
            report.healthy += 1
        else:
            report.failed += 1
            report.errors[proxy_id] = error
    await _db(_record_checks)(results)
    names = {p.pk: p.masked_url for p in proxies}
    for proxy_id, error in report.errors.items():
        logger.info("proxy %s failed its check: %s", names[proxy_id], error)
    return report


def _to_check(ids: list[int] | None) -> list[Proxy]:
    if ids is not None:
        return list(Proxy.objects.filter(pk__in=ids))
    return list(Proxy.objects.filter(enabled=True).exclude(health=ProxyHealth.OK))


def _record_checks(results: list[tuple[int, str | None]]) -> None:
    now = timezone.now()
    with transaction.atomic():
        ok = [pk for pk, error in results if error is None]
        Proxy.objects.filter(pk__in=ok).update(health=ProxyHealth.OK, last_checked_at=now, last_ok_at=now)
        for pk, error in results:
            if error is not None:
                Proxy.objects.filter(pk=pk).update(
                    health=ProxyHealth.FAILED,
                    failure_count=F("failure_count") + 1,
                    last_error=error[:500],
                    last_checked_at=now,
                )
        Account.objects.filter(proxy_id__in=[pk for pk, error in results if error is not None]).update(proxy=None)


def disable_proxies(ids: Collection[int]) -> int:
    """Take proxies out of rotation and unbind their accounts; returns how many were enabled before."""
    with transaction.atomic():
        Account.objects.filter(proxy_id__in=list(ids)).update(proxy=None)
        return Proxy.objects.filter(pk__in=list(ids), enabled=True).update(enabled=False)


def enable_proxies(ids: Collection[int]) -> int:
    return Proxy.objects.filter(pk__in=list(ids), enabled=False).update(enabled=True)


# --- periodic jobs ---------------------------------------------------------------------


@periodic("proxy_health", interval=lambda rt: rt.proxy_health_interval if rt.proxy_mode in ("list", "pool_url") else 0)
async def proxy_health_job() -> str:
    report = await check_proxies()
    return f"checked {report.healthy + report.failed}: {report}"


@periodic("proxy_pool_fetch", interval=lambda rt: rt.proxy_pool_interval if rt.proxy_mode == "pool_url" else 0)
async def proxy_pool_job() -> str:
    proxy = await refresh_pool_proxy()
    return f"current proxy {proxy.masked_url} ({proxy.get_health_display().lower()})"
