"""`X-Thinking-Format` picks how one request sees the thinking, over the runtime's `thinking_format`."""

from __future__ import annotations

import openai
import pytest

pytestmark = pytest.mark.timeout(30)
THINK = [{"role": "user", "content": "[fake:think] q"}]  # the fake answers with thinking on any model


def _header(value: str) -> dict:
    return {"extra_headers": {"X-Thinking-Format": value}}


def _streamed(client, value: str) -> tuple[str, str]:
    """(content, reasoning_content) of one streamed answer asked with the header."""
    chunks = list(client.chat.completions.create(model="grok-chat-fast", messages=THINK, stream=True, **_header(value)))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
    return content, reasoning


def _whole(client, value: str):
    """The message of one non-streamed answer asked with the header."""
    return client.chat.completions.create(model="grok-chat-fast", messages=THINK, **_header(value)).choices[0].message


def test_think_puts_the_thinking_in_the_content_over_the_runtime_default(client, pool):
    pool.add("good-1")
    content, reasoning = _streamed(client, "think")
    assert content.startswith("<think>\n") and "\n</think>\n\n" in content
    assert reasoning == ""
    message = _whole(client, "think")
    assert message.content == content
    assert "reasoning_content" not in (message.model_extra or {})


def test_reasoning_content_wins_over_a_runtime_set_to_think(client, pool, runtime):
    runtime(thinking_format="think")
    pool.add("good-1")
    content, reasoning = _streamed(client, "reasoning_content")
    assert reasoning and "<think>" not in content and content
    message = _whole(client, "Reasoning_Content")
    assert message.model_extra["reasoning_content"] == reasoning and message.content == content


def test_none_hides_the_thinking(client, pool, runtime):
    runtime(thinking_format="think")
    pool.add("good-1")
    content, reasoning = _streamed(client, "none")
    assert content and "<think>" not in content and reasoning == ""
    message = _whole(client, "none")
    assert message.content == content and "reasoning_content" not in (message.model_extra or {})


def test_without_the_header_the_runtime_setting_applies(client, pool, runtime):
    runtime(thinking_format="think")
    pool.add("good-1")
    message = client.chat.completions.create(model="grok-chat-fast", messages=THINK).choices[0].message
    assert message.content.startswith("<think>\n")


def test_an_unknown_value_is_a_400_naming_the_header(client, pool, fake_grok):
    pool.add("good-1")
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="grok-chat-fast", messages=THINK, stream=True, **_header("loud"))
    error = caught.value.body
    assert error["param"] == "X-Thinking-Format" and error["type"] == "invalid_request_error"
    assert "reasoning_content, think, none" in error["message"]
    assert fake_grok.requests("good-1") == []  # refused before any account was asked
