"""How a chat is asked of Grok and read back: one interface, one implementation per transport.

`RestDialect` is today's REST app-chat (gen-2 body with `modeId`, NDJSON frames).
The mgw WebSocket transport (protocol §3) becomes a second class with the same
`open()`; the service does not change.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

from gateway.frames import Event, FrameParser
from gateway.upstream import GrokClient


@dataclass(frozen=True, slots=True)
class ChatAsk:
    mode: str  # fast | auto | expert | heavy
    prompt: str
    temperature: float | None = None
    top_p: float | None = None


@dataclass(frozen=True, slots=True)
class Budget:
    first_byte: float
    idle: float
    total: float


class Dialect(Protocol):
    def open(self, token: str, ask: ChatAsk, budget: Budget) -> AsyncIterator[AsyncIterator[list[Event]]]:
        """An async context manager yielding one list of events per upstream frame."""
        ...


def rest_body(ask: ChatAsk) -> dict:
    """The gen-2 chat body (§2.2) for a new temporary conversation."""
    metadata: dict = {}
    override = {k: v for k, v in (("temperature", ask.temperature), ("topP", ask.top_p)) if v is not None}
    if override:
        metadata["modelConfigOverride"] = override
    return {
        "temporary": True,
        "modeId": ask.mode,
        "message": ask.prompt,
        "fileAttachments": [],
        "imageAttachments": [],
        "disableSearch": False,
        "enableImageGeneration": True,
        "returnImageBytes": False,
        "returnRawGrokInXaiRequest": False,
        "enableImageStreaming": True,
        "imageGenerationCount": 2,
        "forceConcise": False,
        "toolOverrides": {
            "gmailSearch": False, "googleCalendarSearch": False, "outlookSearch": False,
            "outlookCalendarSearch": False, "googleDriveSearch": False,
        },
        "enableSideBySide": True,
        "forceSideBySide": False,
        "sendFinalMetadata": True,
        "isReasoning": False,
        "disableTextFollowUps": True,
        "disableMemory": True,
        "disableSelfHarmShortCircuit": False,
        "isAsyncChat": False,
        "collectionIds": [],
        "connectors": [],
        "searchAllConnectors": False,
        "responseMetadata": metadata,
        "deviceEnvInfo": {
            "darkModeEnabled": False, "devicePixelRatio": 2, "screenWidth": 2056, "screenHeight": 1329,
            "viewportWidth": 2056, "viewportHeight": 1083,
        },
    }


class RestDialect:
    def __init__(self, client: GrokClient) -> None:
        self.client = client

    @asynccontextmanager
    async def open(self, token: str, ask: ChatAsk, budget: Budget) -> AsyncIterator[AsyncIterator[list[Event]]]:
        async with self.client.chat(
            token, rest_body(ask), first_byte_timeout=budget.first_byte, total_timeout=budget.total
        ) as lines:
            yield _events(lines)


async def _events(lines: AsyncIterator[bytes]) -> AsyncIterator[list[Event]]:
    parser = FrameParser()
    async for line in lines:
        yield parser.feed(line)
    tail = parser.finish()
    if tail:
        yield tail
