"""Canned replies in the shapes grok.com uses (§11.2): gRPC-gateway JSON errors and the
Cloudflare challenge page, plus the per-token failure scenarios."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from .http import Response

CLOUDFLARE_PAGE = (
    b"<!DOCTYPE html><html><head><title>Just a moment...</title></head><body>"
    b'<div id="challenge-platform"><script src="/cdn-cgi/challenge-platform/h/g/orchestrate/chl_page/v1'
    b'?ray=8f00fake"></script><input type="hidden" name="__cf_chl_tk" value="fake"></div></body></html>'
)

ANTIBOT_MESSAGE = "Request rejected by anti-bot rules."
BLOCKED_MESSAGE = "User is blocked [WKE=unauthorized:blocked-user]"


def json_reply(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
    return Response(status, body, "application/json", dict(headers or {}))


def grpc_error(status: int, code: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return json_reply({"code": code, "message": message, "details": []}, status, headers)


def unauthenticated(message: str = "unauthenticated") -> Response:
    return grpc_error(401, 16, message)


def antibot() -> Response:
    return grpc_error(403, 7, ANTIBOT_MESSAGE)


def cloudflare() -> Response:
    return Response(403, CLOUDFLARE_PAGE, "text/html; charset=UTF-8", {"cf-mitigated": "challenge"})


def too_many(retry_after: int) -> Response:
    return grpc_error(429, 8, "Too many requests", {"Retry-After": str(retry_after)})


def bad_request(message: str) -> Response:
    return grpc_error(400, 3, message)


def not_found(message: str = "not found") -> Response:
    return grpc_error(404, 5, message)


def forbidden_asset() -> Response:
    return Response(403, b"Forbidden", "text/plain")


def for_token(token: str) -> Response | None:
    """The failure a token's prefix asks for on every endpoint (`ratelimited-` is chat-only)."""
    if token.startswith("expired-"):
        return unauthenticated("token expired")
    if token.startswith("banned-"):
        return grpc_error(403, 7, BLOCKED_MESSAGE)
    if token.startswith("cfblocked-"):
        return cloudflare()
    if token.startswith("flaky-"):
        return grpc_error(503, 14, "upstream unavailable")
    return None


_STATUS_MARKERS: dict[str, Callable[[], Response]] = {
    "401": unauthenticated,
    "403": cloudflare,
    "403-antibot": antibot,
    "429": lambda: too_many(30),
    "500": lambda: grpc_error(500, 13, "internal error"),
    "502": lambda: grpc_error(502, 14, "bad gateway"),
    "503": lambda: grpc_error(503, 14, "upstream unavailable"),
    "504": lambda: grpc_error(504, 4, "deadline exceeded"),
}


def for_status_marker(arg: str) -> Response | None:
    """The reply for `[fake:status=ARG]`; other 4xx/5xx numbers get a generic body."""
    if arg in _STATUS_MARKERS:
        return _STATUS_MARKERS[arg]()
    if arg.isdigit() and 400 <= int(arg) <= 599:
        return grpc_error(int(arg), 2, f"fake status {arg}")
    return None
