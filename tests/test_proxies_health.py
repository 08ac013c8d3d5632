"""The health check re-tests failed proxies through the real upstream client and brings back the ones that work."""

from __future__ import annotations

import openai
import pytest
from asgiref.sync import async_to_sync

from gateway import grok
from pools import proxies
from pools.jobs import load_jobs
from pools.models import Account, Proxy
from pools.settings import aget_runtime
from tests.proxy_server import via

pytestmark = pytest.mark.timeout(60)
HI = [{"role": "user", "content": "hi"}]


def check(ids: list[int] | None = None) -> proxies.HealthReport:
    async def run() -> proxies.HealthReport:
        async with grok.own_session(proxies.client_config(await aget_runtime())):
            return await proxies.check_proxies(ids)

    return async_to_sync(run)()


def test_it_restores_a_proxy_that_works_again(client, pool, fake_grok, runtime, farm):
    runtime(proxy_mode="list")
    flaky = farm.proxy("flaky", blocked=True)
    proxy = Proxy.objects.create(url=flaky.url)
    pool.add("good-1")
    with pytest.raises(openai.APIStatusError):  # the only proxy is refused: 502
        client.chat.completions.create(model="grok-chat-fast", messages=HI)
    proxy.refresh_from_db()
    assert proxy.health == "failed"

    flaky.blocked = False  # the IP is let through again
    report = check()

    assert (report.healthy, report.failed) == (1, 0)
    proxy.refresh_from_db()
    assert proxy.health == "ok" and proxy.last_ok_at is not None and proxy.last_checked_at is not None
    probes = [r for r in fake_grok.requests() if r.token is None]
    assert [via(r.headers) for r in probes] == ["flaky"]  # the probe went through the proxy itself
    assert client.chat.completions.create(model="grok-chat-fast", messages=HI).choices[0].message.content
    assert pool.get("good-1").proxy_id == proxy.pk


def test_it_keeps_a_refused_or_dead_proxy_failed_and_unbinds_its_accounts(gateway, pool, runtime, farm):
    runtime(proxy_mode="list")
    walled = Proxy.objects.create(url=farm.proxy("walled", blocked=True).url)
    dead = Proxy.objects.create(url="http://127.0.0.1:1", health="failed", failure_count=3)
    fine = Proxy.objects.create(url=farm.proxy("fine").url)
    pool.add("good-1", proxy=walled)

    report = check()

    assert (report.healthy, report.failed) == (1, 2)
    states = {p.pk: (p.health, p.failure_count) for p in Proxy.objects.all()}
    assert states == {walled.pk: ("failed", 1), dead.pk: ("failed", 4), fine.pk: ("ok", 0)}
    assert "Cloudflare" in Proxy.objects.get(pk=walled.pk).last_error
    assert Account.objects.get(token="good-1").proxy_id is None


def test_it_leaves_healthy_and_disabled_proxies_alone_unless_named(gateway, runtime, farm):
    healthy = Proxy.objects.create(url=farm.proxy("a", blocked=True).url, health="ok")
    off = Proxy.objects.create(url=farm.proxy("b").url, enabled=False)

    assert (check().healthy, check().failed) == (0, 0)
    assert check([healthy.pk, off.pk]).failed == 1  # "Test now" tests what it is given
    assert Proxy.objects.get(pk=healthy.pk).health == "failed"
    assert Proxy.objects.get(pk=off.pk).health == "ok"


def test_it_writes_nothing_when_a_known_healthy_proxy_works(gateway, runtime):
    proxy = Proxy.objects.create(url="http://127.0.0.2:9", health="failed")
    seen_healthy = proxies.ProxyChoice(proxy.url, "", "ua", proxy.pk, healthy=True)
    not_yet = proxies.ProxyChoice(proxy.url, "", "ua", proxy.pk, healthy=False)

    async_to_sync(proxies.report_ok)(seen_healthy)
    assert Proxy.objects.get(pk=proxy.pk).health == "failed"  # no write on the normal path

    async_to_sync(proxies.report_ok)(not_yet)
    assert Proxy.objects.get(pk=proxy.pk).health == "ok"


def test_it_registers_the_periodic_jobs_by_mode(runtime):
    health, fetch = load_jobs()["proxy_health"], load_jobs()["proxy_pool_fetch"]
    rt = runtime(proxy_mode="list", proxy_health_interval=120, proxy_pool_interval=60)
    assert (health.interval(rt), fetch.interval(rt)) == (120, 0)
    rt = runtime(proxy_mode="pool_url", proxy_pool_url="http://127.0.0.1:9/p")
    assert (health.interval(rt), fetch.interval(rt)) == (120, 60)
    rt = runtime(proxy_mode="none")
    assert (health.interval(rt), fetch.interval(rt)) == (0, 0)


def test_the_health_job_reports_what_it_checked(gateway, runtime, farm):
    Proxy.objects.create(url=farm.proxy("a").url)
    Proxy.objects.create(url="http://127.0.0.1:1")

    async def run() -> str:
        async with grok.own_session(proxies.client_config(await aget_runtime())):
            return await load_jobs()["proxy_health"].func()

    assert async_to_sync(run)() == "checked 2: 1 healthy, 1 failed"
