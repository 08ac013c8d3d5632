"""Non-stream chat: one `chat.completion` that agrees with the stream."""

from __future__ import annotations

import pytest

from tests.openai_spec import validate

pytestmark = pytest.mark.timeout(30)


def test_it_returns_a_chat_completion_with_usage(client, pool):
    pool.add("good-1")
    reply = client.chat.completions.create(model="grok-chat-fast", messages=[{"role": "user", "content": "hello"}])
    validate("CreateChatCompletionResponse", reply.model_dump(exclude_unset=True))
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    assert reply.choices[0].message.content == "You said: hello"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_it_agrees_with_the_stream(client, pool):
    pool.add("super-1", tier="super")
    ask = {"model": "grok-chat-expert", "messages": [{"role": "user", "content": "the same question"}]}
    whole = client.chat.completions.create(**ask).choices[0].message
    chunks = list(client.chat.completions.create(**ask, stream=True))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
    assert whole.content == content
    assert whole.model_extra["reasoning_content"] == reasoning


def test_it_returns_thinking_inside_think_tags_when_configured(client, pool, runtime):
    runtime(thinking_format="think")
    pool.add("super-1", tier="super")
    message = client.chat.completions.create(
        model="grok-chat-expert", messages=[{"role": "user", "content": "q"}]).choices[0].message
    assert message.content.startswith("<think>\n") and "</think>\n\nGrok shipped X [[1]]" in message.content
    assert "reasoning_content" not in (message.model_extra or {})
