"""A client that goes away stops the upstream transfer and frees its account."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.conftest import raw_chat_stream, read_frames

pytestmark = pytest.mark.timeout(30)


def _wait(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_it_stops_the_upstream_stream_when_the_client_disconnects(gateway, pool, fake_grok):
    pool.add("good-1")
    with raw_chat_stream(gateway, "[fake:pace=400:25]") as sock:
        read_frames(sock, 5)
        assert fake_grok.stats("good-1").in_flight == 1
    # 400 tokens at 25 ms would take 10 s: the fake must see us leave long before that.
    assert _wait(lambda: fake_grok.stats("good-1").disconnected == 1)
    assert fake_grok.stats("good-1").in_flight == 0
    assert fake_grok.stats("good-1").completed == 0
    account = pool.get("good-1")
    assert account.status == "active" and account.failure_count == 0


async def test_it_stops_the_upstream_when_an_sdk_stream_is_closed_early(gateway, aclient, fake_grok, transactional_db):
    from pools.models import Account

    await Account.objects.acreate(token="good-2")
    stream = await aclient.chat.completions.create(
        model="grok-chat-fast", stream=True, messages=[{"role": "user", "content": "[fake:pace=400:25]"}])
    seen = 0
    async for _chunk in stream:
        seen += 1
        if seen == 3:
            break
    await stream.close()
    for _ in range(100):
        if fake_grok.stats("good-2").disconnected:
            break
        await asyncio.sleep(0.05)
    assert fake_grok.stats("good-2").disconnected == 1


def test_it_stops_the_upstream_when_the_client_leaves_before_the_first_byte(gateway, pool, fake_grok):
    pool.add("good-1")
    with raw_chat_stream(gateway, "[fake:slow-headers=8]"):
        assert _wait(lambda: fake_grok.stats("good-1").in_flight == 1)
    # The fake would answer after 8 s; the gateway must hang up on it as soon as we leave.
    assert _wait(lambda: fake_grok.stats("good-1").in_flight == 0)
    assert fake_grok.stats("good-1").completed == 0
    assert pool.get("good-1").failure_count == 0
