"""What requests and probes learn about proxies: refused, through, healthy again."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from dataclasses import dataclass, field

from asgiref.sync import sync_to_async
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from gateway.grok import GrokClient, UpstreamError
from pools.models import Account, Proxy, ProxyHealth
from pools.proxies.choice import ProxyChoice, choice_of, client_config
from pools.settings import aget_runtime

logger = logging.getLogger(__name__)

CHECK_CONCURRENCY = 10  # probes in flight at once during a health check


async def report_blocked(choice: ProxyChoice | None, reason: str) -> None:
    """The route was refused (Cloudflare/anti-bot 403) or the proxy failed: mark it failed, unbind it."""
    if choice is None or choice.proxy_id is None:
        logger.warning("request refused on %s: %s", choice.masked_url if choice else "the direct route", reason)
        return
    unbound = await sync_to_async(_mark_failed, thread_sensitive=True)(choice.proxy_id, reason)
    logger.warning("proxy %s marked failed (%s); %d account(s) unbound", choice.masked_url, reason, unbound)


def _mark_failed(proxy_id: int, reason: str) -> int:
    with transaction.atomic():
        Proxy.objects.filter(pk=proxy_id).update(
            health=ProxyHealth.FAILED,
            failure_count=F("failure_count") + 1,
            last_error=reason[:500],
            last_checked_at=timezone.now(),
        )
        return Account.objects.filter(proxy_id=proxy_id).unbind_proxies()


async def report_ok(choice: ProxyChoice | None) -> None:
    """A request got through `choice`. Writes only when the proxy was not known healthy."""
    if choice is None or choice.proxy_id is None or choice.healthy:
        return
    await sync_to_async(_mark_ok, thread_sensitive=True)(choice.proxy_id)


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
    proxies = await sync_to_async(_to_check, thread_sensitive=True)(None if ids is None else list(ids))
    limit = asyncio.Semaphore(CHECK_CONCURRENCY)

    async def probe(proxy: Proxy) -> tuple[int, str | None]:
        async with limit:
            try:
                await GrokClient(client_config(runtime, choice_of(proxy, runtime))).probe(test_url)
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
    await sync_to_async(_record_checks, thread_sensitive=True)(results)
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
        Account.objects.filter(proxy_id__in=[pk for pk, error in results if error is not None]).unbind_proxies()


def disable_proxies(ids: Collection[int]) -> int:
    """Take proxies out of rotation and unbind their accounts; returns how many were enabled before."""
    with transaction.atomic():
        Account.objects.filter(proxy_id__in=list(ids)).unbind_proxies()
        return Proxy.objects.filter(pk__in=list(ids), enabled=True).update(enabled=False)


def enable_proxies(ids: Collection[int]) -> int:
    return Proxy.objects.filter(pk__in=list(ids), enabled=False).update(enabled=True)
