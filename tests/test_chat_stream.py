"""Streaming chat through the official openai SDK: OpenAI's chunk shapes, end to end."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import API_KEY
from tests.openai_spec import validate

pytestmark = pytest.mark.timeout(30)


def _sse_events(gateway: str, body: dict) -> list[str]:
    """The raw `data:` payloads of one streamed call, in order."""
    with httpx.stream("POST", gateway + "/v1/chat/completions", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {API_KEY}"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        return [line[6:] for line in response.iter_lines() if line.startswith("data: ")]


def test_it_streams_the_answer_through_the_sdk(client, pool):
    pool.add("good-1")
    chunks = list(client.chat.completions.create(
        model="grok-chat-fast", messages=[{"role": "user", "content": "Say hi"}], stream=True))
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk.model_dump(exclude_unset=True))
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "You said: Say hi"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert all(c.model == "grok-chat-fast" for c in chunks)


def test_it_delivers_more_than_one_content_chunk(client, pool):
    pool.add("good-1")
    deltas = [c.choices[0].delta.content for c in client.chat.completions.create(
        model="grok-chat-fast", messages=[{"role": "user", "content": "a fairly long prompt to echo"}], stream=True)
        if c.choices and c.choices[0].delta.content]
    assert len(deltas) > 2


def test_it_ends_with_a_usage_chunk_and_done_when_asked(gateway, pool):
    pool.add("good-1")
    events = _sse_events(gateway, {"model": "grok-chat-fast", "stream": True,
                                   "stream_options": {"include_usage": True},
                                   "messages": [{"role": "user", "content": "count me"}]})
    assert events[-1] == "[DONE]"
    import json

    chunks = [json.loads(e) for e in events[:-1]]
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] > 0
    assert usage["usage"]["prompt_tokens"] > 0 and usage["usage"]["completion_tokens"] > 0
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"


def test_it_flattens_multi_turn_history_with_role_labels(client, pool, fake_grok):
    pool.add("good-1")
    messages = [
        {"role": "user", "content": "first question"},
        {"role": "system", "content": "be brief"},
        {"role": "assistant", "content": "first answer"},
        {"role": "developer", "content": [{"type": "text", "text": "use English"}]},
        {"role": "user", "content": [{"type": "text", "text": "second"}, {"type": "text", "text": "part"}]},
    ]
    text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="grok-chat-fast", messages=messages, stream=True))
    expected = ("system: be brief\n\nuse English\n\nuser: first question\n\nassistant: first answer"
                "\n\nuser: second\npart")
    assert text == "You said: " + expected
    (sent,) = [r for r in fake_grok.requests("good-1") if r.path.endswith("/conversations/new")]
    assert sent.json["message"] == expected
    assert sent.json["modeId"] == "fast" and sent.json["temporary"] is True


def test_it_sends_temperature_and_top_p_as_model_config_override(client, pool, fake_grok):
    pool.add("good-1")
    client.chat.completions.create(model="grok-chat-fast", messages=[{"role": "user", "content": "x"}],
                                   temperature=0.3, top_p=0.9, user="ignored", seed=3)
    (sent,) = [r for r in fake_grok.requests("good-1") if r.path.endswith("/conversations/new")]
    assert sent.json["responseMetadata"]["modelConfigOverride"] == {"temperature": 0.3, "topP": 0.9}


def test_it_streams_thinking_as_reasoning_content_by_default(client, pool):
    pool.add("super-1", tier="super")
    chunks = list(client.chat.completions.create(
        model="grok-chat-expert", messages=[{"role": "user", "content": "news?"}], stream=True))
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "- [Example A](https://example.com/a)" in reasoning
    assert content.startswith("Grok shipped X [[1]](https://example.com/a).")
    assert "<think>" not in content
    for text in (reasoning, content):
        assert "grok:render" not in text and "xai:" not in text


def test_it_streams_thinking_inside_think_tags_when_configured(client, pool, runtime):
    runtime(thinking_format="think")
    pool.add("super-1", tier="super")
    chunks = list(client.chat.completions.create(
        model="grok-chat-expert", messages=[{"role": "user", "content": "news?"}], stream=True))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content.startswith("<think>\n")
    assert "\n</think>\n\nGrok shipped X [[1]](https://example.com/a)." in content
    assert not any(getattr(c.choices[0].delta, "reasoning_content", None) for c in chunks if c.choices)


def test_it_hides_thinking_when_show_thinking_is_off(client, pool, runtime):
    runtime(show_thinking=False)
    pool.add("super-1", tier="super")
    chunks = list(client.chat.completions.create(
        model="grok-chat-expert", messages=[{"role": "user", "content": "news?"}], stream=True))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content.startswith("Grok shipped X")
    assert not any(getattr(c.choices[0].delta, "reasoning_content", None) for c in chunks if c.choices)


def test_it_accepts_the_seed_model_aliases(client, pool, fake_grok):
    pool.add("super-1", tier="super")
    reply = client.chat.completions.create(model="grok-4-expert", messages=[{"role": "user", "content": "hi"}])
    assert reply.model == "grok-4-expert"
    (sent,) = [r for r in fake_grok.requests("super-1") if r.path.endswith("/conversations/new")]
    assert sent.json["modeId"] == "expert"
