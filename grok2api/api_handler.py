"""A Django ASGI handler for the API routes, with only the middleware they need.

The admin needs sessions, CSRF, authentication, messages and static files; /v1 and
/health need none of them (API keys are checked by the API itself). Each of Django's
built-in middleware runs its hooks through `sync_to_async` under ASGI, so the full
chain costs several thread hops on every request and every streamed response. This
handler keeps the request id and the host check, both async.
"""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.http import HttpRequest, HttpResponseBase
from django.utils.decorators import async_only_middleware

API_MIDDLEWARE = [
    "grok2api.request_id.RequestIdMiddleware",
    "grok2api.api_handler.HostCheckMiddleware",
]
API_PREFIXES = ("/v1/", "/health")


@async_only_middleware
def HostCheckMiddleware(get_response: Callable) -> Callable:  # noqa: N802 - Django middleware name
    """ALLOWED_HOSTS for the API (CommonMiddleware does it for the rest); DisallowedHost → 400."""

    async def middleware(request: HttpRequest) -> HttpResponseBase:
        request.get_host()
        return await get_response(request)

    return middleware


class ApiHandler(ASGIHandler):
    def load_middleware(self, is_async: bool = False) -> None:
        full = settings.MIDDLEWARE
        settings.MIDDLEWARE = API_MIDDLEWARE  # read once, here, at start-up
        try:
            super().load_middleware(is_async)
        finally:
            settings.MIDDLEWARE = full


def is_api(path: str) -> bool:
    return path == "/v1" or path.startswith(API_PREFIXES)
