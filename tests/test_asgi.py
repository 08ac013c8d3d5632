"""The ASGI entry point: the lifespan protocol, and the collector tuned for long-lived processes."""

from __future__ import annotations

import asyncio
import gc

from asgiref.sync import sync_to_async

from grok2api.asgi import application
from pools import usage


async def _lifespan(messages: list[dict]) -> list[dict]:
    inbox: asyncio.Queue[dict] = asyncio.Queue()
    for message in messages:
        inbox.put_nowait(message)
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    await asyncio.wait_for(application({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, send), 30)
    return sent


async def test_lifespan_completes_startup_and_writes_pending_usage_at_shutdown(pool):
    account = await sync_to_async(pool.add)("lifespan-1")
    usage.record_use("default", account.pk)
    sent = await _lifespan([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert not usage.pending("default").get("default")
    assert (await sync_to_async(pool.get)("lifespan-1")).use_count == 1


def test_startup_objects_are_frozen_out_of_the_collectors_sight():
    assert gc.get_freeze_count() > 10_000
    assert gc.get_threshold()[0] >= 10_000
