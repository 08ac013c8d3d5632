"""How a chat is asked of Grok and read back: one interface, one implementation per transport.

`RestDialect` is today's REST app-chat (gen-2 body with `modeId`, NDJSON frames).
The mgw WebSocket transport (protocol §3) becomes a second class with the same
`open()`; the service does not change.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

from gateway.grok.client import GrokClient, LineStream
from gateway.grok.frames import Event, FrameParser


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


class EventReader(Protocol):
    async def read(self, deadline: float | None) -> list[Event] | None:
        """The events that arrived (at least one); [] once the answer has ended; None at `deadline`
        (the event loop's clock)."""
        ...


class Dialect(Protocol):
    def open(self, token: str, ask: ChatAsk, budget: Budget) -> AbstractAsyncContextManager[EventReader]:
        """An async context manager yielding the answer's `EventReader`."""
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
    async def open(self, token: str, ask: ChatAsk, budget: Budget) -> AsyncIterator[EventReader]:
        async with self.client.chat(
            token, rest_body(ask), first_byte_timeout=budget.first_byte, total_timeout=budget.total
        ) as lines:
            yield NdjsonEvents(lines)


class NdjsonEvents:
    """The REST answer's NDJSON lines, parsed as they are read."""

    __slots__ = ("_lines", "_parser")

    def __init__(self, lines: LineStream) -> None:
        self._lines = lines
        self._parser = FrameParser()

    async def read(self, deadline: float | None) -> list[Event] | None:
        while True:  # lines that carry nothing visible (metadata) do not count as an answer
            lines = await self._lines.read(deadline)
            if lines is None:
                return None
            if not lines:
                return self._parser.finish()  # [] when nothing was held back
            events: list[Event] = []
            for line in lines:
                events.extend(self._parser.feed(line))
            if events:
                return events
