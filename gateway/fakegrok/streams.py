"""The NDJSON frame sequences of protocol §2.5 (streams A–E and the failure streams).

Builders yield `(is_answer, frame)` pairs lazily, so a paced stream of thousands of
tokens costs nothing up front; `is_answer` marks visible answer tokens, which the
stall-after and pace modifiers in `scenarios.py` count.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

Frame = tuple[bool, dict[str, Any]]

MODEL_HASH = "fakegrok0001"
SEARCH_RESULTS = [
    {"url": "https://example.com/a", "title": "Example A", "preview": "The first fake result."},
    {"url": "https://example.com/b", "title": "Example B", "preview": "The second fake result."},
]
CITATION_CARD = {
    "id": "cit1",
    "type": "render_inline_citation",
    "cardType": "citation_card",
    "url": "https://example.com/a",
}
CITATION_TAG = (
    '<grok:render card_id="cit1" card_type="citation_card" type="render_inline_citation">'
    '<argument name="citation_id">0</argument></grok:render>'
)
TOOL_CARD_XML = (
    "<xai:tool_usage_card><xai:tool_name>web_search</xai:tool_name>"
    '<xai:tool_args><![CDATA[{"query":"grok news"}]]></xai:tool_args></xai:tool_usage_card>'
)
_TOKEN_SIZES = (4, 6, 8, 5, 7)


@dataclass
class Turn:
    """Ids and inputs of one chat turn, fixed before the first frame is built."""

    message: str
    model: str
    conversation_id: str
    new_conversation: bool
    user_response_id: str
    response_id: str
    media: list[str] = field(default_factory=list)  # asset paths this turn "generates"


# One shared encoder: json.dumps() with options builds a new one per call, per line.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def encode(frame: dict[str, Any]) -> bytes:
    return _ENCODER.encode(frame).encode() + b"\n"


def split_tokens(text: str) -> list[str]:
    """Deterministic 4–8 character pieces, like the deltas grok streams."""
    pieces, start, i = [], 0, 0
    while start < len(text):
        size = _TOKEN_SIZES[i % len(_TOKEN_SIZES)]
        pieces.append(text[start : start + size])
        start, i = start + size, i + 1
    return pieces


def _response(**fields: Any) -> dict[str, Any]:
    return {"result": {"response": fields}}


def _answer(turn: Turn, token: str, **extra: Any) -> Frame:
    fields = {"token": token, "isThinking": False, "messageTag": "final", "responseId": turn.response_id}
    return True, _response(**fields, **extra)


def _thought(token: str, tag: str, rollout: str, step: int, **extra: Any) -> Frame:
    fields = {
        "token": token,
        "isThinking": True,
        "messageTag": tag,
        "rolloutId": rollout,
        "messageStepId": step,
    }
    return False, _response(**fields, **extra)


def _other(**fields: Any) -> Frame:
    return False, _response(**fields)


def _conversation(turn: Turn) -> Iterator[Frame]:
    if turn.new_conversation:  # grok sends it only on /conversations/new
        conversation = {
            "conversationId": turn.conversation_id,
            "title": "New conversation",
            "temporary": True,
        }
        yield False, {"result": {"conversation": conversation}}


def _head(turn: Turn) -> Iterator[Frame]:
    yield from _conversation(turn)
    user = {
        "responseId": turn.user_response_id,
        "message": turn.message,
        "sender": "human",
        "model": turn.model,
    }
    yield _other(userResponse=user)


def _tail(turn: Turn, message: str, **extra: Any) -> Iterator[Frame]:
    model_response = {
        "responseId": turn.response_id,
        "message": message,
        "sender": "ASSISTANT",
        "parentResponseId": turn.user_response_id,
        "generatedImageUrls": [],
        "model": turn.model,
        "metadata": {"llm_info": {"modelHash": MODEL_HASH}},
        **extra,
    }
    yield _other(modelResponse=model_response)
    yield _other(finalMetadata={"followUpSuggestions": []})


def echo(turn: Turn) -> Iterator[Frame]:
    """Stream A: the answer is exactly 'You said: ' + the prompt, so flattening can be checked."""
    text = "You said: " + turn.message
    yield from _head(turn)
    for token in split_tokens(text):
        yield _answer(turn, token)
    yield from _tail(turn, text)


def paced(turn: Turn, count: int) -> Iterator[Frame]:
    yield from _head(turn)
    for i in range(count):
        yield _answer(turn, f"tok{i} ")
    yield from _tail(turn, "".join(f"tok{i} " for i in range(count)))


def empty(turn: Turn) -> Iterator[Frame]:
    yield from _conversation(turn)
    yield from _tail(turn, "")


def thinking(turn: Turn, heavy: bool) -> Iterator[Frame]:
    """Stream B: reasoning, a web search, a citation card, then an answer citing it."""
    first, second = ("Agent 1", "Agent 2") if heavy else ("Grok", "Grok")
    tool_card = {"toolUsageCardId": "tc-1", "webSearch": {"args": {"query": "grok news"}}}
    yield from _head(turn)
    yield _thought("Searching for recent news", "header", first, 0)
    yield _thought(TOOL_CARD_XML, "tool_usage_card", first, 1, toolUsageCardId="tc-1", toolUsageCard=tool_card)
    yield _other(
        isThinking=True,
        toolUsageCardId="tc-1",
        webSearchResults={"results": SEARCH_RESULTS},
        messageTag="raw_function_result",
    )
    yield _thought("The result says X.", "summary", second, 2)
    yield _other(cardAttachment={"jsonData": json.dumps(CITATION_CARD)})
    tokens = ["Grok shipped X", CITATION_TAG + ".", " You said: " + turn.message]
    for token in tokens:
        yield _answer(turn, token)
    yield from _tail(
        turn,
        "".join(tokens),
        webSearchResults=[{"url": r["url"], "title": r["title"]} for r in SEARCH_RESULTS],
        cardAttachmentsJson=[json.dumps(CITATION_CARD)],
    )


def _image_card(path: str, progress: int | None) -> dict[str, Any]:
    chunk = None
    if progress is not None:
        chunk = {"imageUuid": path.split("/")[-2], "imageUrl": path, "progress": progress, "moderated": False}
    card = {"id": "img1", "type": "render_file", "cardType": "generated_image_card", "image_chunk": chunk}
    return {"jsonData": json.dumps(card)}


def image_card(turn: Turn) -> Iterator[Frame]:
    """Stream C2: a generated-image card that fills in, referenced by a render tag."""
    path = turn.media[0]
    tag = (
        '<grok:render card_id="img1" card_type="generated_image_card" type="render_file">'
        '<argument name="file_path">/home/workdir/artifacts/imagine_images/image.jpg</argument></grok:render>'
    )
    yield from _head(turn)
    yield False, _response(cardAttachment=_image_card(path, None), messageTag="final")
    yield _answer(turn, tag)
    for progress in (50, 100):
        yield False, _response(cardAttachment=_image_card(path, progress), messageTag="final")
    yield _answer(turn, "Here is your image.", isSoftStop=True)
    yield from _tail(turn, tag + "Here is your image.", cardAttachmentsJson=[_image_card(path, 100)["jsonData"]])


def image_legacy(turn: Turn) -> Iterator[Frame]:
    """Stream C1: progress by image index, URLs only in modelResponse.generatedImageUrls."""
    text = "I'm generating images…"
    yield from _head(turn)
    yield _answer(turn, text, imageAttachmentInfo={})
    for progress in (50, 100):
        for index in range(len(turn.media)):
            yield _other(streamingImageGenerationResponse={"imageIndex": index, "progress": progress})
    yield from _tail(turn, text, generatedImageUrls=list(turn.media))


def video(turn: Turn, post_id: str, resolution: str) -> Iterator[Frame]:
    """Stream D: video progress frames; the last one carries the asset paths."""
    video_path, thumbnail = turn.media
    video_id = video_path.split("/")[-2]
    base = {"videoId": video_id, "videoPostId": post_id}
    yield from _conversation(turn)
    yield _other(streamingVideoGenerationResponse={**base, "progress": 1, "resolutionName": resolution})
    for progress in (42, 95):
        yield _other(streamingVideoGenerationResponse={**base, "progress": progress})
    done = {"progress": 100, "assetId": video_id, "videoUrl": video_path, "thumbnailImageUrl": thumbnail}
    yield _other(streamingVideoGenerationResponse={**base, **done, "moderated": False})
    yield _answer(turn, "I generated a video", isSoftStop=True)
    yield from _tail(turn, "I generated a video", fileAttachments=[video_path])


def image_edit(turn: Turn) -> Iterator[Frame]:
    """Stream E: a partial then a final edited image, and generatedImageUrls."""
    partial, final = turn.media
    yield from _conversation(turn)
    yield _other(streamingImageGenerationResponse={"imageUrl": partial, "progress": 50})
    yield _other(streamingImageGenerationResponse={"imageUrl": final, "progress": 100, "moderated": False})
    yield from _tail(turn, "", generatedImageUrls=[final])


def error_after_text(turn: Turn) -> Iterator[Frame]:
    yield from _head(turn)
    for token in split_tokens("You said: " + turn.message)[:3]:
        yield _answer(turn, token)
    yield False, {"error": {"message": "internal model error", "code": 13}}


def usage_limit(turn: Turn) -> Iterator[Frame]:
    yield from _conversation(turn)
    yield _other(error={"message": "You've reached your usage limit. Please try again later."})


def inband_antibot(turn: Turn) -> Iterator[Frame]:
    yield False, {"error": {"message": "Request rejected by anti-bot rules.", "code": 7, "details": []}}


def inband_ratelimit(turn: Turn) -> Iterator[Frame]:
    yield False, {"error": {"message": "rate limited", "code": 8}}
