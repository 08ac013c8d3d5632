"""Leasing across worker processes (PostgreSQL alone, or PostgreSQL + Redis), through real HTTP.

The fake Grok counts the streams it has open per token; that is the number the
per-account limit is about, so it is what these tests check.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import threading

import httpx
import pytest
import redis

from tests.multiworker import REDIS_URL, Cluster, eventually

pytestmark = pytest.mark.timeout(300)
BACKENDS = pytest.mark.parametrize("use_redis", [True, False], ids=["redis", "postgres"])


def _ask(prompt: str) -> dict:
    return {"model": "grok-chat-fast", "stream": True, "messages": [{"role": "user", "content": prompt}]}


def _held(cluster: Cluster) -> int:
    """Unexpired leases in the cluster's backend."""
    if cluster.use_redis:
        client = redis.Redis.from_url(REDIS_URL)
        seconds, micros = client.time()
        now_ms = seconds * 1000 + micros // 1000
        return sum(client.zcount(key, f"({now_ms}", "+inf") for key in client.scan_iter("grok2api:lease:acct:*"))
    return cluster.sql("select count(*) from pools_leaserecord where expires_at > now()")[0][0]



def _start(cluster: Cluster, fake_grok, tokens: list[str], limit: int, env_runtime: dict[str, str]) -> None:
    for token in tokens:
        fake_grok.set_quota(token, "fast", 10_000, 10_000)  # the storm is about slots, not Grok's quota
    cluster.manage("import_tokens", "-", "--type", "basic", input="".join(f"{t}\n" for t in tokens))
    cluster.sql("update pools_account set max_concurrent = %s", (limit,))
    for name, value in env_runtime.items():
        cluster.manage("runtime", "set", name, value)


def _storm(urls: list[str], headers: dict, n: int, processes: int = 2) -> list[int]:
    """`n` concurrent streamed requests spread over the workers, sent from `processes` client processes.

    One client process alone would spend the test's time in httpx, starving the fake (a thread here).
    """
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes) as clients:
        parts = clients.starmap(_client, [(urls, headers, range(k, n, processes)) for k in range(processes)])
    return [status for part in parts for status in part]


def _client(urls: list[str], headers: dict, indices: range) -> list[int]:
    return asyncio.run(_send(urls, headers, indices))


async def _send(urls: list[str], headers: dict, indices: range) -> list[int]:
    limits = httpx.Limits(max_connections=len(indices), max_keepalive_connections=len(indices))
    async with httpx.AsyncClient(headers=headers, timeout=240, limits=limits) as client:

        async def one(i: int) -> int:
            body = _ask(f"[fake:pace=4:20] #{i}")
            async with client.stream("POST", urls[i % len(urls)] + "/v1/chat/completions", json=body) as reply:
                text = (await reply.aread()).decode()
                if reply.status_code == 200:
                    assert text.rstrip().endswith("data: [DONE]"), text[-200:]
                return reply.status_code

        return await asyncio.gather(*(one(i) for i in indices))


@BACKENDS
def test_1000_requests_from_three_workers_keep_every_account_under_its_limit(fake_grok, use_redis):
    fake_grok.reset()
    tokens = [f"mw-lease-{'r' if use_redis else 'p'}-{i}" for i in range(5)]
    with Cluster(workers=3, fake_url=fake_grok.base_url, redis=use_redis) as cluster:
        # Waiting requests may wait out the whole storm: this test is about limits, not about timeouts.
        _start(cluster, fake_grok, tokens, limit=2, env_runtime={"queue_timeout": "200"})
        statuses = _storm(cluster.urls, cluster.headers, 1000)
        assert set(statuses) <= {200, 429, 503}, sorted(set(statuses))
        stats = {t: fake_grok.stats(t) for t in tokens}
        assert {t: s.max_in_flight for t, s in stats.items() if s.max_in_flight > 2} == {}
        assert sum(s.completed for s in stats.values()) == statuses.count(200)
        assert statuses.count(200) == 1000  # with a long enough queue timeout, everyone is served
        assert eventually(lambda: _held(cluster) == 0), f"{_held(cluster)} leases leaked"


@BACKENDS
def test_a_worker_killed_mid_stream_frees_its_leases_after_the_ttl(fake_grok, use_redis):
    fake_grok.reset()
    tokens = [f"mw-kill-{'r' if use_redis else 'p'}-{i}" for i in range(2)]
    with Cluster(workers=2, fake_url=fake_grok.base_url, redis=use_redis, env={"LEASE_TTL": "3"}) as cluster:
        _start(cluster, fake_grok, tokens, limit=1, env_runtime={"queue_timeout": "60"})

        def long_stream(i: int) -> None:
            try:
                with httpx.stream("POST", cluster.urls[0] + "/v1/chat/completions", headers=cluster.headers,
                                  json=_ask(f"[fake:pace=600:50] long #{i}"), timeout=60) as reply:
                    for _ in reply.iter_bytes():
                        pass
            except httpx.HTTPError:
                pass  # its worker is killed under it

        streams = [threading.Thread(target=long_stream, args=(i,), daemon=True) for i in range(2)]
        for thread in streams:
            thread.start()
        assert eventually(lambda: all(fake_grok.stats(t).in_flight == 1 for t in tokens), 20)
        assert _held(cluster) == 2  # both accounts are full

        cluster.kill(0)  # SIGKILL: no release, no cleanup
        assert _held(cluster) == 2  # the dead worker's leases outlive it until their TTL

        # The other worker keeps serving: it waits in line until the dead leases expire, then answers.
        reply = httpx.post(cluster.urls[1] + "/v1/chat/completions", headers=cluster.headers,
                           json={**_ask("after the crash"), "stream": False}, timeout=60)
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"] == "You said: after the crash"
        assert eventually(lambda: _held(cluster) == 0), f"{_held(cluster)} leases left"
        for thread in streams:
            thread.join(10)
