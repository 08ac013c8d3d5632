"""System checks run at start and by `manage.py check`: settings that only make sense together,
and the releases of the libraries whose private parts the gateway relies on."""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Error, register

from gateway.grok.compat import curl_cffi_problem
from grok2api.api_handler import django_problem


@register("grok2api")
def check_scale_out(app_configs: object, **kwargs: object) -> list[Error]:
    errors = []
    if settings.WEB_CONCURRENCY > 1:
        if settings.DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
            errors.append(Error(
                f"WEB_CONCURRENCY={settings.WEB_CONCURRENCY} needs a shared database: SQLite serves one process.",
                hint="Set DATABASE_URL=postgres://… and REDIS_URL=redis://…, or WEB_CONCURRENCY=1.",
                id="grok2api.E001",
            ))
        if not settings.REDIS_URL:
            errors.append(Error(
                f"WEB_CONCURRENCY={settings.WEB_CONCURRENCY} needs REDIS_URL: leases, settings versions and job "
                "locks must be shared between workers.",
                hint="Set REDIS_URL=redis://…, or WEB_CONCURRENCY=1.",
                id="grok2api.E002",
            ))
    return errors


@register("grok2api")
def check_versions(app_configs: object, **kwargs: object) -> list[Error]:
    """curl_cffi and Django within the release series their private parts were checked against."""
    errors = []
    if problem := curl_cffi_problem():
        errors.append(Error(problem, hint="See gateway/grok/compat.py.", id="grok2api.E003"))
    if problem := django_problem():
        errors.append(Error(problem, hint="See grok2api/api_handler.py.", id="grok2api.E004"))
    return errors
