from django.contrib import admin
from django.http import HttpRequest, JsonResponse
from django.urls import path, re_path
from django.views.generic import RedirectView

from gateway.api import api, unknown_route


async def health(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("health", health),
    path("admin/", admin.site.urls),
    # Before the API: ninja answers its bare root with Django's HTML 404 (docs are off).
    path("v1/", unknown_route),
    path("v1/", api.urls),
    re_path(r"^v1(?:/.*)?$", unknown_route),
]
