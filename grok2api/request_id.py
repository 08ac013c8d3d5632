"""A request id per request, carried into every log line through a contextvar."""

from __future__ import annotations

import contextvars
import logging
import secrets
from collections.abc import Callable

from django.http import HttpRequest, HttpResponseBase
from django.utils.decorators import sync_and_async_middleware

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def new_request_id() -> str:
    return secrets.token_hex(8)


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


@sync_and_async_middleware
def RequestIdMiddleware(get_response: Callable) -> Callable:  # noqa: N802 - Django middleware name
    """Tag the request and its log lines; echo the id as `X-Request-Id`."""

    def _start(request: HttpRequest) -> str:
        rid = request.META.get("HTTP_X_REQUEST_ID", "")[:64] or new_request_id()  # META: `headers` builds a dict of all
        request.request_id = rid  # type: ignore[attr-defined]  # our own attribute, for views that want the id
        request_id.set(rid)
        return rid

    async def amiddleware(request: HttpRequest) -> HttpResponseBase:
        rid = _start(request)
        response = await get_response(request)
        response["X-Request-Id"] = rid
        return response

    def middleware(request: HttpRequest) -> HttpResponseBase:
        rid = _start(request)
        response = get_response(request)
        response["X-Request-Id"] = rid
        return response

    from asgiref.sync import iscoroutinefunction

    return amiddleware if iscoroutinefunction(get_response) else middleware


