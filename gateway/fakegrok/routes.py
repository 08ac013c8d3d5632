"""The fake's endpoints (grok.com REST plus the assets host) and the checks before them.

Every request except the `/_fake/` control routes is recorded with its token before
anything else happens, so tests can also see the requests the fake rejected.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from . import replies
from .chat import chat
from .http import Reply, Request, Response
from .media import content_type_for, parse_multipart, payload_for
from .replies import json_reply
from .scenarios import rate_limit_mode
from .state import Asset, Quota, RecordedRequest, State, user_id


@dataclass
class Call:
    request: Request
    token: str
    uid: str
    body: Any  # the parsed JSON object on JSON routes, else None
    params: dict[str, str]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Callable[[Call], Awaitable[Reply]]
    statsig: bool = True
    body: tuple[str, ...] = ()  # accepted JSON content types; () for routes without a JSON body


JSON = ("application/json",)


def cookies(headers: dict[str, str]) -> dict[str, str]:
    jar: dict[str, str] = {}
    for pair in headers.get("cookie", "").split(";"):
        name, _, value = pair.strip().partition("=")
        jar.setdefault(name, value)
    return jar


def _statsig_ok(value: str) -> bool:
    try:
        return bool(value) and bool(base64.b64decode(value, validate=True))
    except (binascii.Error, ValueError):
        return False


class Routes:
    def __init__(self, state: State) -> None:
        self.state = state
        conversation = r"/rest/app-chat/conversations/(?P<conversation_id>[^/]+)/responses"
        table = [
            ("POST", "/rest/app-chat/conversations/new", self.chat, True, JSON),
            ("POST", conversation, self.chat, True, JSON),
            ("POST", "/rest/app-chat/upload-file", self.upload, True, (*JSON, "text/plain")),
            ("POST", "/http/upload-file-v2/direct", self.upload_v2, False, ()),
            ("POST", "/rest/media/post/create", self.post_create, True, JSON),
            ("POST", "/rest/media/post/create-link", self.empty, True, JSON),
            ("POST", "/rest/media/video/upscale", self.upscale, True, JSON),
            ("POST", "/rest/rate-limits", self.rate_limits, True, JSON),
            ("POST", "/rest/media/imagine/quota_info", self.imagine_quota, True, JSON),
            ("GET", "/rest/assets", self.list_assets, True, ()),
            ("DELETE", r"/rest/assets-metadata/(?P<asset_id>[^/]+)", self.delete_asset, True, ()),
            ("GET", "/api/auth/session", self.session, False, ()),
        ]
        self.routes = [Route(m, re.compile(p), h, s, b) for m, p, h, s, b in table]

    async def __call__(self, request: Request) -> Reply:
        if request.path.startswith("/_fake/"):
            return self.control(request)
        try:
            parsed = json.loads(request.body) if request.body else None
        except (ValueError, UnicodeDecodeError):
            parsed = None
        token = cookies(request.headers).get("sso") or None
        record = RecordedRequest(
            request.method, request.path, request.query, dict(request.headers), request.body, parsed, token
        )
        self.state.record(record)
        reply = await self.dispatch(request, token, parsed)
        self.state.set_status(record, reply.status)
        return reply

    async def dispatch(self, request: Request, token: str | None, parsed: Any) -> Reply:
        if request.path.startswith("/users/") and request.method == "GET":
            return self.asset(request.path.removeprefix("/"), token)
        matches = [(r, m) for r in self.routes if (m := r.pattern.fullmatch(request.path))]
        if not matches:
            return replies.not_found(f"no route for {request.path}")
        found = next(((r, m) for r, m in matches if r.method == request.method), None)
        if found is None:
            return replies.grpc_error(405, 12, f"{request.method} not allowed on {request.path}")
        route, match = found
        failure = self.check(request, route, parsed)
        if failure is not None:
            return failure
        assert token is not None  # check() refused requests without one
        return await route.handler(Call(request, token, user_id(token), parsed, match.groupdict()))

    def check(self, request: Request, route: Route, parsed: Any) -> Response | None:
        """grok.com's gates, in its order: session cookie, anti-bot header, body."""
        jar = cookies(request.headers)
        if not jar.get("sso") or jar.get("sso") != jar.get("sso-rw"):
            return replies.unauthenticated()
        if (failure := replies.for_token(jar["sso"])) is not None:
            return failure
        if route.statsig and not _statsig_ok(request.headers.get("x-statsig-id", "")):
            return replies.antibot()
        if route.body:
            content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if content_type not in route.body:
                return replies.bad_request(f"unsupported content type {content_type or '(none)'}")
            if not isinstance(parsed, dict):
                return replies.bad_request("body must be a JSON object")
        return None

    # -- control routes for tests and benchmarks in other processes ------------------------
    def control(self, request: Request) -> Reply:
        if request.path == "/_fake/stats" and request.method == "GET":
            return json_reply(self.state.snapshot())
        if request.path == "/_fake/reset" and request.method == "POST":
            self.state.reset()
            return json_reply({})
        if request.path == "/_fake/quota" and request.method == "POST":
            try:
                body = json.loads(request.body)
                self.state.set_quota(
                    body["token"],
                    body["mode"],
                    int(body["remaining"]),
                    body.get("total"),
                    body.get("window", 7200),
                )
            except (ValueError, KeyError, TypeError):
                return replies.bad_request("expected {token, mode, remaining, total?, window?}")
            return json_reply({})
        return replies.not_found()

    # -- grok.com ---------------------------------------------------------------------------
    async def chat(self, call: Call) -> Reply:
        return await chat(self.state, call.token, call.body, call.params.get("conversation_id"))

    async def empty(self, call: Call) -> Reply:
        return json_reply({})

    def _store(self, call: Call, asset_id: str, path: str, content_type: str, data: bytes, name: str) -> None:
        self.state.add_asset(Asset(asset_id, path, call.token, content_type, data, name))

    async def upload(self, call: Call) -> Reply:
        content = str(call.body.get("content") or "")
        if content.startswith("data:"):
            content = content.partition(",")[2]
        try:
            data = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            return replies.bad_request("content must be base64")
        file_id = str(uuid.uuid4())
        uri = f"users/{call.uid}/{file_id}/content"
        mime = str(call.body.get("fileMimeType") or "application/octet-stream")
        self._store(call, file_id, uri, mime, data, str(call.body.get("fileName") or "file"))
        return json_reply({"fileMetadataId": file_id, "fileUri": uri, "fileMimeType": mime})

    async def upload_v2(self, call: Call) -> Reply:
        parts = parse_multipart(call.request.headers.get("content-type", ""), call.request.body)
        if "file" not in parts:
            return replies.bad_request("multipart part 'file' is required")
        part = parts["file"]
        file_id = str(uuid.uuid4())
        uri = f"users/{call.uid}/{file_id}/content"
        self._store(call, file_id, uri, part.content_type, part.data, part.filename or "file")
        metadata = {"fileMetadataId": file_id, "fileId": file_id, "fileUri": uri}
        return json_reply({"uploadId": f"upload_{uuid.uuid4().hex[:12]}", "fileMetadata": metadata})

    async def post_create(self, call: Call) -> Reply:
        media_type = call.body.get("mediaType") or call.body.get("media_type") or "MEDIA_POST_TYPE_IMAGE"
        return json_reply({"post": {"id": str(uuid.uuid4()), "mediaType": media_type}})

    async def upscale(self, call: Call) -> Reply:
        video_id = str(call.body.get("videoId") or "")
        if not video_id:
            return replies.bad_request("videoId is required")
        path = f"users/{call.uid}/generated/{video_id}/generated_video_hd.mp4"
        self._store(call, video_id, path, "video/mp4", payload_for(path), "generated_video_hd.mp4")
        return json_reply({"hdMediaUrl": path})

    async def rate_limits(self, call: Call) -> Reply:
        name = call.body.get("modelName")
        if not isinstance(name, str) or not name:
            return replies.bad_request("modelName is required")
        quota = self.state.quota(call.token, rate_limit_mode(name))
        if call.token.startswith("ratelimited-"):
            quota = Quota(0, quota.total, quota.window)
        return json_reply(
            {
                "windowSizeSeconds": quota.window,
                "remainingQueries": quota.remaining,
                "totalQueries": quota.total,
                "remainingTokens": quota.remaining,
                "totalTokens": quota.total,
                "lowEffortRateLimits": None,
                "highEffortRateLimits": None,
            }
        )

    async def imagine_quota(self, call: Call) -> Reply:
        limited = call.token.startswith("ratelimited-")
        defaults = {"image": 50, "imagePro": 20, "imageEdit": 20, "video": 10, "video720p": 5}
        return json_reply(
            {
                key: {
                    "available": not limited,
                    "remainingQueries": 0 if limited else n,
                    "windowSizeSeconds": 86400,
                }
                for key, n in defaults.items()
            }
        )

    async def list_assets(self, call: Call) -> Reply:
        assets = [
            {
                "assetId": a.asset_id,
                "mimeType": a.content_type,
                "name": a.name,
                "key": a.path,
                "sizeBytes": len(a.body),
            }
            for a in self.state.assets_of(call.token)
        ]
        return json_reply({"assets": assets, "nextPageToken": ""})

    async def delete_asset(self, call: Call) -> Reply:
        self.state.delete_asset(call.token, call.params["asset_id"])
        return json_reply({})

    async def session(self, call: Call) -> Reply:
        return json_reply({"user": {"id": call.uid}})

    # -- assets host ------------------------------------------------------------------------
    def asset(self, path: str, token: str | None) -> Reply:
        if token is None:
            return replies.forbidden_asset()
        if (failure := replies.for_token(token)) is not None:
            return failure
        asset = self.state.asset(path)
        if asset is None:
            # Under the caller's own user dir a missing file is a 404; anywhere else, 403.
            mine = path.startswith(f"users/{user_id(token)}/")
            return replies.not_found("asset not found") if mine else replies.forbidden_asset()
        if asset.owner != token:
            return replies.forbidden_asset()
        return Response(200, asset.body, asset.content_type or content_type_for(path))
