"""The harness itself: workers on PostgreSQL + Redis share one pool and serve through the fake."""

from __future__ import annotations

import httpx
import pytest

from tests.multiworker import Cluster, eventually

pytestmark = pytest.mark.timeout(120)


def test_it_serves_one_pool_from_two_workers(fake_grok):
    fake_grok.reset()
    with Cluster(workers=2, fake_url=fake_grok.base_url) as cluster:
        print(cluster.manage("import_tokens", "-", "--type", "basic", input="mw-good-1\nmw-good-2\n").stdout)
        assert cluster.sql("select count(*) from pools_account") == [(2,)]
        for url in cluster.urls:
            reply = httpx.post(url + "/v1/chat/completions", headers=cluster.headers, timeout=30, json={
                "model": "grok-chat-fast", "messages": [{"role": "user", "content": "hi"}]})
            assert reply.status_code == 200, reply.text
            assert reply.json()["choices"][0]["message"]["content"] == "You said: hi"

        def use_counts() -> list[int]:
            return sorted(r[0] for r in cluster.sql("select use_count from pools_account"))

        # Use counts reach the database with each worker's next usage flush (`pools.usage`).
        assert eventually(lambda: use_counts() == [1, 1]), use_counts()

