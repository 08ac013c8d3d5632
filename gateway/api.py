"""The OpenAI-compatible routes under /v1 (django-ninja, async)."""

from __future__ import annotations

import hmac
import logging
import time
import uuid
from collections.abc import Iterable

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.utils.log import log_response
from ninja import NinjaAPI, Router
from ninja.errors import AuthenticationError, HttpError, ValidationError

from gateway import service
from gateway.errors import (
    AuthenticationFailed,
    InvalidRequest,
    MethodNotAllowed,
    ModelNotFound,
    NotFound,
    OpenAIError,
)
from gateway.messages import flatten
from gateway.models import CATALOGUE_CREATED, ModelSpec, all_models, get_model, tier_satisfies
from gateway.schemas import ChatCompletionRequest, ErrorBody, Model, ModelList
from gateway.stream import Aggregator, ChunkWriter, EventStream
from pools.selection import available_tiers
from pools.settings import aget_runtime

logger = logging.getLogger(__name__)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
THINKING_FORMATS = ("reasoning_content", "think", "none")  # what `X-Thinking-Format` may ask for


class ApiKeyAuth:
    """Bearer API keys from `API_KEY`; with none configured the API is open (a warning is logged at start)."""

    async def __call__(self, request: HttpRequest) -> str | bool | None:
        keys = settings.API_KEYS
        if not keys:
            return True
        # META, not `request.headers`: that builds a dict of every header on first use.
        scheme, _, token = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token and any(hmac.compare_digest(token, key) for key in keys):
            return token
        return None


api = NinjaAPI(title="grok2api", version="1", urls_namespace="openai", docs_url=None, auth=ApiKeyAuth())
router = Router()
ERRORS = {400: ErrorBody, 401: ErrorBody, 404: ErrorBody, 429: ErrorBody, 502: ErrorBody, 503: ErrorBody,
          504: ErrorBody}


def _model_row(spec: ModelSpec) -> dict:
    return {"id": spec.id, "object": "model", "created": CATALOGUE_CREATED, "owned_by": "xai"}


def _servable(spec: ModelSpec, tiers: Iterable[str]) -> bool:
    return any(tier_satisfies(t, spec.tier) for t in tiers)


@router.get("/models", response={200: ModelList, **ERRORS})
async def list_models(request: HttpRequest) -> dict:
    tiers = await available_tiers()
    aliases = (await aget_runtime()).list_model_aliases
    rows = [_model_row(m) for m in all_models() if (aliases or not m.is_alias) and _servable(m, tiers)]
    return {"object": "list", "data": rows}


@router.get("/models/{model_id}", response={200: Model, **ERRORS})
async def retrieve_model(request: HttpRequest, model_id: str) -> dict:
    # Agrees with the list: a model no active account can serve is not there. An alias is
    # found whenever its canonical model is listed, whether or not the list shows aliases.
    spec = get_model(model_id)
    if spec is None or not _servable(spec, await available_tiers()):
        raise ModelNotFound(model_id)
    return _model_row(spec)


@router.post("/chat/completions", response={200: dict, **ERRORS})
async def chat_completions(request: HttpRequest, body: ChatCompletionRequest) -> HttpResponseBase:
    request.grok2api_model = body.model  # type: ignore[attr-defined]  # for the access line (grok2api.api_handler)
    spec = get_model(body.model)
    if spec is None:
        raise ModelNotFound(body.model)
    if body.n is not None and body.n != 1:
        raise InvalidRequest("Only n=1 is supported: Grok returns one answer per call.", param="n")
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    thinking_format = _thinking_format(request)
    session = await service.open_chat(spec, flatten(body.messages), temperature=body.temperature, top_p=body.top_p,
                                      thinking_format=thinking_format)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        writer = ChunkWriter(completion_id, created, body.model, include_usage=include_usage)
        return EventStream(_sse(session, writer, request), content_type="text/event-stream; charset=utf-8",
                           headers=SSE_HEADERS)
    aggregator = Aggregator()
    try:
        async for batch in session.batches():
            for piece in batch or ():
                aggregator.add(piece)
    finally:
        await session.close()
    return JsonResponse(aggregator.body(completion_id, created, body.model, session.usage()))


def _thinking_format(request: HttpRequest) -> str | None:
    """The request's `X-Thinking-Format`, or None to follow the runtime setting. Raises `InvalidRequest`."""
    value = request.META.get("HTTP_X_THINKING_FORMAT", "").strip().lower()  # META: see ApiKeyAuth
    if not value:
        return None
    if value not in THINKING_FORMATS:
        raise InvalidRequest(f"X-Thinking-Format must be one of {', '.join(THINKING_FORMATS)}.",
                             param="X-Thinking-Format", code="invalid_value")
    return value


async def _sse(session: service.ChatSession, writer: ChunkWriter, request: HttpRequest):
    """The SSE body. Every path ends with a finish chunk and [DONE]; a client that leaves stops Grok."""
    try:
        yield writer.role()
        try:
            async for batch in session.batches():
                # One write per batch: pieces that arrived together leave together.
                yield writer.HEARTBEAT if batch is None else b"".join(map(writer.piece, batch))
        except OpenAIError as exc:
            request.grok2api_error = True  # type: ignore[attr-defined]  # the access line says `error`, not `ok`
            yield writer.error(exc)
        yield writer.finish()
        if writer.include_usage:
            yield writer.usage(session.usage())
        yield writer.DONE
    finally:
        await session.close()


async def _method_not_allowed(request: HttpRequest, allowed: str) -> HttpResponse:
    raise MethodNotAllowed(f"Method {request.method} is not allowed here; use {allowed}.")


_OTHER_THAN_GET = ["POST", "PUT", "PATCH", "DELETE"]


@router.api_operation(_OTHER_THAN_GET, "/models", auth=None, include_in_schema=False)
async def _models_405(request: HttpRequest) -> HttpResponse:
    return await _method_not_allowed(request, "GET")


@router.api_operation(_OTHER_THAN_GET, "/models/{model_id}", auth=None, include_in_schema=False)
async def _model_405(request: HttpRequest, model_id: str) -> HttpResponse:
    return await _method_not_allowed(request, "GET")


@router.api_operation(["GET", "PUT", "PATCH", "DELETE"], "/chat/completions", auth=None, include_in_schema=False)
async def _chat_405(request: HttpRequest) -> HttpResponse:
    return await _method_not_allowed(request, "POST")


api.add_router("/", router)


def error_response(exc: OpenAIError) -> JsonResponse:
    response = JsonResponse(exc.body(), status=exc.status)
    for name, value in exc.headers.items():
        response[name] = value
    return response


def _loc(loc: tuple | list) -> str:
    parts = list(loc)
    while parts and parts[0] in ("body", "path", "query"):
        parts.pop(0)
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@api.exception_handler(OpenAIError)
def _openai_error(request: HttpRequest, exc: OpenAIError) -> HttpResponse:
    return error_response(exc)


@api.exception_handler(ValidationError)
def _validation_error(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    first = exc.errors[0] if exc.errors else {}
    param = _loc(first.get("loc", ())) or None
    message = f"Invalid request: {param}: {first.get('msg', 'invalid value')}" if param else "Invalid request body."
    return error_response(InvalidRequest(message, param=param, code="invalid_value"))


@api.exception_handler(AuthenticationError)
def _auth_error(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    return error_response(AuthenticationFailed(
        "Missing or invalid API key: send `Authorization: Bearer <key>` with a key from API_KEY."
    ))


@api.exception_handler(HttpError)
def _http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    if exc.status_code == 400:
        return error_response(InvalidRequest(f"The request body is not valid JSON ({exc}).", code="invalid_json"))
    error = OpenAIError(str(exc))
    error.status = exc.status_code
    return error_response(error)


@api.exception_handler(Http404)
def _not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
    return error_response(NotFound(f"Not found: {request.path}"))


@api.exception_handler(RequestDataTooBig)
def _too_big(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
    error = InvalidRequest("The request body is too large (MAX_REQUEST_BYTES).", code="request_too_large")
    error.status = 413
    return error_response(error)


@api.exception_handler(Exception)
def _unexpected(request: HttpRequest, exc: Exception) -> HttpResponse:
    response = error_response(OpenAIError("The gateway hit an internal error; see its log for the request id."))
    # One line per crash, with its traceback. `log_response` marks the response as logged, so the
    # handler's `django.request` line for this 500 is skipped (Django de-duplicates its own that way).
    log_response("unhandled error on %s %s", request.method, request.path, response=response, request=request,
                 logger=logger, level="error", exception=exc)
    return response


async def unknown_route(request: HttpRequest) -> HttpResponse:
    """Every /v1 path we do not serve: an OpenAI-shaped 404, never Django's HTML page."""
    return error_response(NotFound(f"Unknown route: {request.method} {request.path}"))
