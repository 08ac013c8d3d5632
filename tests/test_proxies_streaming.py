"""Through a proxy, answers still stream: pieces arrive as Grok sends them, and a stall is still noticed."""

from __future__ import annotations

import json

import httpx
import pytest

from pools.models import Proxy
from tests.conftest import API_KEY
from tests.proxy_server import via

pytestmark = pytest.mark.timeout(30)


def _stream(gateway: str, prompt: str) -> list[dict | str]:
    body = {"model": "grok-chat-fast", "stream": True, "messages": [{"role": "user", "content": prompt}]}
    with httpx.stream("POST", gateway + "/v1/chat/completions", json=body, timeout=20,
                      headers={"Authorization": f"Bearer {API_KEY}"}) as response:
        assert response.status_code == 200
        raw = "".join(response.iter_text())
    events = [line[6:] for line in raw.splitlines() if line.startswith("data: ")]
    return [e if e == "[DONE]" else json.loads(e) for e in events]


def _text(events: list[dict | str]) -> str:
    deltas = [e["choices"][0]["delta"] for e in events if isinstance(e, dict) and e.get("choices")]
    return "".join(d.get("content") or "" for d in deltas)


def test_it_streams_a_whole_answer_through_a_proxy(gateway, pool, fake_grok, runtime, farm):
    runtime(proxy_mode="list")
    Proxy.objects.create(url=farm.proxy("relay").url)
    pool.add("good-1")

    events = _stream(gateway, "[fake:pace=5:20] hi")

    assert _text(events) == "tok0 tok1 tok2 tok3 tok4 " and events[-1] == "[DONE]"
    assert [via(r.headers) for r in fake_grok.requests("good-1")] == ["relay"]


def test_it_delivers_what_came_before_a_stall_and_then_times_out(gateway, pool, runtime, farm):
    # A proxy that buffered the answer would hold everything until the stall ended:
    # no text, no idle timeout. Pieces that arrive before the stall prove it streams.
    runtime(proxy_mode="list", idle_timeout=0.5, heartbeat_interval=0.2)
    Proxy.objects.create(url=farm.proxy("relay").url)
    pool.add("good-1")

    events = _stream(gateway, "[fake:stall-after=5] tell me a story")

    errors = [e["error"] for e in events if isinstance(e, dict) and "error" in e]
    assert _text(events) and [e["code"] for e in errors] == ["upstream_timeout"] and events[-1] == "[DONE]"
