"""Events -> what the OpenAI client sees.

`Renderer` decides the visible text (answer, thinking, search links) once;
`ChunkWriter` frames it as SSE `chat.completion.chunk`s and `Aggregator` as one
`chat.completion`. Both paths consume the same `Piece`s, so they always agree.
`EventStream` is the response that carries the SSE chunks: the API handler
(`grok2api.api_handler`) sends it straight from its generator.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

from django.http import StreamingHttpResponse

from gateway.errors import OpenAIError
from gateway.grok import frames

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")


class TokenEstimate:
    """A rough token count: about 4 characters a token, one per CJK character. An estimate, not a bill."""

    __slots__ = ("cjk", "other")

    def __init__(self, text: str = "") -> None:
        self.cjk = self.other = 0
        self.add(text)

    def add(self, text: str) -> None:
        cjk = len(_CJK.findall(text)) if not text.isascii() else 0
        self.cjk += cjk
        self.other += len(text) - cjk

    @property
    def tokens(self) -> int:
        return self.cjk + math.ceil(self.other / 4)


@dataclass(slots=True)
class Piece:
    content: str = ""
    reasoning: str = ""

    def __bool__(self) -> bool:
        return bool(self.content or self.reasoning)


class Renderer:
    """Turns typed events into content/reasoning text, following the runtime settings."""

    def __init__(self, *, thinking_format: str, show_thinking: bool, show_search: bool, assets_url: str) -> None:
        self.think_tags = thinking_format == "think"
        self.show_thinking = show_thinking
        self.show_search = show_search
        self.assets_url = assets_url
        self.think_open = False
        self.thought = False
        self.answered = False
        self.content_count = TokenEstimate()
        self.reasoning_count = TokenEstimate()

    def render(self, event: frames.Event) -> Piece:
        if isinstance(event, frames.ThinkingDelta):
            return self._thinking(event.text)
        if isinstance(event, frames.SearchResults):
            if not self.show_search:
                return Piece()
            return self._thinking("".join(f"\n- [{title}]({url})" for title, url in event.results) + "\n")
        if isinstance(event, frames.TextDelta):
            return self._answer(event.text)
        if isinstance(event, frames.FinalMessage):
            # Only when nothing streamed: some answers arrive whole in `modelResponse`.
            return Piece() if self.answered else self._answer(event.text)
        if isinstance(event, frames.ImageReady):
            return self._answer(f"\n![image]({self._asset(event.url)})\n")
        if isinstance(event, frames.VideoReady):
            return self._answer(f"\n[video]({self._asset(event.url)})\n")
        return Piece()

    def close(self) -> Piece:
        """Close an open `<think>` block when the stream ends inside it."""
        if self.think_open:
            self.think_open = False
            return self._piece(content="\n</think>\n\n")
        return Piece()

    def _thinking(self, text: str) -> Piece:
        if not self.show_thinking or self.answered or not text:
            return Piece()
        if not self.thought:  # no blank lines before the first thought
            text = text.lstrip("\n")
            if not text:
                return Piece()
            self.thought = True
        if not self.think_tags:
            return self._piece(reasoning=text)
        if not self.think_open:
            self.think_open = True
            text = "<think>\n" + text
        return self._piece(content=text)

    def _answer(self, text: str) -> Piece:
        if not text:
            return Piece()
        self.answered = True
        if self.think_open:
            self.think_open = False
            text = "\n</think>\n\n" + text
        return self._piece(content=text)

    def _piece(self, *, content: str = "", reasoning: str = "") -> Piece:
        self.content_count.add(content)
        self.reasoning_count.add(reasoning)
        return Piece(content, reasoning)

    def _asset(self, path: str) -> str:
        return path if path.startswith("http") else f"{self.assets_url}/{path.lstrip('/')}"

    def usage(self, prompt: str) -> dict:
        prompt_tokens = TokenEstimate(prompt).tokens
        reasoning = self.reasoning_count.tokens
        completion = self.content_count.tokens + reasoning
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion,
            "completion_tokens_details": {"reasoning_tokens": reasoning},
        }


# One encoder for every chunk: `json.dumps` with options builds a new one per call.
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class ChunkWriter:
    """SSE frames of one streamed completion: same id and `created` on every chunk."""

    DONE = b"data: [DONE]\n\n"
    HEARTBEAT = b": keep-alive\n\n"

    def __init__(self, completion_id: str, created: int, model: str, *, include_usage: bool) -> None:
        self.include_usage = include_usage
        # Everything but the delta is the same on each chunk: encode it once.
        head = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model}
        self._prefix = "data: " + _dumps(head)[:-1] + ',"choices":[{"index":0,"delta":'
        self._suffix = ',"finish_reason":null}]' + (',"usage":null' if include_usage else "") + "}\n\n"
        self._head = head

    def _chunk(self, delta: dict) -> bytes:
        return (self._prefix + _dumps(delta) + self._suffix).encode()

    def role(self) -> bytes:
        return self._chunk({"role": "assistant", "content": ""})

    def piece(self, piece: Piece) -> bytes:
        delta = {}
        if piece.reasoning:
            delta["reasoning_content"] = piece.reasoning
        if piece.content:
            delta["content"] = piece.content
        return self._chunk(delta)

    def finish(self, reason: str = "stop") -> bytes:
        body = {**self._head, "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}
        if self.include_usage:
            body["usage"] = None
        return ("data: " + _dumps(body) + "\n\n").encode()

    def usage(self, usage: dict) -> bytes:
        return ("data: " + _dumps({**self._head, "choices": [], "usage": usage}) + "\n\n").encode()

    @staticmethod
    def error(error: OpenAIError) -> bytes:
        return ("data: " + _dumps(error.body()) + "\n\n").encode()


class Aggregator:
    """Collects the pieces of a non-stream call into one `chat.completion`."""

    def __init__(self) -> None:
        self.content: list[str] = []
        self.reasoning: list[str] = []

    def add(self, piece: Piece) -> None:
        if piece.content:
            self.content.append(piece.content)
        if piece.reasoning:
            self.reasoning.append(piece.reasoning)

    def body(self, completion_id: str, created: int, model: str, usage: dict) -> dict:
        message: dict = {"role": "assistant", "content": "".join(self.content), "refusal": None}
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
            "usage": usage,
        }


class EventStream(StreamingHttpResponse):
    """A streamed answer whose generator yields bytes ready to send, one write each.

    `grok2api.api_handler.ApiHandler` sends `events` itself; under any other handler
    (Django's test client, for one) it is an ordinary streaming response.
    """

    def __init__(self, events: AsyncIterator[bytes], **kwargs: object) -> None:
        super().__init__(events, **kwargs)
        self.events = events
