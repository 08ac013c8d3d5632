"""The upstream client: one hierarchy for every failure, the browser's headers, real aborts."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import inspect

import pytest
from curl_cffi._wrapper import ffi
from curl_cffi.requests import exceptions as curl_exceptions

from gateway.grok import (
    ClientConfig,
    GrokClient,
    UpstreamAuthError,
    UpstreamBanned,
    UpstreamBlocked,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
    classify_error_body,
    classify_inband_error,
    errors,
    transfer,
)
from gateway.grok import client as upstream

pytestmark = pytest.mark.timeout(30)

CURL_ERRORS = [
    cls for _, cls in inspect.getmembers(curl_exceptions, inspect.isclass)
    if issubclass(cls, curl_exceptions.RequestException)
]


@pytest.mark.parametrize("error_class", CURL_ERRORS, ids=lambda c: c.__name__)
def test_it_maps_every_curl_cffi_error_to_upstream_unavailable(error_class):
    with pytest.raises(UpstreamUnavailable) as info, errors.translate():
        raise error_class("boom")
    assert isinstance(info.value.__cause__, error_class)


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (401, '{"code":16,"message":"unauthenticated"}', UpstreamAuthError),
        (400, '{"message":"failed to look up session id"}', UpstreamAuthError),
        (403, '{"code":7,"message":"User is blocked [WKE=unauthorized:blocked-user]"}', UpstreamBanned),
        (403, "<html><title>Just a moment...</title>__cf_chl_opt</html>", UpstreamBlocked),
        (403, '{"code":7,"message":"Request rejected by anti-bot rules."}', UpstreamBlocked),
        (403, "", UpstreamBlocked),
        (429, '{"code":8,"message":"Too many requests"}', UpstreamRateLimited),
        (500, "oops", UpstreamUnavailable),
        (503, "", UpstreamUnavailable),
        (400, '{"message":"bad field"}', UpstreamProtocolError),
    ],
)
def test_it_classifies_http_errors_by_status_and_body(status, body, expected):
    assert type(classify_error_body(status, body)) is expected


def test_it_keeps_retry_after_on_a_429():
    assert classify_error_body(429, "", retry_after=30).retry_after == 30


@pytest.mark.parametrize(
    ("message", "code", "expected"),
    [
        ("rate limited", 8, UpstreamRateLimited),
        ("You've reached your usage limit. Please try again later.", None, UpstreamRateLimited),
        ("Request rejected by anti-bot rules.", 7, UpstreamBlocked),
        ("User is blocked", None, UpstreamBanned),
        ("internal model error", 13, UpstreamUnavailable),
    ],
)
def test_it_classifies_in_band_errors_like_the_status_they_stand_for(message, code, expected):
    assert type(classify_inband_error(message, code)) is expected


def test_it_generates_a_statsig_id_of_the_browser_shape_unless_configured():
    decoded = base64.b64decode(upstream.statsig_id()).decode()
    assert decoded.startswith("e:TypeError: Cannot read properties of ")
    assert upstream.statsig_id("Zml4ZWQ=") == "Zml4ZWQ="


def _client(fake_grok) -> GrokClient:
    return GrokClient(ClientConfig(base_url=fake_grok.base_url, assets_url=fake_grok.base_url,
                                   impersonate="chrome136", user_agent="UA/1"))


async def test_it_sends_the_browser_headers_and_both_sso_cookies(fake_grok):
    fake_grok.reset()
    async with _client(fake_grok).chat("tok-h", {"modeId": "fast", "message": "hi"},
                                       first_byte_timeout=5, total_timeout=10) as lines:
        assert [line async for line in lines]
    (sent,) = fake_grok.requests("tok-h")
    assert sent.headers["user-agent"] == "UA/1"
    assert sent.headers["origin"] == "https://grok.com"
    assert sent.headers["x-statsig-id"] and sent.headers["x-xai-request-id"]
    assert "sso=tok-h" in sent.headers["cookie"] and "sso-rw=tok-h" in sent.headers["cookie"]
    await upstream.close_sessions()


async def test_it_streams_lines_as_they_arrive(fake_grok):
    fake_grok.reset()
    loop = asyncio.get_running_loop()
    arrivals = []
    async with _client(fake_grok).chat("tok-p", {"modeId": "fast", "message": "[fake:pace=5:200]"},
                                       first_byte_timeout=5, total_timeout=10) as lines:
        async for _ in lines:
            arrivals.append(loop.time())
    # Paced lines 200 ms apart arrive spread out, not in one burst at the end.
    assert arrivals[-1] - arrivals[0] > 0.5
    await upstream.close_sessions()


async def test_it_aborts_a_silent_transfer_at_once_on_first_byte_timeout(fake_grok):
    fake_grok.reset()
    with pytest.raises(UpstreamTimeout):
        async with _client(fake_grok).chat("tok-s", {"modeId": "fast", "message": "[fake:slow-headers=5]"},
                                           first_byte_timeout=0.3, total_timeout=10):
            pass
    for _ in range(40):
        if fake_grok.stats("tok-s").disconnected or not fake_grok.stats("tok-s").in_flight:
            break
        await asyncio.sleep(0.05)
    assert fake_grok.stats("tok-s").in_flight == 0
    await upstream.close_sessions()


async def test_it_stops_the_transfer_when_the_block_is_left_mid_stream(fake_grok):
    fake_grok.reset()
    async with _client(fake_grok).chat("tok-c", {"modeId": "fast", "message": "[fake:pace=200:20]"},
                                       first_byte_timeout=5, total_timeout=30) as lines:
        async for _ in lines:
            break
    for _ in range(40):
        if fake_grok.stats("tok-c").disconnected:
            break
        await asyncio.sleep(0.05)
    assert fake_grok.stats("tok-c").disconnected == 1
    await upstream.close_sessions()


async def test_its_curl_handles_skip_the_128_kb_websocket_buffer_http_never_reads(fake_grok):
    # curl_cffi's default handle zero-fills 128 KB per handle up front: most of an open stream's memory.
    fake_grok.reset()
    async with _client(fake_grok).chat("tok-ws", {"modeId": "fast", "message": "hi"},
                                       first_byte_timeout=5, total_timeout=10) as lines:
        assert [line async for line in lines]
    await asyncio.sleep(0)
    (curl,) = upstream._loops[asyncio.get_running_loop()].idle
    assert len(ffi.buffer(curl._ws_recv_buffer)) <= 64
    await upstream.close_sessions()


async def test_a_large_prompt_goes_out_whole_through_the_small_upload_buffer(fake_grok):
    # The upload buffer is 16 KB (memory per open stream); a body many times that size still arrives intact.
    fake_grok.reset()
    prompt = "x" * (transfer.UPLOAD_BUFFER * 5 + 123)
    async with _client(fake_grok).chat("tok-big", {"modeId": "fast", "message": prompt},
                                       first_byte_timeout=5, total_timeout=10) as lines:
        assert [line async for line in lines]
    (sent,) = fake_grok.requests("tok-big")
    assert sent.json["message"] == prompt
    await upstream.close_sessions()


async def test_cookies_grok_sets_for_one_account_never_ride_on_anothers_request(fake_grok):
    # One set of curl handles serves every account: a jar shared across them would send account A's
    # cookies (Cloudflare's __cf_bm today, a rotated sso tomorrow) with account B's requests.
    fake_grok.reset()
    client = _client(fake_grok)
    for token in ("tok-jar-a", "tok-jar-b"):
        async with client.chat(token, {"modeId": "fast", "message": "hi"},
                               first_byte_timeout=5, total_timeout=10) as lines:
            assert [line async for line in lines]
    (second,) = fake_grok.requests("tok-jar-b")
    cookies = sorted(part.strip().split("=", 1)[0] for part in second.headers["cookie"].split(";"))
    assert cookies == ["sso", "sso-rw"]
    assert "tok-jar-a" not in second.headers["cookie"]
    await upstream.close_sessions()


async def test_one_curl_handle_serves_request_after_request_set_up_once(fake_grok):
    # The handle keeps its impersonation between requests (no reset, no forty options set
    # again); each request still carries only its own URL, body, headers and cookies.
    fake_grok.reset()
    client = _client(fake_grok)
    for token in ("tok-reuse-a", "tok-reuse-b"):
        async with client.chat(token, {"modeId": "fast", "message": token},
                               first_byte_timeout=5, total_timeout=10) as lines:
            assert [line async for line in lines]
        await asyncio.sleep(0)
    (curl,) = upstream._loops[asyncio.get_running_loop()].idle
    assert curl.shape == ("chrome136", True)
    (second,) = fake_grok.requests("tok-reuse-b")
    assert second.json["message"] == "tok-reuse-b"
    assert "tok-reuse-a" not in second.headers["cookie"]
    await upstream.close_sessions()


async def test_a_read_gives_up_at_its_deadline_even_when_an_earlier_wait_armed_a_later_one(fake_grok):
    # Waits share one timer per transfer; a wait whose deadline comes before the armed timer
    # (the first-byte budget is longer than the idle gap that follows) still ends on time.
    fake_grok.reset()
    loop = asyncio.get_running_loop()
    async with _client(fake_grok).chat("tok-dl", {"modeId": "fast", "message": "[fake:stall-after=3]"},
                                       first_byte_timeout=20, total_timeout=30) as lines:
        while (got := await lines.read(loop.time() + 0.3)) is not None:
            assert got, "the stall comes before the end"
        started = loop.time()
        assert await lines.read(loop.time() + 0.2) is None
        assert loop.time() - started < 1.0
        assert await lines.read(None)  # the rest still arrives after the silence
    await upstream.close_sessions()


async def test_a_reused_handle_never_keeps_the_last_requests_proxy(fake_grok, farm):
    # Handles keep their set-up between requests, so each request must set its own route:
    # through a proxy, then direct, then through another proxy, on one and the same handle.
    fake_grok.reset()
    a, b = farm.proxy("a"), farm.proxy("b")
    config = _client(fake_grok).config
    routes = [("tok-route-1", a.url), ("tok-route-2", ""), ("tok-route-3", b.url)]
    for token, proxy in routes:
        client = GrokClient(dataclasses.replace(config, proxy_url=proxy))
        async with client.chat(token, {"modeId": "fast", "message": "hi"},
                               first_byte_timeout=5, total_timeout=10) as lines:
            assert [line async for line in lines]
        await asyncio.sleep(0)
    assert len(upstream._loops[asyncio.get_running_loop()].idle) == 1  # the same handle each time
    assert [s.token for s in a.seen()] == ["tok-route-1"]
    assert [s.token for s in b.seen()] == ["tok-route-3"]
    assert len(fake_grok.requests("tok-route-2")) == 1
    await upstream.close_sessions()


async def _until(condition, what: str) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


async def test_the_upstream_stream_limit_moves_while_transfers_are_in_flight(fake_grok):
    # `max_upstream_streams` is a runtime setting: each start applies the value its config carries.
    fake_grok.reset()
    await upstream.close_sessions()
    config = dataclasses.replace(_client(fake_grok).config, max_clients=1)

    async def answer(token: str) -> list[bytes]:
        async with GrokClient(config).chat(token, {"modeId": "fast", "message": "hi"},
                                           first_byte_timeout=5, total_timeout=10) as lines:
            return [line async for line in lines]

    async with GrokClient(config).chat("tok-lim-a", {"modeId": "fast", "message": "[fake:pace=200:20]"},
                                       first_byte_timeout=5, total_timeout=30):
        slots = upstream._loops[asyncio.get_running_loop()].slots
        second = asyncio.create_task(answer("tok-lim-b"))
        await _until(lambda: slots.waiting == 1, "the second transfer waits for a slot")
        assert not fake_grok.requests("tok-lim-b") and slots.busy == 1

        upstream._transfers(dataclasses.replace(config, max_clients=2))  # the operator raised the setting
        assert await asyncio.wait_for(second, 10)  # answered whole while the first still streams
        assert slots.limit == 2 and slots.waiting == 0

        upstream._transfers(config)  # ... and lowered it again: one running already fills it
        third = asyncio.create_task(answer("tok-lim-c"))
        await _until(lambda: slots.waiting == 1, "the third transfer waits under the lowered limit")
        assert not fake_grok.requests("tok-lim-c")
    assert await asyncio.wait_for(third, 10)  # the first ended: its slot went to the waiter
    assert slots.busy == 0 and slots.waiting == 0
    await upstream.close_sessions()


async def test_a_waiter_cancelled_before_it_resumes_keeps_no_slot():
    slots = transfer.Slots(1)
    await slots.acquire()
    waiting = asyncio.create_task(slots.acquire())
    await _until(lambda: slots.waiting == 1, "the second acquire waits")
    waiting.cancel()  # still waiting: it leaves the queue
    with pytest.raises(asyncio.CancelledError):
        await waiting

    first, second = asyncio.create_task(slots.acquire()), asyncio.create_task(slots.acquire())
    await _until(lambda: slots.waiting == 2, "two acquires wait")
    slots.release()  # the slot goes to the first waiter...
    first.cancel()  # ...which is cancelled before it resumes: the slot passes to the next
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 10)
    assert slots.busy == 1 and slots.waiting == 0
