"""The fake grok upstream, driven over loopback the way the gateway drives it: curl_cffi
over HTTP/1.1 with streamed NDJSON, plus the stdlib for wire-level checks."""

from __future__ import annotations

import asyncio
import base64
import http.client
import itertools
import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from curl_cffi import CurlHttpVersion
from curl_cffi.requests import AsyncSession
from curl_cffi.requests.exceptions import RequestException

from gateway.fakegrok import FakeGrok
from gateway.fakegrok.scenarios import gen1_mode
from gateway.fakegrok.state import user_id

STATSIG = base64.b64encode(b"e:TypeError: Cannot read properties of undefined (reading 'abcdefghij')").decode()
NEW = "/rest/app-chat/conversations/new"
LIMITS = "/rest/rate-limits"
FAST = {"modelName": "fast"}


@pytest.fixture(scope="module")
def fake():
    server = FakeGrok(host="127.0.0.1", port=0)
    server.start_in_thread()
    yield server
    server.stop_thread()


@pytest.fixture(autouse=True)
def _clean(fake):
    fake.reset()


@pytest.fixture
async def session():
    async with AsyncSession(http_version=CurlHttpVersion.V1_1, max_clients=20, timeout=10) as s:
        yield s


def headers(token: str | None = "good-1", statsig: str | None = STATSIG, **extra: str) -> dict[str, str]:
    result = {"Content-Type": "application/json", **extra}
    if token is not None:
        result["Cookie"] = f"sso={token}; sso-rw={token}"
    if statsig is not None:
        result["x-statsig-id"] = statsig
    return result


def decode(line: bytes) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        return line.decode()


async def post(session, fake, path: str, body: Any, token: str | None = "good-1", **kwargs: Any):
    return await session.post(fake.base_url + path, json=body, headers=headers(token), **kwargs)


async def get(session, fake, path: str, token: str | None = "good-1"):
    return await session.get(f"{fake.base_url}/{path.lstrip('/')}", headers=headers(token))


async def stream(session, fake, body: dict[str, Any], token: str = "good-1", path: str = NEW):
    """POST a chat body and read the whole stream: (response, decoded lines)."""
    response = await post(session, fake, path, body, token, stream=True)
    lines = [decode(line) async for line in response.aiter_lines() if line]
    await response.aclose()
    return response, lines


async def chat(session, fake, message: str, token: str = "good-1", path: str = NEW, **body: Any):
    return await stream(session, fake, {"modeId": "fast", "message": message, **body}, token, path)


def frames(lines: list[Any]) -> list[dict[str, Any]]:
    """The `result.response` objects of a stream."""
    return [
        line["result"]["response"] for line in lines if isinstance(line, dict) and "response" in line.get("result", {})
    ]


def responses(lines: list[Any], key: str) -> list[Any]:
    return [frame[key] for frame in frames(lines) if key in frame]


def answer(lines: list[Any]) -> str:
    return "".join(f["token"] for f in frames(lines) if f.get("messageTag") == "final" and "token" in f)


def raw_chat_request(message: str) -> bytes:
    payload = json.dumps({"modeId": "fast", "message": message}).encode()
    head = (
        f"POST {NEW} HTTP/1.1\r\nHost: fake\r\nContent-Type: application/json\r\n"
        f"Cookie: sso=raw; sso-rw=raw\r\nx-statsig-id: {STATSIG}\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


# -- checks like grok.com -----------------------------------------------------------------------
@pytest.mark.parametrize("cookie", [None, "sso=a", "sso-rw=a", "sso=a; sso-rw=b", "sso=; sso-rw="])
async def test_it_rejects_a_bad_session_cookie_with_401(fake, session, cookie):
    sent = headers(token=None) | ({"Cookie": cookie} if cookie else {})
    response = await session.post(fake.base_url + NEW, json={"modeId": "fast", "message": "hi"}, headers=sent)
    assert response.status_code == 401
    assert response.json() == {"code": 16, "message": "unauthenticated", "details": []}


@pytest.mark.parametrize("statsig", [None, "", "not base64!!"])
async def test_it_rejects_a_missing_or_invalid_statsig_with_403(fake, session, statsig):
    response = await session.post(fake.base_url + LIMITS, json=FAST, headers=headers(statsig=statsig))
    assert response.status_code == 403
    assert response.json() == {"code": 7, "message": "Request rejected by anti-bot rules.", "details": []}


async def test_it_rejects_bodies_that_are_not_json(fake, session):
    text = headers(**{"Content-Type": "text/plain"})
    wrong_type = await session.post(fake.base_url + LIMITS, data=b'{"modelName":"fast"}', headers=text)
    broken = await session.post(fake.base_url + LIMITS, data=b"{nope", headers=headers())
    assert (wrong_type.status_code, broken.status_code) == (400, 400)
    assert broken.json()["code"] == 3


async def test_it_records_every_request_even_rejected_ones(fake, session):
    await session.post(fake.base_url + LIMITS, json=FAST, headers=headers("rec-1", statsig=None))
    [record] = fake.requests("rec-1")
    assert (record.method, record.path, record.status, record.token) == ("POST", LIMITS, 403, "rec-1")
    assert record.json == FAST and record.raw_body == b'{"modelName":"fast"}'
    assert record.headers["cookie"] == "sso=rec-1; sso-rw=rec-1"


async def test_it_answers_404_for_unknown_routes(fake, session):
    assert (await post(session, fake, "/rest/nothing-here", {})).status_code == 404


# -- chat streams ---------------------------------------------------------------------------------
async def test_it_echoes_the_prompt_exactly_in_stream_a(fake, session):
    message = 'line one\nline two: ünïcode ✓ and "quotes" {braces}'
    response, lines = await chat(session, fake, message)
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert "conversationId" in lines[0]["result"]["conversation"]
    assert responses(lines, "userResponse")[0]["message"] == message
    tokens = responses(lines, "token")
    assert len(tokens) > 3 and all(1 <= len(t) <= 8 for t in tokens)
    assert answer(lines) == "You said: " + message
    [model_response] = responses(lines, "modelResponse")
    assert model_response["message"] == "You said: " + message
    assert responses(lines, "finalMetadata") and "[DONE]" not in str(lines[-1])


@pytest.mark.parametrize(
    ("body", "thinking"),
    [
        ({"modelName": "grok-3", "modelMode": "MODEL_MODE_FAST"}, False),
        ({"modelName": "grok-4", "modelMode": "MODEL_MODE_EXPERT"}, True),
        ({"modelName": "grok-4-1-thinking-1129", "modelMode": "MODEL_MODE_GROK_4_1_THINKING"}, True),
        ({"modeId": "auto", "modelName": "grok-4", "modelMode": "MODEL_MODE_EXPERT"}, False),
        ({"modeId": "expert"}, True),
    ],
)
async def test_it_accepts_both_request_generations(fake, session, body, thinking):
    response, lines = await stream(session, fake, {"message": "hi", **body})
    assert response.status_code == 200
    assert any(responses(lines, "isThinking")) is thinking
    assert answer(lines).endswith("You said: hi")


def test_it_maps_gen1_modes():
    assert gen1_mode("grok-3", "MODEL_MODE_FAST") == "fast"
    assert gen1_mode("grok-420", "MODEL_MODE_GROK_420") == "expert"
    assert gen1_mode("grok-4", "MODEL_MODE_HEAVY") == "heavy"
    assert gen1_mode("grok-4-1-thinking-1129", "MODEL_MODE_UNKNOWN") == "expert"


async def test_it_rejects_an_unknown_mode_id(fake, session):
    assert (await post(session, fake, NEW, {"modeId": "turbo", "message": "x"})).status_code == 400


async def test_it_streams_thinking_search_and_a_citation_in_stream_b(fake, session):
    _, lines = await chat(session, fake, "news?", modeId="expert")
    thoughts = [f for f in frames(lines) if f.get("isThinking")]
    assert [t["messageTag"] for t in thoughts] == [
        "header",
        "tool_usage_card",
        "raw_function_result",
        "summary",
    ]
    assert thoughts[1]["token"].startswith("<xai:tool_usage_card>")
    results = [(r["url"], r["title"]) for r in thoughts[2]["webSearchResults"]["results"]]
    assert results == [("https://example.com/a", "Example A"), ("https://example.com/b", "Example B")]
    card = json.loads(responses(lines, "cardAttachment")[0]["jsonData"])
    assert (card["id"], card["url"]) == ("cit1", "https://example.com/a")
    text = answer(lines)
    render = '<grok:render card_id="cit1" card_type="citation_card" type="render_inline_citation">'
    assert text.startswith("Grok shipped X" + render)
    assert text.endswith("</grok:render>. You said: news?")
    [model_response] = responses(lines, "modelResponse")
    assert model_response["message"] == text and len(model_response["cardAttachmentsJson"]) == 1
    assert len(model_response["webSearchResults"]) == 2


async def test_it_labels_heavy_thinking_with_agents(fake, session):
    _, lines = await chat(session, fake, "x", modeId="heavy")
    assert set(responses(lines, "rolloutId")) == {"Agent 1", "Agent 2"}


async def test_it_thinks_on_fast_when_the_marker_asks(fake, session):
    _, lines = await chat(session, fake, "x [fake:think]")
    assert any(responses(lines, "isThinking")) and responses(lines, "webSearchResults")


async def test_it_generates_a_card_image_only_its_owner_can_download(fake, session):
    _, lines = await chat(session, fake, "draw [fake:image]", token="img-1")
    cards = [json.loads(c["jsonData"]) for c in responses(lines, "cardAttachment")]
    assert [c["image_chunk"] and c["image_chunk"]["progress"] for c in cards] == [None, 50, 100]
    url = cards[-1]["image_chunk"]["imageUrl"]
    assert re.fullmatch(rf"users/{user_id('img-1')}/generated/[0-9a-f-]{{36}}/image\.jpg", url)
    mine, theirs, anonymous = [await get(session, fake, url, token) for token in ("img-1", "img-2", None)]
    assert mine.status_code == 200 and mine.headers["content-type"] == "image/jpeg"
    assert mine.content.startswith(b"\xff\xd8") and url.encode() in mine.content
    assert (theirs.status_code, anonymous.status_code) == (403, 403)


async def test_it_generates_old_style_images(fake, session):
    _, lines = await chat(session, fake, "draw [fake:image-old]")
    assert len(responses(lines, "modelResponse")[0]["generatedImageUrls"]) == 2
    progress = responses(lines, "streamingImageGenerationResponse")
    assert [p["progress"] for p in progress] == [50, 50, 100, 100]


@pytest.mark.parametrize(
    "body",
    [
        {"message": "a cat [fake:video]", "modeId": "fast"},
        {
            "modelName": "imagine-video-gen",
            "message": "a cat",
            "mediaGenInput": {"textToVideo": {"prompt": "a cat"}},
        },
        {
            "modelName": "grok-3",
            "modelMode": "MODEL_MODE_FAST",
            "message": "cat",
            "toolOverrides": {"videoGen": True},
        },
    ],
)
async def test_it_generates_video(fake, session, body):
    _, lines = await stream(session, fake, body, "vid-1")
    progress = responses(lines, "streamingVideoGenerationResponse")
    assert [p["progress"] for p in progress] == [1, 42, 95, 100]
    video_url = progress[-1]["videoUrl"]
    assert video_url.endswith("/generated_video.mp4")
    assert responses(lines, "modelResponse")[0]["fileAttachments"] == [video_url]
    download = await get(session, fake, video_url, "vid-1")
    assert download.headers["content-type"] == "video/mp4" and download.content[4:8] == b"ftyp"


@pytest.mark.parametrize(
    "body",
    [
        {"modelName": "imagine-image-edit", "modelMode": None, "toolOverrides": {"imageGen": True}},
        {"modelName": "imagine-image-edit", "mediaGenInput": {"imageToImage": {"inputAssets": ["f1"]}}},
    ],
)
async def test_it_edits_images_in_stream_e(fake, session, body):
    _, lines = await stream(session, fake, {"message": "add a hat", **body})
    progress = responses(lines, "streamingImageGenerationResponse")
    assert [p["progress"] for p in progress] == [50, 100] and "-part-0/" in progress[0]["imageUrl"]
    assert responses(lines, "modelResponse")[0]["generatedImageUrls"] == [progress[1]["imageUrl"]]


async def test_it_continues_a_conversation_for_its_owner_only(fake, session):
    _, first = await chat(session, fake, "one", token="conv-1")
    path = f"/rest/app-chat/conversations/{first[0]['result']['conversation']['conversationId']}/responses"
    response, lines = await chat(session, fake, "two", token="conv-1", path=path, parentResponseId="u-1")
    assert response.status_code == 200 and "conversation" not in lines[0]["result"]
    assert answer(lines) == "You said: two"
    stranger, _ = await chat(session, fake, "three", token="conv-2", path=path, responseId="u-1")
    assert stranger.status_code == 404


# -- scenarios chosen by token and by marker --------------------------------------------------------
@pytest.mark.parametrize(
    ("token", "status", "code", "message"),
    [
        ("expired-1", 401, 16, "token expired"),
        ("banned-1", 403, 7, "User is blocked [WKE=unauthorized:blocked-user]"),
        ("flaky-1", 503, 14, "upstream unavailable"),
    ],
)
@pytest.mark.parametrize("path", [NEW, LIMITS, "/api/auth/session", "/users/x/generated/y/image.jpg"])
async def test_it_fails_every_endpoint_for_a_bad_token(fake, session, token, status, code, message, path):
    if path.startswith(("/api", "/users")):
        response = await get(session, fake, path, token)
    else:
        response = await post(session, fake, path, {"modeId": "fast", "modelName": "fast", "message": "hi"}, token)
    assert response.status_code == status
    assert response.json() == {"code": code, "message": message, "details": []}


async def test_it_shows_cloudflare_to_a_cfblocked_token(fake, session):
    response = await post(session, fake, LIMITS, FAST, "cfblocked-1")
    assert response.status_code == 403 and response.headers["content-type"].startswith("text/html")
    assert all(s in response.text for s in ("Just a moment...", "__cf_chl_", "challenge-platform"))


async def test_it_rate_limits_a_ratelimited_token(fake, session):
    response, lines = await chat(session, fake, "hi", token="ratelimited-1")
    assert response.status_code == 429 and response.headers["retry-after"] == "60"
    assert lines == [{"code": 8, "message": "Too many requests", "details": []}]
    limits = await post(session, fake, LIMITS, FAST, "ratelimited-1")
    assert limits.json()["remainingQueries"] == 0


@pytest.mark.parametrize(
    ("marker", "status", "content_type", "retry_after"),
    [
        ("401", 401, "application/json", None),
        ("403", 403, "text/html; charset=UTF-8", None),
        ("403-antibot", 403, "application/json", None),
        ("429", 429, "application/json", "30"),
        ("500", 500, "application/json", None),
        ("502", 502, "application/json", None),
        ("503", 503, "application/json", None),
    ],
)
async def test_it_answers_the_status_a_marker_asks_for(fake, session, marker, status, content_type, retry_after):
    response, lines = await chat(session, fake, f"hi [fake:status={marker}]")
    assert response.status_code == status and response.headers["content-type"] == content_type
    assert response.headers.get("retry-after") == retry_after
    if content_type == "application/json":
        assert set(lines[0]) == {"code", "message", "details"}
    if marker == "403-antibot":
        assert lines[0]["message"] == "Request rejected by anti-bot rules."


@pytest.mark.parametrize(
    ("marker", "expected"),
    [
        (
            "inband-antibot",
            {"error": {"message": "Request rejected by anti-bot rules.", "code": 7, "details": []}},
        ),
        ("inband-ratelimit", {"error": {"message": "rate limited", "code": 8}}),
    ],
)
async def test_it_fails_in_band_with_http_200(fake, session, marker, expected):
    response, lines = await chat(session, fake, f"hi [fake:{marker}]")
    assert response.status_code == 200 and lines == [expected]


async def test_it_reports_a_usage_limit_in_the_response(fake, session):
    _, lines = await chat(session, fake, "hi [fake:usage-limit]")
    assert "conversation" in lines[0]["result"] and len(lines) == 2
    assert responses(lines, "error") == [{"message": "You've reached your usage limit. Please try again later."}]


async def test_it_errors_after_some_text(fake, session):
    _, lines = await chat(session, fake, "hi [fake:error-after-text]")
    assert answer(lines) and lines[-1] == {"error": {"message": "internal model error", "code": 13}}
    assert not responses(lines, "modelResponse")


async def test_it_sends_an_empty_answer(fake, session):
    _, lines = await chat(session, fake, "hi [fake:empty]")
    assert len(lines) == 3 and not responses(lines, "token")
    assert responses(lines, "modelResponse")[0]["message"] == ""


async def test_it_mixes_garbage_into_a_normal_stream(fake, session):
    _, lines = await chat(session, fake, "hi [fake:garbage]")
    assert "this is not json {{{" in lines and {"result": {"unexpected": True}} in lines
    assert answer(lines) == "You said: hi [fake:garbage]"


async def test_it_cuts_the_connection_mid_stream(fake, session):
    response = await post(session, fake, NEW, {"modeId": "fast", "message": "hi [fake:cut]"}, "cut-1", stream=True)
    received = []
    with pytest.raises(RequestException):
        async for line in response.aiter_lines():
            received.append(line)
    assert 1 <= len(received) <= 3
    assert await fake.await_idle(5) and fake.stats("cut-1").cut == 1


def test_it_stalls_between_the_headers_and_the_first_line(fake):
    # Raw socket: curl_cffi's stream=True only returns at the first body byte, so it
    # cannot tell a slow status line from a stall after the headers; this test can.
    with socket.create_connection(("127.0.0.1", fake.port), timeout=5) as sock:
        started = time.monotonic()
        sock.sendall(raw_chat_request("hi [fake:stall=0.3]"))
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            head += sock.recv(65536)
        headers_at = time.monotonic()
        first_line = sock.recv(65536)
        first_line_at = time.monotonic()
    assert head.startswith(b"HTTP/1.1 200 OK") and b"conversation" in first_line
    assert first_line_at - started >= 0.28 and first_line_at - headers_at >= 0.25


async def test_it_delays_a_curl_stream_by_the_stall(fake, session):
    started = time.monotonic()
    _, lines = await chat(session, fake, "hi [fake:stall=0.3]")
    assert time.monotonic() - started >= 0.28 and answer(lines) == "You said: hi [fake:stall=0.3]"


async def test_it_stalls_after_two_answer_tokens(fake, session):
    body = {"modeId": "fast", "message": "hi [fake:stall-after=0.3]"}
    response = await post(session, fake, NEW, body, stream=True)
    arrivals = [(decode(line), time.monotonic()) async for line in response.aiter_lines() if line]
    tokens = [at for line, at in arrivals if "token" in line["result"].get("response", {})]
    gaps = [later - earlier for earlier, later in itertools.pairwise(tokens)]
    assert gaps[1] >= 0.28 and gaps[1] == max(gaps)


async def test_it_paces_tokens(fake, session):
    started = time.monotonic()
    _, lines = await chat(session, fake, "[fake:pace=6:50]")
    assert answer(lines) == "tok0 tok1 tok2 tok3 tok4 tok5 "
    assert time.monotonic() - started >= 0.24


async def test_it_delays_the_status_line(fake, session):
    started = time.monotonic()
    response, _ = await chat(session, fake, "hi [fake:slow-headers=0.3] [fake:status=503]")
    assert response.status_code == 503 and time.monotonic() - started >= 0.28


# -- quota ----------------------------------------------------------------------------------------
async def test_it_counts_quota_per_mode_and_answers_429_when_spent(fake, session):
    async def limits(body):
        return (await post(session, fake, LIMITS, body, "quota-1")).json()

    assert await limits(FAST) == {
        "windowSizeSeconds": 7200,
        "remainingQueries": 140,
        "totalQueries": 140,
        "remainingTokens": 140,
        "totalTokens": 140,
        "lowEffortRateLimits": None,
        "highEffortRateLimits": None,
    }
    await chat(session, fake, "hi", token="quota-1")
    await chat(session, fake, "hi", token="quota-1", modeId="expert")
    assert (await limits(FAST))["remainingQueries"] == 139
    assert (await limits({"requestKind": "DEFAULT", "modelName": "grok-4"}))["remainingTokens"] == 136
    fake.set_quota("quota-1", "expert", remaining=5, total=50, window=600)
    ok, _ = await chat(session, fake, "hi", token="quota-1", modeId="expert")
    refused, lines = await chat(session, fake, "hi", token="quota-1", modeId="expert")
    assert ok.status_code == 200 and refused.status_code == 429 and refused.headers["retry-after"] == "600"
    assert lines == [{"code": 8, "message": "Too many requests", "details": []}]
    assert (await limits({"modelName": "expert"}))["remainingQueries"] == 1


async def test_it_reports_imagine_quota(fake, session):
    response = await post(session, fake, "/rest/media/imagine/quota_info", {})
    assert set(response.json()) == {"image", "imagePro", "imageEdit", "video", "video720p"}


# -- uploads, media posts, assets -----------------------------------------------------------------
async def test_it_stores_uploads_for_their_owner(fake, session):
    content = base64.b64encode(b"\x89PNG fake bytes").decode()
    body = json.dumps({"fileName": "image.png", "fileMimeType": "image/png", "content": content})
    text_plain = headers("up-1", **{"Content-Type": "text/plain;charset=UTF-8"})
    uploaded = await session.post(fake.base_url + "/rest/app-chat/upload-file", data=body, headers=text_plain)
    file_id, uri = uploaded.json()["fileMetadataId"], uploaded.json()["fileUri"]
    assert uri == f"users/{user_id('up-1')}/{file_id}/content"
    mine, theirs = await get(session, fake, uri, "up-1"), await get(session, fake, uri, "up-2")
    assert mine.content == b"\x89PNG fake bytes" and mine.headers["content-type"] == "image/png"
    assert theirs.status_code == 403
    listed = (await get(session, fake, "/rest/assets?pageSize=50", "up-1")).json()
    assert [a["assetId"] for a in listed["assets"]] == [file_id] and listed["nextPageToken"] == ""
    deleted = await session.delete(f"{fake.base_url}/rest/assets-metadata/{file_id}", headers=headers("up-1"))
    assert deleted.json() == {} and (await get(session, fake, uri, "up-1")).status_code == 404


def test_it_takes_multipart_uploads_without_statsig(fake):
    boundary = "fakeboundary42"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file_source"\r\n\r\nIMAGINE\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="cat.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + b"\xff\xd8raw\r\nbytes"
        + f"\r\n--{boundary}--\r\n".encode()
    )
    cookie = "sso=v2-1; sso-rw=v2-1"
    connection = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=5)
    sent = {"Cookie": cookie, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    connection.request("POST", "/http/upload-file-v2/direct", body=body, headers=sent)
    result = json.loads(connection.getresponse().read())
    assert result["uploadId"] and result["fileMetadata"]["fileUri"].endswith("/content")
    connection.request("GET", "/" + result["fileMetadata"]["fileUri"], headers={"Cookie": cookie})
    download = connection.getresponse()
    assert download.read() == b"\xff\xd8raw\r\nbytes" and download.getheader("content-type") == "image/jpeg"
    connection.close()


async def test_it_creates_media_posts_and_upscales(fake, session):
    created = await post(session, fake, "/rest/media/post/create", {"mediaType": "MEDIA_POST_TYPE_VIDEO"})
    assert re.fullmatch(r"[0-9a-f-]{36}", created.json()["post"]["id"])
    assert (await post(session, fake, "/rest/media/post/create-link", {"postId": "p"})).json() == {}
    upscale = await post(session, fake, "/rest/media/video/upscale", {"videoId": "v1"})
    assert upscale.json() == {"hdMediaUrl": f"users/{user_id('good-1')}/generated/v1/generated_video_hd.mp4"}


async def test_it_reports_the_session_user(fake, session):
    response = await get(session, fake, "/api/auth/session", "who-1")
    assert response.json() == {"user": {"id": user_id("who-1")}}


# -- stats, connections, lifetime -------------------------------------------------------------------
async def test_it_counts_streams_in_flight_and_completed(fake, session):
    await asyncio.gather(*(chat(session, fake, "[fake:pace=4:60]", token="stats-1") for _ in range(3)))
    assert await fake.await_idle(5)
    stats = fake.stats("stats-1")
    assert (stats.started, stats.completed, stats.in_flight, stats.max_in_flight) == (3, 3, 0, 3)
    assert stats.disconnected == 0


async def test_it_notices_a_client_that_leaves_mid_stream(fake, session):
    body = {"modeId": "fast", "message": "[fake:pace=500:20]"}
    response = await post(session, fake, NEW, body, "gone-1", stream=True)
    count = 0
    async for _ in response.aiter_lines():
        count += 1
        if count == 3:
            break
    assert fake.stats("gone-1").in_flight == 1
    if getattr(response, "quit_now", None) is not None:
        response.quit_now.set()
    await response.aclose()
    assert await fake.await_idle(5)
    stats = fake.stats("gone-1")
    assert (stats.disconnected, stats.completed, stats.in_flight) == (1, 0, 0)


async def test_it_keeps_connections_alive(fake, session):
    await post(session, fake, LIMITS, FAST)
    before = fake.connections
    for _ in range(3):
        await chat(session, fake, "hi")
        await post(session, fake, LIMITS, FAST)
    assert fake.connections == before


def test_it_writes_each_line_as_its_own_chunk(fake):
    with socket.create_connection(("127.0.0.1", fake.port), timeout=5) as sock:
        sock.sendall(raw_chat_request("chunks"))
        raw = b""
        while not raw.endswith(b"\r\n0\r\n\r\n"):
            raw += sock.recv(65536)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    chunks = []
    while body:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        chunks.append(body[:size])
        body = body[size + 2 :]
    assert chunks[-1] == b"" and all(c.endswith(b"\n") and c.count(b"\n") == 1 for c in chunks[:-1])


def test_it_exposes_stats_and_reset_over_http(fake):
    connection = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=5)
    connection.request("GET", "/api/auth/session", headers={"Cookie": "sso=http-1; sso-rw=http-1"})
    connection.getresponse().read()
    connection.request("GET", "/_fake/stats")
    stats = json.loads(connection.getresponse().read())["http-1"]
    counters = ("in_flight", "max_in_flight", "started", "completed", "disconnected", "cut")
    assert stats == dict.fromkeys(counters, 0) | {"requests": 1}
    connection.request("POST", "/_fake/reset")
    assert connection.getresponse().status == 200 and fake.requests() == []
    connection.close()


async def test_it_runs_on_the_current_loop(session):
    local = FakeGrok()
    await local.start()
    try:
        response = await get(session, local, "/api/auth/session", "loop-1")
        assert response.status_code == 200 and local.requests("loop-1")[0].path == "/api/auth/session"
    finally:
        await local.stop()


def test_it_runs_as_a_command_until_sigterm():
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "gateway.fakegrok", "--host", "127.0.0.1", "--port", "0"]
    process = subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert re.fullmatch(r"fakegrok listening on http://127\.0\.0\.1:\d+\n", line)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
    finally:
        process.kill()
        process.stdout.close()
