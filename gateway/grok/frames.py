"""NDJSON lines from Grok -> typed events (protocol §2.3).

`FrameParser` is per stream: it remembers the cards it has seen (citations),
whether the answer phase has begun, and an unfinished render tag across tokens.
Unknown fields are ignored; a line it cannot read becomes nothing, never an
exception, so one odd line cannot kill a stream.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ThinkingDelta:
    text: str


@dataclass(frozen=True, slots=True)
class SearchResults:
    results: tuple[tuple[str, str], ...]  # (title, url)


@dataclass(frozen=True, slots=True)
class Conversation:
    conversation_id: str


@dataclass(frozen=True, slots=True)
class ImageProgress:
    index: int
    progress: int
    url: str = ""


@dataclass(frozen=True, slots=True)
class ImageReady:
    url: str  # relative to GROK_ASSETS_URL


@dataclass(frozen=True, slots=True)
class VideoProgress:
    video_id: str
    progress: int


@dataclass(frozen=True, slots=True)
class VideoReady:
    url: str
    thumbnail_url: str = ""


@dataclass(frozen=True, slots=True)
class FinalMessage:
    """`modelResponse.message`: the whole answer, as a fallback when no tokens streamed."""

    text: str


@dataclass(frozen=True, slots=True)
class StreamError:
    message: str
    code: object = None


Event = (
    TextDelta | ThinkingDelta | SearchResults | Conversation | ImageProgress | ImageReady
    | VideoProgress | VideoReady | FinalMessage | StreamError
)

_RENDER = re.compile(
    r'<grok:render\s+card_id="(?P<id>[^"]*)"[^>]*?\stype="(?P<type>[^"]*)"[^>]*>.*?</grok:render>', re.S
)
_XAI_TAG = re.compile(r"<xai:tool_usage_card>.*?</xai:tool_usage_card>|<xaiartifact[^>]*>.*?</xaiartifact>", re.S)
_STRAY_TAG = re.compile(r"</?(?:grok:render|xai:[a-z_]+|xaiartifact|argument)\b[^>]*>")
_PAIRS = (
    ("<grok:render", "</grok:render>"),
    ("<xai:tool_usage_card", "</xai:tool_usage_card>"),
    ("<xaiartifact", "</xaiartifact>"),
)


def _unfinished_tag(text: str) -> int:
    """Where a tag starts that a later token will finish, or -1."""
    for opener, closer in _PAIRS:
        start = text.rfind(opener)
        if start != -1 and closer not in text[start:]:
            return start
    lt = text.rfind("<")
    if lt != -1 and ">" not in text[lt:] and any(o.startswith(text[lt:]) for o, _ in _PAIRS):
        return lt
    return -1


@dataclass
class FrameParser:
    cards: dict[str, dict] = field(default_factory=dict)
    citations: dict[str, int] = field(default_factory=dict)  # url -> number
    answering: bool = False  # a visible answer token has arrived: drop late thinking
    last_citation: str = ""
    _pending: str = ""  # an opened render tag waiting for its close

    def feed(self, line: bytes | str) -> list[Event]:
        if isinstance(line, bytes):
            line = line.decode("utf-8", "replace")
        line = line.strip()
        if line.startswith("data:"):
            line = line[5:].strip()
        if not line or line == "[DONE]" or line.startswith("event:"):
            return []
        try:
            frame = json.loads(line)
        except ValueError:
            logger.warning("ignoring a line from Grok that is not JSON (%d chars)", len(line))
            return []
        if not isinstance(frame, dict):
            return []
        if "error" in frame and "result" not in frame:
            return [_stream_error(frame["error"])]
        result = frame.get("result")
        if not isinstance(result, dict):
            return []
        events: list[Event] = []
        conversation = result.get("conversation")
        if isinstance(conversation, dict) and conversation.get("conversationId"):
            events.append(Conversation(str(conversation["conversationId"])))
        response = result.get("response")
        if isinstance(response, dict):
            self._response(response, events)
        return events

    def finish(self) -> list[Event]:
        """Flush a render tag that never closed (as plain text minus the tag)."""
        if not self._pending:
            return []
        text, self._pending = self._render_whole(self._pending), ""
        return [TextDelta(text)] if text else []

    def _response(self, r: dict, events: list[Event]) -> None:
        error = r.get("error")
        if error:
            events.append(_stream_error(error))
        card = r.get("cardAttachment")
        if isinstance(card, dict):
            self._remember_card(card.get("jsonData"), events)
        thinking = bool(r.get("isThinking"))
        tag = r.get("messageTag") or ""
        token = r.get("token")
        if isinstance(token, str) and token:
            self._token(token, thinking, tag, r, events)
        search = r.get("webSearchResults")
        if isinstance(search, dict) and not self.answering:
            hits = tuple(
                (str(h.get("title") or h.get("url")), str(h["url"]))
                for h in search.get("results") or [] if isinstance(h, dict) and h.get("url")
            )
            if hits:
                events.append(SearchResults(hits))
        xsearch = r.get("xSearchResults")
        if isinstance(xsearch, dict) and not self.answering:
            hits = tuple(
                (f"@{p.get('username')}: {str(p.get('text', ''))[:80]}",
                 f"https://x.com/{p.get('username')}/status/{p.get('postId')}")
                for p in xsearch.get("results") or [] if isinstance(p, dict) and p.get("postId")
            )
            if hits:
                events.append(SearchResults(hits))
        image = r.get("streamingImageGenerationResponse")
        if isinstance(image, dict):
            self._image(image, events)
        video = r.get("streamingVideoGenerationResponse")
        if isinstance(video, dict):
            self._video(video, events)
        model_response = r.get("modelResponse")
        if isinstance(model_response, dict):
            self._model_response(model_response, events)

    def _token(self, token: str, thinking: bool, tag: str, r: dict, events: list[Event]) -> None:
        if thinking:
            if self.answering or tag == "raw_function_result":
                return
            card = r.get("toolUsageCard")
            if tag == "tool_usage_card" or "<xai:tool_usage_card>" in token:
                line = _describe_tool(card) if isinstance(card, dict) else ""
                if line:
                    events.append(ThinkingDelta(line))
                return
            text = _STRAY_TAG.sub("", _XAI_TAG.sub("", token))
            if tag == "header":
                text = f"\n\n{text}\n\n"
            if text:
                events.append(ThinkingDelta(text))
            return
        if tag not in ("", "final"):
            return
        text = self._render(self._pending + token)
        if text:
            self.answering = True
            events.append(TextDelta(text))

    def _render(self, text: str) -> str:
        """Replace complete render tags; hold back an unfinished one until its close arrives."""
        if "<" not in text:  # most tokens: no tag to render or to wait for
            self._pending = ""
            return text
        cut = _unfinished_tag(text)
        self._pending = text[cut:] if cut != -1 else ""
        return self._render_whole(text[:cut] if cut != -1 else text)

    def _render_whole(self, text: str) -> str:
        text = _XAI_TAG.sub("", text)
        text = _RENDER.sub(self._render_tag, text)
        return _STRAY_TAG.sub("", text)

    def _render_tag(self, match: re.Match) -> str:
        card = self.cards.get(match["id"], {})
        kind = match["type"]
        if kind == "render_inline_citation":
            url = card.get("url")
            if not url:
                return ""
            if url == self.last_citation:  # the same source cited twice in a row
                return ""
            self.last_citation = url
            number = self.citations.setdefault(url, len(self.citations) + 1)
            return f" [[{number}]]({url})"
        if kind == "render_searched_image":
            image = card.get("image") or {}
            if image.get("thumbnail") and image.get("link"):
                return f"[![{image.get('title', '')}]({image['thumbnail']})]({image['link']})"
        return ""

    def _remember_card(self, raw: object, events: list[Event]) -> None:
        try:
            card = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            return
        if not isinstance(card, dict) or not card.get("id"):
            return
        self.cards[str(card["id"])] = card
        chunk = card.get("image_chunk")
        if isinstance(chunk, dict) and chunk.get("imageUrl"):
            progress = int(chunk.get("progress") or 0)
            if progress >= 100 and not chunk.get("moderated") and not chunk.get("systemErrCode"):
                events.append(ImageReady(str(chunk["imageUrl"])))
            elif progress < 100:
                events.append(ImageProgress(0, progress, str(chunk["imageUrl"])))

    def _image(self, image: dict, events: list[Event]) -> None:
        progress = int(image.get("progress") or 0)
        url = str(image.get("imageUrl") or "")
        final = progress >= 100 or image.get("isFinal")
        if final and url and not image.get("moderated"):
            events.append(ImageReady(url))
        else:
            events.append(ImageProgress(int(image.get("imageIndex") or 0), progress, url))

    def _video(self, video: dict, events: list[Event]) -> None:
        progress = int(video.get("progress") or 0)
        if progress >= 100 and video.get("videoUrl") and not video.get("moderated"):
            events.append(VideoReady(str(video["videoUrl"]), str(video.get("thumbnailImageUrl") or "")))
        else:
            events.append(VideoProgress(str(video.get("videoId") or ""), progress))

    def _model_response(self, mr: dict, events: list[Event]) -> None:
        for raw in mr.get("cardAttachmentsJson") or []:
            self._remember_card(raw, [])
        for url in mr.get("generatedImageUrls") or []:
            if isinstance(url, str) and url:
                events.append(ImageReady(url))
        errors = mr.get("streamErrors")
        if isinstance(errors, list) and errors:
            events.append(_stream_error(errors[0]))
        message = mr.get("message")
        if isinstance(message, str):
            events.append(FinalMessage(self._render_whole(message)))


def _stream_error(error: object) -> StreamError:
    if isinstance(error, dict):
        inner = error.get("error")
        if isinstance(inner, dict):
            error = inner
        return StreamError(str(error.get("message") or "unknown upstream error"), error.get("code"))
    return StreamError(str(error))


def _describe_tool(card: dict) -> str:
    for key, value in card.items():
        if key == "toolUsageCardId" or not isinstance(value, dict):
            continue
        name = re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()
        args = value.get("args") or {}
        detail = next((str(v) for v in args.values() if v), "") if isinstance(args, dict) else ""
        return f"\n> {name}: {detail}\n" if detail else f"\n> {name}\n"
    return ""
