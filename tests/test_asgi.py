"""The ASGI entry point: the lifespan protocol, and the collector tuned for long-lived processes."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest
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


async def test_an_event_stream_is_sent_part_by_part_with_its_headers_and_closed_when_the_client_leaves():
    from gateway.stream import EventStream
    from grok2api.api_handler import ApiHandler

    closed = asyncio.Event()

    async def events():
        try:
            yield b"data: one\n\n"
            yield b"data: two\n\n"
            await asyncio.sleep(3600)  # a stream that would go on: the client leaves first
        finally:
            closed.set()

    response = EventStream(events(), content_type="text/event-stream", headers={"X-Accel-Buffering": "no"})
    response.set_cookie("seen", "1")
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)
        if len(sent) == 3:  # the start and two parts: the client hangs up
            raise OSError("client gone")

    with pytest.raises(OSError):
        await ApiHandler().send_response(response, send)
    start, *parts = sent
    headers = dict(start["headers"])
    assert start["status"] == 200 and headers[b"Content-Type"] == b"text/event-stream"
    assert headers[b"X-Accel-Buffering"] == b"no" and headers[b"Set-Cookie"].startswith(b"seen=1")
    assert [p["body"] for p in parts] == [b"data: one\n\n", b"data: two\n\n"]
    assert all(p["more_body"] for p in parts)
    assert closed.is_set()  # the generator's cleanup ran (a real view releases its lease there)


async def _get(path: str) -> int:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"127.0.0.1")], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000)}
    inbox: asyncio.Queue[dict] = asyncio.Queue()
    inbox.put_nowait({"type": "http.request", "body": b"", "more_body": False})
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    from grok2api.api_handler import ApiHandler

    await asyncio.wait_for(ApiHandler()(scope, inbox.get, send), 30)  # not `application`: no periodic jobs
    return sent[0]["status"]


async def test_an_api_error_is_logged_by_django_request_only_when_that_logger_listens(caplog):
    # `django.request` listens from ERROR (settings): a 404 is not its business, and costs no thread hop.
    with caplog.at_level(logging.DEBUG, logger="gateway"):
        assert await _get("/v1/no-such-route") == 404
    assert not [r for r in caplog.records if r.name == "django.request"]

    with caplog.at_level(logging.WARNING, logger="django.request"):
        assert await _get("/v1/no-such-route") == 404
    [line] = [r for r in caplog.records if r.name == "django.request"]
    assert line.getMessage() == "Not Found: /v1/no-such-route" and line.status_code == 404
