"""Every fault of the fake ends the call cleanly: an error status before the first byte,
an error event plus [DONE] after it. Never a hang."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import API_KEY, settle_usage
from tests.openai_spec import validate

pytestmark = pytest.mark.timeout(30)


def _stream(gateway: str, prompt: str, model: str = "grok-chat-fast") -> tuple[int, list[str], str]:
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": prompt}]}
    with httpx.stream("POST", gateway + "/v1/chat/completions", json=body, timeout=20,
                      headers={"Authorization": f"Bearer {API_KEY}"}) as response:
        raw = "".join(response.iter_text())
    events = [line[6:] for line in raw.splitlines() if line.startswith("data: ")]
    return response.status_code, events, raw


def _content(events: list[str]) -> str:
    chunks = [json.loads(e) for e in events if e != "[DONE]"]
    deltas = [c["choices"][0]["delta"] for c in chunks if c.get("choices")]
    return "".join(d.get("content") or "" for d in deltas)


def _error_event(events: list[str]) -> dict:
    errors = [json.loads(e) for e in events if e != "[DONE]" and "error" in json.loads(e)]
    assert len(errors) == 1, events
    validate("ErrorResponse", errors[0])
    return errors[0]["error"]


def test_it_ends_a_stream_cut_mid_answer_with_an_error_event_and_done(gateway, pool):
    pool.add("good-1")
    status, events, _ = _stream(gateway, "[fake:cut] tell me a long story")
    assert status == 200
    assert events[-1] == "[DONE]"
    assert _error_event(events)["code"] == "upstream_unavailable"
    assert _content(events)  # what arrived before the cut was delivered


def test_it_ends_a_stream_that_goes_silent_with_a_timeout_event(gateway, pool, runtime):
    runtime(idle_timeout=0.5, heartbeat_interval=0.2)
    pool.add("good-1")
    status, events, raw = _stream(gateway, "[fake:stall-after=5] hello")
    assert status == 200 and events[-1] == "[DONE]"
    assert _error_event(events)["code"] == "upstream_timeout"
    assert ": keep-alive" in raw  # heartbeats while waiting


def test_it_ends_a_stream_past_the_total_budget(gateway, pool, runtime):
    runtime(total_timeout=1.0, idle_timeout=30)
    pool.add("good-1")
    status, events, _ = _stream(gateway, "[fake:pace=100:50]")
    assert status == 200 and events[-1] == "[DONE]"
    error = _error_event(events)
    assert error["code"] == "upstream_timeout" and "longer than" in error["message"]


def test_it_ends_a_stream_with_an_in_band_error_after_text(gateway, pool):
    pool.add("good-1")
    status, events, _ = _stream(gateway, "[fake:error-after-text]")
    assert status == 200 and events[-1] == "[DONE]"
    assert _error_event(events)["type"] == "upstream_error"


def test_it_skips_garbage_lines_and_finishes_the_answer(gateway, pool):
    pool.add("good-1")
    status, events, _ = _stream(gateway, "[fake:garbage] ok")
    assert status == 200 and events[-1] == "[DONE]"
    assert _content(events) == "You said: [fake:garbage] ok"
    assert not any("error" in e for e in events[:-1])


def test_it_answers_a_first_byte_stall_with_504_before_streaming(gateway, pool, runtime):
    runtime(first_byte_timeout=0.5)
    pool.add("good-1")
    status, events, raw = _stream(gateway, "[fake:stall=5]")
    assert status == 504 and events == []
    validate("ErrorResponse", json.loads(raw))


def test_it_retries_an_empty_answer_elsewhere_then_gives_502(gateway, pool, fake_grok):
    pool.add("good-1")
    status, _, raw = _stream(gateway, "[fake:empty]")
    assert status == 502
    assert "empty answer" in json.loads(raw)["error"]["message"]


def test_it_leaves_no_stream_open_after_faults(gateway, pool, fake_grok, runtime):
    runtime(idle_timeout=0.5)
    pool.add("good-1")
    for prompt in ("[fake:cut]", "[fake:stall-after=3]", "[fake:garbage]", "[fake:error-after-text]"):
        _stream(gateway, prompt)
    import time

    deadline = time.monotonic() + 5
    while fake_grok.stats("good-1").in_flight and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake_grok.stats("good-1").in_flight == 0
    settle_usage()
    account = pool.get("good-1")
    assert account.use_count == 4
