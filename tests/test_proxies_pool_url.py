"""pool_url mode: the proxy comes from a URL, is fetched on first use, every interval, and after a 403."""

from __future__ import annotations

import openai
import pytest
from asgiref.sync import async_to_sync

from gateway import grok
from pools import proxies
from pools.jobs import load_jobs
from pools.models import Proxy
from pools.settings import aget_runtime
from tests.proxy_server import chat_routes

pytestmark = pytest.mark.timeout(60)
HI = [{"role": "user", "content": "hi"}]


def test_it_fetches_a_proxy_from_the_pool_url_and_keeps_using_it(client, pool, fake_grok, runtime, farm):
    first = farm.proxy("first")
    endpoint = farm.pool([first.url], as_json=True)
    runtime(proxy_mode="pool_url", proxy_pool_url=endpoint.url)
    pool.add("good-1")
    pool.add("good-2")

    for _ in range(3):
        client.chat.completions.create(model="grok-chat-fast", messages=HI)

    assert endpoint.fetches == 1  # on first use; then the stored one serves every account
    assert chat_routes(fake_grok, "good-1") + chat_routes(fake_grok, "good-2") == ["first"] * 3
    [row] = Proxy.objects.all()
    assert (row.url, row.source, row.enabled, row.health) == (first.url, "pool_url", True, "ok")


def test_it_fetches_another_proxy_after_a_403(client, pool, fake_grok, runtime, farm):
    walled, fresh = farm.proxy("walled", blocked=True), farm.proxy("fresh")
    endpoint = farm.pool([walled.url, fresh.url.removeprefix("http://")])  # plain text, then a bare host:port
    runtime(proxy_mode="pool_url", proxy_pool_url=endpoint.url)
    account = pool.add("good-1")

    answer = client.chat.completions.create(model="grok-chat-fast", messages=HI)

    assert answer.choices[0].message.content == "You said: hi"
    assert endpoint.fetches == 2 and walled.refused() == 1
    assert chat_routes(fake_grok, "good-1") == ["fresh"]
    blocked, current = Proxy.objects.get(url=walled.url), Proxy.objects.get(url=fresh.url)
    assert (blocked.health, blocked.enabled) == ("failed", False)  # failed, and retired from the pool
    assert (current.health, current.enabled, current.source) == ("ok", True, "pool_url")
    account.refresh_from_db()
    assert (account.status, account.failure_count) == ("active", 0)


def test_it_answers_502_when_the_pool_hands_back_the_refused_proxy(client, pool, runtime, farm):
    walled = farm.proxy("walled", blocked=True)
    endpoint = farm.pool([walled.url])
    runtime(proxy_mode="pool_url", proxy_pool_url=endpoint.url)
    pool.add("good-1")

    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="grok-chat-fast", messages=HI)

    assert info.value.status_code == 502 and "cf_clearance" in info.value.body["message"]
    assert endpoint.fetches == 2 and walled.refused() == 1


def test_it_answers_503_when_the_pool_url_fails(client, pool, runtime):
    runtime(proxy_mode="pool_url", proxy_pool_url="http://127.0.0.1:1/proxy")
    pool.add("good-1")

    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="grok-chat-fast", messages=HI)

    assert info.value.status_code == 503 and "proxy-pool URL" in info.value.body["message"]
    assert pool.get("good-1").failure_count == 0


def test_the_pool_job_replaces_the_current_proxy_every_interval(gateway, runtime, farm):
    one, two = farm.proxy("one"), farm.proxy("two")
    endpoint = farm.pool([one.url, two.url])
    runtime(proxy_mode="pool_url", proxy_pool_url=endpoint.url)

    async def run() -> str:
        async with grok.own_session(proxies.client_config(await aget_runtime())):
            return await load_jobs()["proxy_pool_fetch"].func()

    assert async_to_sync(run)() == f"current proxy {one.url} (not tested)"
    assert async_to_sync(run)() == f"current proxy {two.url} (not tested)"
    assert list(Proxy.objects.filter(enabled=True).values_list("url", flat=True)) == [two.url]
    assert async_to_sync(proxies.proxy_for)(1).url == two.url
