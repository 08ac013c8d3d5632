"""The periodic work of every worker, registered in one place (`pools.jobs` runs it).

    quota_refresh     every `quota_refresh_interval` s: accounts whose quota rows are stale
    recovery_probe    every `recovery_probe_interval` s: modes and accounts past their cooldown
    proxy_health      every `proxy_health_interval` s (list and pool_url modes): failed proxies
    proxy_pool_fetch  every `proxy_pool_interval` s (pool_url mode): a fresh proxy from the pool URL
    bulk_tasks        poller, every 10 s in each worker: queued admin bulk tasks
"""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.utils import timezone

from pools import bulk, probes, proxies, quotas, reports
from pools.jobs import periodic, poller
from pools.settings import aget_runtime

BULK_POLL = 10.0  # seconds between looks for queued admin bulk tasks


@periodic("quota_refresh", interval=lambda rt: rt.quota_refresh_interval)
async def quota_refresh() -> str:
    runtime = await aget_runtime()
    ids = await sync_to_async(quotas.stale_accounts, thread_sensitive=True)(
        runtime.quota_refresh_interval, timezone.now()
    )
    if not ids:
        return "every account is fresh"
    return reports.refreshed(await quotas.refresh_many(ids))


@periodic("recovery_probe", interval=lambda rt: rt.recovery_probe_interval)
async def recovery_probe() -> str:
    runtime = await aget_runtime()
    plan = await sync_to_async(probes.plan_probes, thread_sensitive=True)(
        timezone.now(), include_expired=runtime.probe_expired_accounts
    )
    if not plan.modes:
        return "nothing to probe"
    return reports.probed(plan, await quotas.refresh_many(list(plan.modes), plan.modes))


@periodic("proxy_health", interval=lambda rt: rt.proxy_health_interval if rt.proxy_mode in ("list", "pool_url") else 0)
async def proxy_health() -> str:
    report = await proxies.check_proxies()
    return f"checked {report.healthy + report.failed}: {report}"


@periodic("proxy_pool_fetch", interval=lambda rt: rt.proxy_pool_interval if rt.proxy_mode == "pool_url" else 0)
async def proxy_pool_fetch() -> str:
    proxy = await proxies.refresh_pool_proxy()
    return f"current proxy {proxy.masked_url} ({proxy.get_health_display().lower()})"


@poller("bulk_tasks", every=BULK_POLL)
async def bulk_tasks() -> int:
    return await bulk.run_queued()
