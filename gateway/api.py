"""OpenAI-compatible routes (placeholder while the gateway is being written)."""

from django.http import HttpRequest, JsonResponse
from ninja import NinjaAPI

api = NinjaAPI(title="grok2api", urls_namespace="openai", docs_url=None)


async def unknown_route(request: HttpRequest) -> JsonResponse:
    return JsonResponse(
        {"error": {"message": f"Unknown route: {request.method} {request.path}", "type": "invalid_request_error", "param": None, "code": "unknown_url"}},
        status=404,
    )
