"""The frame parser reads every kind of §2.3 frame, and never dies on an odd line."""

from __future__ import annotations

import json

from gateway.grok import frames
from gateway.grok.frames import FrameParser
from gateway.stream import Renderer

STREAM_B = [
    {"result": {"conversation": {"conversationId": "c2"}}},
    {"result": {"response": {"userResponse": {"responseId": "u-2", "message": "Latest Grok news?"}}}},
    {"result": {"response": {"token": "Searching for recent news", "isThinking": True, "messageTag": "header",
                             "rolloutId": "Grok", "messageStepId": 0}}},
    {"result": {"response": {
        "token": "<xai:tool_usage_card><xai:tool_name>web_search</xai:tool_name><xai:tool_args><![CDATA["
                 "{\"query\":\"grok news\"}]]></xai:tool_args></xai:tool_usage_card>",
        "isThinking": True, "messageTag": "tool_usage_card", "toolUsageCardId": "tc-1",
        "toolUsageCard": {"toolUsageCardId": "tc-1", "webSearch": {"args": {"query": "grok news"}}}}}},
    {"result": {"response": {"isThinking": True, "toolUsageCardId": "tc-1", "messageTag": "raw_function_result",
                             "webSearchResults": {"results": [{"url": "https://example.com/a", "title": "Example A",
                                                               "preview": "…"}]}}}},
    {"result": {"response": {"token": "The result says X.", "isThinking": True, "messageTag": "summary"}}},
    {"result": {"response": {"cardAttachment": {"jsonData": json.dumps(
        {"id": "cit1", "type": "render_inline_citation", "cardType": "citation_card",
         "url": "https://example.com/a"})}}}},
    {"result": {"response": {"token": "Grok shipped X", "isThinking": False, "messageTag": "final"}}},
    {"result": {"response": {"token": '<grok:render card_id="cit1" card_type="citation_card" '
                             'type="render_inline_citation"><argument name="citation_id">0</argument>'
                             "</grok:render>.", "isThinking": False, "messageTag": "final"}}},
    {"result": {"response": {"modelResponse": {"responseId": "r-2", "message": "Grok shipped X."}}}},
    {"result": {"response": {"finalMetadata": {}}}},
]


def _events(lines: list) -> list:
    parser = FrameParser()
    out = []
    for line in lines:
        out.extend(parser.feed(line if isinstance(line, str | bytes) else json.dumps(line)))
    return out + parser.finish()


def _render(events: list, fmt: str = "reasoning_content") -> tuple[str, str]:
    renderer = Renderer(thinking_format=fmt, show_thinking=True, show_search=True, assets_url="https://assets")
    content, reasoning = [], []
    for event in events:
        piece = renderer.render(event)
        content.append(piece.content)
        reasoning.append(piece.reasoning)
    content.append(renderer.close().content)
    return "".join(content), "".join(reasoning)


def test_it_reads_stream_b_into_thinking_search_and_cited_answer():
    content, reasoning = _render(_events(STREAM_B))
    assert content == "Grok shipped X [[1]](https://example.com/a)."
    assert "Searching for recent news" in reasoning
    assert "> web_search: grok news" in reasoning
    assert "- [Example A](https://example.com/a)" in reasoning
    assert "The result says X." in reasoning
    assert "xai:" not in reasoning and "grok:render" not in content


def test_it_renders_thinking_as_think_tags_when_asked():
    content, reasoning = _render(_events(STREAM_B), fmt="think")
    assert reasoning == ""
    assert content.startswith("<think>\n")
    assert "\n</think>\n\nGrok shipped X [[1]](https://example.com/a)." in content


def test_it_holds_a_render_tag_split_across_tokens_until_it_closes():
    card = {"result": {"response": {"cardAttachment": {"jsonData": json.dumps(
        {"id": "c9", "type": "render_inline_citation", "url": "https://example.com/z"})}}}}
    tok = lambda t: {"result": {"response": {"token": t, "messageTag": "final"}}}  # noqa: E731
    events = _events([card, tok("See <grok:ren"), tok('der card_id="c9" card_type="citation_card" '),
                      tok('type="render_inline_citation">x</grok:render> ok')])
    assert "".join(e.text for e in events if isinstance(e, frames.TextDelta)) == "See  [[1]](https://example.com/z) ok"


def test_it_drops_repeated_adjacent_citations_and_numbers_by_first_appearance():
    cards = [{"result": {"response": {"cardAttachment": {"jsonData": json.dumps(
        {"id": i, "type": "render_inline_citation", "url": f"https://e.com/{i}"})}}}} for i in ("a", "b")]
    tag = '<grok:render card_id="{}" card_type="citation_card" type="render_inline_citation"></grok:render>'
    line = {"result": {"response": {"token": "x" + tag.format("b") + tag.format("b") + " y" + tag.format("a"),
                                    "messageTag": "final"}}}
    (event,) = [e for e in _events([*cards, line]) if isinstance(e, frames.TextDelta)]
    assert event.text == "x [[1]](https://e.com/b) y [[2]](https://e.com/a)"


def test_it_survives_garbage_and_unknown_fields():
    events = _events([
        "this is not json {{{", b"\xff\xfe", "[1,2]", '{"result":{"unexpected":true}}', "data: [DONE]", "",
        {"result": {"response": {"token": "ok", "messageTag": "final", "brandNewField": {"x": 1}}}},
    ])
    assert events == [frames.TextDelta("ok")]


def test_it_strips_an_sse_data_prefix():
    assert _events(['data: {"result":{"response":{"token":"hi"}}}']) == [frames.TextDelta("hi")]


def test_it_reports_in_band_errors_of_every_shape():
    events = _events([
        {"error": {"message": "Request rejected by anti-bot rules.", "code": 7, "details": []}},
        {"result": {"response": {"error": {"message": "You've reached your usage limit."}}}},
        {"result": {"response": {"modelResponse": {"message": "", "streamErrors": [{"message": "boom", "code": 13}]}}}},
    ])
    errors = [e for e in events if isinstance(e, frames.StreamError)]
    assert [(e.message, e.code) for e in errors] == [
        ("Request rejected by anti-bot rules.", 7), ("You've reached your usage limit.", None), ("boom", 13)]


def test_it_ignores_thinking_that_arrives_after_the_answer_began():
    events = _events([
        {"result": {"response": {"token": "answer", "messageTag": "final"}}},
        {"result": {"response": {"token": "late thought", "isThinking": True}}},
        {"result": {"response": {"token": "tool output", "messageTag": "raw_function_result"}}},
    ])
    assert events == [frames.TextDelta("answer")]


def test_it_reads_image_frames_of_both_generations():
    card = lambda p: {"result": {"response": {"cardAttachment": {"jsonData": json.dumps(  # noqa: E731
        {"id": "x1", "type": "render_file", "cardType": "generated_image_card",
         "image_chunk": {"imageUuid": "i", "imageUrl": "users/u/generated/cat/image.jpg", "progress": p}})}}}}
    events = _events([
        card(50), card(100),
        {"result": {"response": {"streamingImageGenerationResponse": {"imageIndex": 0, "progress": 50}}}},
        {"result": {"response": {"modelResponse": {"generatedImageUrls": ["users/u/generated/a/image.jpg"]}}}},
    ])
    assert frames.ImageReady("users/u/generated/cat/image.jpg") in events
    assert frames.ImageReady("users/u/generated/a/image.jpg") in events
    assert frames.ImageProgress(0, 50) in events


def test_it_reads_video_progress_and_the_final_video():
    video = lambda **kw: {"result": {"response": {"streamingVideoGenerationResponse": kw}}}  # noqa: E731
    events = _events([
        video(videoId="v1", progress=42, videoPostId="p"),
        video(videoId="v1", progress=100, videoUrl="users/u/generated/v1/generated_video.mp4",
              thumbnailImageUrl="users/u/generated/v1/preview_image.jpg"),
    ])
    assert events == [frames.VideoProgress("v1", 42), frames.VideoReady(
        "users/u/generated/v1/generated_video.mp4", "users/u/generated/v1/preview_image.jpg")]


def test_it_uses_the_final_message_only_when_nothing_streamed():
    renderer = Renderer(thinking_format="think", show_thinking=True, show_search=True, assets_url="a")
    assert renderer.render(frames.FinalMessage("whole answer")).content == "whole answer"
    renderer = Renderer(thinking_format="think", show_thinking=True, show_search=True, assets_url="a")
    renderer.render(frames.TextDelta("streamed"))
    assert not renderer.render(frames.FinalMessage("streamed"))
