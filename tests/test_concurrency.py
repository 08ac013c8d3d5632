"""One gateway process serves many streams at once (no serialisation behind a pool limit)."""

from __future__ import annotations

import asyncio

import pytest

pytestmark = pytest.mark.timeout(60)


async def test_it_serves_50_concurrent_streams(gateway, aclient, fake_grok, transactional_db):
    from pools.models import Account

    for i in range(5):
        # Room for all 50 at once: this is about the gateway, not the per-account in-flight limit.
        await Account.objects.acreate(token=f"good-{i}", max_concurrent=10)

    async def one(n: int) -> str:
        stream = await aclient.chat.completions.create(
            model="grok-chat-fast", stream=True,
            messages=[{"role": "user", "content": f"[fake:pace=20:100] #{n}"}])
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    answers = await asyncio.gather(*(one(n) for n in range(50)))
    assert all(a.startswith("tok0") or "tok" in a for a in answers), answers[:3]
    # All 50 were open upstream at the same time: nothing queued behind a connection limit.
    peak = sum(fake_grok.stats(f"good-{i}").max_in_flight for i in range(5))
    assert peak == 50
    assert sum(fake_grok.stats(f"good-{i}").completed for i in range(5)) == 50
