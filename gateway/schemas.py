"""Typed edges of /v1: request bodies in, responses out (OpenAI's shapes)."""

from __future__ import annotations

from typing import Literal

from ninja import Schema
from pydantic import BaseModel, ConfigDict, Field


class _Lenient(BaseModel):
    """A request body part. Plain pydantic: ninja's `Schema` wraps every object it validates
    so it can read Django model attributes, about 4 µs per message; a request body is JSON,
    and chat clients send whole conversations (50 messages: 204 µs against 14)."""

    # Clients send many fields we do not use (logit_bias, user, seed…): ignore them.
    model_config = ConfigDict(extra="ignore")


class ContentPart(_Lenient):
    type: str
    text: str | None = None


class ChatMessage(_Lenient):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(_Lenient):
    include_usage: bool = False


class ChatCompletionRequest(_Lenient):
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    reasoning_effort: str | None = None


class Model(Schema):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(Schema):
    object: Literal["list"] = "list"
    data: list[Model]


class ErrorDetail(Schema):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(Schema):
    error: ErrorDetail

