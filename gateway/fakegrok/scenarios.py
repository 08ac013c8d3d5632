"""Which stream a chat request gets, and the timing and damage applied to it.

The behaviour comes from the request body (mode, media kind) and from markers in the
prompt, written `[fake:NAME]` or `[fake:NAME=ARG]` anywhere in `message`. Content
markers pick the stream; the modifiers (stall, stall-after, pace, garbage, cut) then
turn its frames into wire steps.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from . import streams
from .http import Cut, Pause, Step
from .streams import Frame, Turn

MARKER = re.compile(r"\[fake:([a-z0-9-]+)(?:=([^\]]*))?\]")
MODES = ("fast", "auto", "expert", "heavy", "grok-420-computer-use-sa")
COST = {"fast": 1, "auto": 1, "expert": 4, "heavy": 4, "grok-420-computer-use-sa": 4}
THINKING_MODES = {"expert", "heavy", "grok-420-computer-use-sa"}
# Streams that fail in-band before the model runs: real grok charges nothing for them.
UNCHARGED = {"inband-antibot", "inband-ratelimit", "usage-limit"}
# Content markers in priority order; the first one present picks the stream.
CONTENT_MARKERS = (
    "inband-antibot",
    "inband-ratelimit",
    "usage-limit",
    "error-after-text",
    "pace",
    "empty",
    "image-old",
    "image",
    "video",
)
GARBAGE = [b"this is not json {{{\n", b'{"result":{"unexpected":true}}\n']


def parse_markers(message: str) -> dict[str, str]:
    return {m.group(1): m.group(2) or "" for m in MARKER.finditer(message)}


def seconds(markers: dict[str, str], name: str) -> float:
    """A marker's numeric argument, or 0 when it is absent or not a number."""
    try:
        return max(float(markers.get(name) or 0), 0.0)
    except ValueError:
        return 0.0


def pace_of(markers: dict[str, str]) -> tuple[int, float] | None:
    """`[fake:pace=COUNT:MS]` as (count, seconds between tokens)."""
    count, _, ms = markers.get("pace", "").partition(":")
    try:
        return max(int(count), 0), max(float(ms or 0), 0.0) / 1000
    except ValueError:
        return None


def gen1_mode(model_name: str, model_mode: str) -> str:
    """Map a gen-1 `modelName`/`modelMode` to a gen-2 mode (§2.2, §12)."""
    mode, name = model_mode.upper(), model_name.lower()
    if "HEAVY" in mode or "heavy" in name:
        return "heavy"
    if mode == "MODEL_MODE_FAST":
        return "fast"
    if "EXPERT" in mode or "THINKING" in mode or mode == "MODEL_MODE_GROK_420":
        return "expert"
    if mode in ("", "MODEL_MODE_UNKNOWN") and "thinking" in name:
        return "expert"
    return "fast"


def mode_of(body: dict[str, Any]) -> str | None:
    """The request's mode; None when `modeId` names a mode grok does not have."""
    if "modeId" in body:
        return body["modeId"] if body["modeId"] in MODES else None
    return gen1_mode(str(body.get("modelName") or ""), str(body.get("modelMode") or ""))


def rate_limit_mode(model_name: str) -> str:
    """The counter a rate-limits query reads: a gen-2 mode, or a gen-1 model name mapped.

    Gen-1 clients ask by model ([D] `grok-3` for fast calls, `grok-4` for expert ones).
    """
    if model_name in MODES:
        return model_name
    if model_name in ("grok-4", "grok-420"):
        return "expert"
    return gen1_mode(model_name, "")


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def media_request(body: dict[str, Any]) -> str | None:
    """'edit' or 'video' when the body asks for Imagine media instead of a chat answer."""
    media_input, tools = _dict(body.get("mediaGenInput")), _dict(body.get("toolOverrides"))
    name = "" if "modeId" in body else str(body.get("modelName") or "")
    if name == "imagine-image-edit" or "imageToImage" in media_input:
        return "edit"
    if name == "imagine-video-gen" or tools.get("videoGen") or "textToVideo" in media_input:
        return "video"
    return None


@dataclass(frozen=True)
class Plan:
    kind: str  # echo | think | pace | empty | image | image-old | video | edit | a failure stream
    mode: str  # the request's mode
    charged: bool  # whether the (token, mode) quota pays for it
    markers: dict[str, str]

    @property
    def cost(self) -> int:
        return COST[self.mode]


def plan(body: dict[str, Any], mode: str, markers: dict[str, str]) -> Plan:
    media = media_request(body)
    kind = next((name for name in CONTENT_MARKERS if name in markers), None)
    if kind == "pace" and pace_of(markers) is None:
        kind = None
    if kind is None:
        kind = media or ("think" if mode in THINKING_MODES or "think" in markers else "echo")
    return Plan(kind, mode, charged=media is None and kind not in UNCHARGED, markers=markers)


def media_paths(kind: str, uid: str) -> list[str]:
    """The asset paths a media stream will announce, decided before it starts."""

    def generated(name: str, suffix: str = "") -> str:
        return f"users/{uid}/generated/{uuid.uuid4()}{suffix}/{name}"

    if kind == "image":
        return [generated("image.jpg")]
    if kind == "image-old":
        return [generated("image.jpg"), generated("image.jpg")]
    if kind == "video":
        video_id = uuid.uuid4()
        base = f"users/{uid}/generated/{video_id}"
        return [f"{base}/generated_video.mp4", f"{base}/preview_image.jpg"]
    if kind == "edit":
        edit_id = uuid.uuid4()
        base = f"users/{uid}/generated/{edit_id}"
        return [f"{base}-part-0/image.jpg", f"{base}/image.jpg"]
    return []


def _video_options(body: dict[str, Any]) -> tuple[str, str]:
    """(post id, resolution) from whichever era's video parameters the body carries."""
    text_to_video = _dict(_dict(body.get("mediaGenInput")).get("textToVideo"))
    override = _dict(_dict(body.get("responseMetadata")).get("modelConfigOverride"))
    config = _dict(_dict(override.get("modelMap")).get("videoGenModelConfig"))
    post_id = str(config.get("parentPostId") or uuid.uuid4())
    return post_id, str(text_to_video.get("resolutionName") or config.get("resolutionName") or "720p")


def frames(chosen: Plan, turn: Turn, body: dict[str, Any]) -> Iterator[Frame]:
    kind = chosen.kind
    if kind == "think":
        return streams.thinking(turn, heavy=chosen.mode == "heavy")
    if kind == "pace":
        return streams.paced(turn, (pace_of(chosen.markers) or (0, 0.0))[0])
    if kind == "video":
        return streams.video(turn, *_video_options(body))
    builders = {
        "echo": streams.echo,
        "empty": streams.empty,
        "image": streams.image_card,
        "image-old": streams.image_legacy,
        "edit": streams.image_edit,
        "error-after-text": streams.error_after_text,
        "usage-limit": streams.usage_limit,
        "inband-antibot": streams.inband_antibot,
        "inband-ratelimit": streams.inband_ratelimit,
    }
    return builders[kind](turn)


def steps(frame_iter: Iterable[Frame], markers: dict[str, str]) -> Iterator[Step]:
    """Encode frames as wire lines, adding the pauses, garbage and cut the markers ask for."""
    stall, stall_after = seconds(markers, "stall"), seconds(markers, "stall-after")
    pace = (pace_of(markers) or (0, 0.0))[1] if "pace" in markers else 0.0
    if stall:
        yield Pause(stall)
    answers = 0
    for sent, ((is_answer, frame), last) in enumerate(_mark_last(frame_iter)):
        if "cut" in markers and (sent >= 3 or last):
            yield Cut()  # never the whole stream: the client must see a partial body
            return
        if is_answer:
            if pace and answers:
                yield Pause(pace)
            answers += 1
        yield streams.encode(frame)
        if "garbage" in markers and sent == 1:
            yield from GARBAGE
        if stall_after and is_answer and answers == 2:
            yield Pause(stall_after)


def _mark_last(items: Iterable[Frame]) -> Iterator[tuple[Frame, bool]]:
    iterator = iter(items)
    try:
        current = next(iterator)
    except StopIteration:
        return
    for following in iterator:
        yield current, False
        current = following
    yield current, True
