"""A Django ASGI handler for the API routes, with only the middleware they need.

The admin needs sessions, CSRF, authentication, messages and static files; /v1 and
/health need none of them (API keys are checked by the API itself). Each of Django's
built-in middleware runs its hooks through `sync_to_async` under ASGI, so the full
chain costs several thread hops on every request and every streamed response. This
handler keeps the request id and the host check, both async.

Event streams (`gateway.stream.EventStream`) are sent straight from their generator: Django
would pass each chunk through three more generators (`streaming_content`, `__aiter__`,
`chunk_bytes`) on its way to the server, a cost paid per chunk of every open stream.

To do so it overrides parts of Django's handler that Django does not document, and reads
private attributes (`_middleware_chain`, `_resource_closers`, …). They are listed in
tests/test_private_api_contracts.py, which names the one that moved when an upgrade breaks
them; the handler refuses to start on a Django outside `DJANGO_SERIES` (and the system check
`grok2api.E004` says so), rather than fail deep inside a request.

It also leaves out what costs a thread per request in Django's own handler:
`ThreadSensitiveContext` (each request's first thread-sensitive call would start an
executor thread of its own, held while the answer streams) and the `request_started`
/ `request_finished` signals and `response.close()` run through `sync_to_async`.
Their receivers close stale database connections of the thread they run in. Here
nothing does between two requests, so the PostgreSQL backend (`grok2api.db.postgresql`)
replaces a broken connection itself wherever it is next used (API views, the async
ORM, periodic jobs, leasing), and the usage flusher closes connections past
CONN_MAX_AGE in the one thread the API's `sync_to_async` calls share (`pools.usage`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, cast

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.exception import convert_exception_to_response
from django.http import HttpRequest, HttpResponseBase
from django.urls import set_script_prefix, set_urlconf
from django.utils.decorators import async_only_middleware
from django.utils.log import log_response, request_logger
from django.utils.module_loading import import_string

from gateway.grok.compat import curl_cffi_problem, version_problem
from gateway.stream import EventStream

DJANGO_SERIES = ("5.2",)  # Django releases whose handler internals this module was checked against
DJANGO_TESTED = "5.2.19"  # the release tests/test_private_api_contracts.py last passed on

API_MIDDLEWARE = [
    "grok2api.request_id.RequestIdMiddleware",
    "grok2api.api_handler.HostCheckMiddleware",
]
API_PREFIXES = ("/v1/", "/health")

# One line per /v1 request, at INFO, written when the answer has ended (a stream: when its last byte left).
access_logger = logging.getLogger("grok2api.access")


@async_only_middleware
def HostCheckMiddleware(get_response: Callable) -> Callable:  # noqa: N802 - Django middleware name
    """ALLOWED_HOSTS for the API (CommonMiddleware does it for the rest); DisallowedHost → 400."""

    async def middleware(request: HttpRequest) -> HttpResponseBase:
        request.get_host()
        return await get_response(request)

    return middleware


def django_problem() -> str | None:
    """What is wrong with the installed Django for this handler, or None."""
    return version_problem("Django", DJANGO_SERIES, DJANGO_TESTED)


class ApiHandler(ASGIHandler):
    def __init__(self) -> None:
        problems = [problem for problem in (django_problem(), curl_cffi_problem()) if problem]
        if problems:
            raise ImproperlyConfigured(" ".join(problems))
        super().__init__()

    def load_middleware(self, is_async: bool = False) -> None:
        """Django's middleware loop, over `API_MIDDLEWARE` instead of `settings.MIDDLEWARE` (the admin's).

        The API chain has no view, template-response or exception hooks: a middleware that
        brings one is refused here rather than silently left out.
        """
        self._view_middleware: list[Callable[..., Any]] = []
        self._template_response_middleware: list[Callable[..., Any]] = []
        self._exception_middleware: list[Callable[..., Any]] = []
        # Django's undocumented inner handlers (see the module doc), which django-stubs do not declare.
        handler = convert_exception_to_response(
            self._get_response_async if is_async else self._get_response  # type: ignore[attr-defined]
        )
        handler_is_async = is_async
        for path in reversed(API_MIDDLEWARE):
            factory = import_string(path)
            # As Django decides: a sync handler keeps sync middleware sync; otherwise async if it can be.
            can_sync, can_async = getattr(factory, "sync_capable", True), getattr(factory, "async_capable", False)
            middleware_is_async = can_async if handler_is_async or not can_sync else False
            adapted = self.adapt_method_mode(middleware_is_async, handler, handler_is_async,
                                             debug=settings.DEBUG, name=f"middleware {path}")
            instance = factory(adapted)
            hooks = [hook for hook in ("process_view", "process_template_response", "process_exception")
                     if hasattr(instance, hook)]
            if hooks:
                raise ImproperlyConfigured(f"API middleware {path} has {', '.join(hooks)}: the API handler runs none.")
            handler = convert_exception_to_response(instance)
            handler_is_async = middleware_is_async
        self._middleware_chain = self.adapt_method_mode(is_async, handler, handler_is_async)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        await self.handle(scope, receive, send)

    async def handle(self, scope: dict, receive: Callable, send: Callable) -> None:
        """Django's `ASGIHandler.handle`, without the signals and the thread hops (see the module doc)."""
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        request, error_response = self.create_request(scope, body_file)
        try:
            if request is None:
                assert error_response is not None  # create_request returns a request or an error response
                await self.send_response(error_response, send)
                return
            await self._serve(request, receive, send)
        finally:
            body_file.close()

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        """Django's, minus a thread hop per error response to log a line `django.request` drops.

        Django hands every 4xx/5xx to `log_response` through `sync_to_async`; at the level
        this project sets (ERROR) a 4xx line is dropped anyway, and a burst of 429s from an
        exhausted pool paid one thread round trip each for nothing. A 500 the API has logged
        already, with its traceback (`gateway.api._unexpected`), `log_response` skips.
        """
        set_urlconf(settings.ROOT_URLCONF)
        # ASGIHandler always loads its middleware async, so the chain returns an awaitable;
        # the stubs type it for both modes.
        response = await cast("Awaitable[HttpResponseBase]", self._middleware_chain(request))
        # Django's undocumented list of what `close()` runs, which django-stubs do not declare.
        response._resource_closers.append(request.close)  # type: ignore[attr-defined]
        status = response.status_code
        if status >= 400 and request_logger.isEnabledFor(logging.ERROR if status >= 500 else logging.WARNING):
            # django-stubs type `response` as HttpResponse; Django's own handler passes any response.
            await sync_to_async(log_response, thread_sensitive=False)(
                "%s: %s", response.reason_phrase, request.path,
                response=response, request=request,  # type: ignore[arg-type]
            )
        return response

    async def send_response(self, response: HttpResponseBase, send: Callable) -> None:
        if not isinstance(response, EventStream):
            await super().send_response(response, send)
            return
        headers = [(name.encode("ascii"), value.encode("latin1")) for name, value in response.items()]
        headers += [(b"Set-Cookie", c.output(header="").encode("ascii").strip()) for c in response.cookies.values()]
        await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
        # An event stream's events are an async generator (`gateway.api._sse`), so they can be closed.
        async with contextlib.aclosing(cast("AsyncGenerator[bytes, None]", response.events)) as events:
            async for part in events:
                await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body"})

    async def _serve(self, request: HttpRequest, receive: Callable, send: Callable) -> None:
        # The answer is made in this task; a watcher cancels it when the client leaves, which
        # stops the view and with it the upstream transfer. (Django runs the answer in a task of
        # its own: one more task per open stream.)
        serving = asyncio.current_task()
        assert serving is not None
        state = {"left": False, "done": False}

        async def watch() -> None:
            with contextlib.suppress(RequestAborted):
                await self.listen_for_disconnect(receive)
            if not state["done"]:
                state["left"] = True
                serving.cancel()

        watcher = asyncio.create_task(watch())
        started = time.perf_counter()
        response: HttpResponseBase | None = None
        failed = False
        try:
            response = await self.run_get_response(request)
            await self.send_response(response, send)
        except asyncio.CancelledError:
            if not state["left"]:
                raise
            serving.uncancel()  # the client left: that is an end, not an error
        except BaseException:
            failed = True
            raise
        finally:
            state["done"] = True
            watcher.cancel()
            if response is not None:
                _close(response)
            if request.path.startswith("/v1") and access_logger.isEnabledFor(logging.INFO):
                _log_access(request, response, started, "client_disconnected" if state["left"] else
                            "error" if failed else None)


def _log_access(request: HttpRequest, response: HttpResponseBase | None, started: float, outcome: str | None) -> None:
    """The access line: `outcome` is given when the request ended early, else read from the status."""
    status = response.status_code if response is not None else 499  # left before the answer started (as nginx)
    if outcome is None:
        outcome = "error" if status >= 400 or getattr(request, "grok2api_error", False) else "ok"
    # The request id is the line's `[…]` (the formatter's); `extra` gives it to handlers without the filter too.
    access_logger.info(
        "%s %s status=%d duration_ms=%d key=%s model=%s result=%s",
        request.method, request.path, status, (time.perf_counter() - started) * 1000,
        key_label(request), getattr(request, "grok2api_model", "-"), outcome,
        extra={"request_id": getattr(request, "request_id", "-")},
    )


def key_label(request: HttpRequest) -> str:
    """The API key the request sent, masked (`sk-…wxyz`); `-` when the API is open or none was sent."""
    if not settings.API_KEYS:
        return "-"
    _, _, key = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    key = key.strip()
    if not key:
        return "-"
    # Short keys keep their end hidden too: 7 shown characters would be most of them.
    return f"{key[:3]}…{key[-4:]}" if len(key) >= 16 else f"{key[:3]}…"


def _close(response: HttpResponseBase) -> None:
    """`response.close()` minus the `request_finished` signal: free what the response holds."""
    for closer in response._resource_closers:  # type: ignore[attr-defined]  # Django internal, see get_response_async
        with contextlib.suppress(Exception):  # as in Django's close(): one closer's failure must not stop the rest
            closer()
    response.closed = True


def is_api(path: str) -> bool:
    return path == "/v1" or path.startswith(API_PREFIXES)
