"""Two gateway workers on PostgreSQL + Redis agree on proxy bindings and on which proxy failed."""

from __future__ import annotations

import httpx
import pytest

from tests.multiworker import Cluster
from tests.proxy_server import chat_routes

pytestmark = pytest.mark.timeout(180)


def _ask(cluster: Cluster, worker: int) -> None:
    reply = httpx.post(cluster.urls[worker] + "/v1/chat/completions", headers=cluster.headers, timeout=30, json={
        "model": "grok-chat-fast", "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status_code == 200, reply.text


def test_two_workers_share_bindings_and_proxy_failures(fake_grok, farm):
    fake_grok.reset()
    first, second = farm.proxy("first"), farm.proxy("second")
    with Cluster(workers=0, fake_url=fake_grok.base_url) as cluster:
        cluster.manage("import_tokens", "-", "--type", "basic", input="mw-good-1\nmw-good-2\n")
        cluster.manage("runtime", "set", "proxy_mode", "list")
        for proxy in (first, second):
            cluster.sql(
                "insert into pools_proxy (url, enabled, source, health, failure_count, last_error, cf_clearance,"
                " user_agent, created_at) values (%s, true, 'manual', 'unknown', 0, '', '', '', now())",
                (proxy.url,),
            )
        cluster.start_worker()
        cluster.start_worker()

        for i in range(8):  # alternate workers: each account keeps its proxy whichever worker serves it
            _ask(cluster, i % 2)
        one, two = chat_routes(fake_grok, "mw-good-1"), chat_routes(fake_grok, "mw-good-2")
        assert len(set(one)) == 1 and len(set(two)) == 1 and set(one) != set(two), (one, two)
        assert len(one) + len(two) == 8

        first.blocked = True  # its IP gets the Cloudflare page from now on
        fake_grok.reset()
        for i in range(6):
            _ask(cluster, i % 2)

        assert first.refused() == 1  # the worker that hit it marked it failed; the other never tried it
        assert set(chat_routes(fake_grok, "mw-good-1") + chat_routes(fake_grok, "mw-good-2")) == {"second"}
        assert cluster.sql("select health from pools_proxy where url = %s", (first.url,)) == [("failed",)]
        bound = cluster.sql("select distinct p.url from pools_account a join pools_proxy p on a.proxy_id = p.id")
        assert bound == [(second.url,)]
        assert cluster.sql("select sum(failure_count) from pools_account") == [(0,)]
