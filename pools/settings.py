"""Runtime settings: the one accessor, with sync and async twins.

For now the values come from `settings.RUNTIME_DEFAULTS`, validated once and
cached; a test that changes that setting with `override_settings` drops the cache.
The runtime-settings issue moves them into an admin-edited row that starts from
these defaults; callers keep using `get_runtime()` / `aget_runtime()` unchanged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

THINKING_FORMATS = ("reasoning_content", "think")


@dataclass(frozen=True)
class RuntimeSettings:
    thinking_format: str  # "reasoning_content" (a separate delta field) or "think" (<think>…</think>)
    show_thinking: bool
    show_search_results: bool
    first_byte_timeout: float
    idle_timeout: float
    total_timeout: float
    heartbeat_interval: float
    max_attempts: int
    impersonate: str
    user_agent: str
    statsig_id: str
    # Secrets (a proxy URL may carry a password) stay out of reprs and logs.
    cf_clearance: str = field(repr=False)
    proxy_url: str = field(repr=False)
    max_upstream_streams: int
    cooldown_seconds: float = 300.0  # how long a 429 cools an account when Grok names no window


_cached: RuntimeSettings | None = None


def get_runtime() -> RuntimeSettings:
    global _cached
    if _cached is None:
        _cached = build_runtime(getattr(django_settings, "RUNTIME_DEFAULTS", {}))
    return _cached


async def aget_runtime() -> RuntimeSettings:
    # No I/O yet; the async twin exists so callers need not change when the
    # values come from a database row.
    return get_runtime()


@receiver(setting_changed)
def _drop_cache(*, setting: str, **kwargs: Any) -> None:
    global _cached
    if setting == "RUNTIME_DEFAULTS":
        _cached = None


def build_runtime(values: dict[str, Any]) -> RuntimeSettings:
    """Validate a dict of runtime values; unknown keys are ignored, bad types are refused."""
    kwargs: dict[str, Any] = {}
    for spec in dataclasses.fields(RuntimeSettings):
        if spec.name not in values:
            if spec.default is dataclasses.MISSING:
                raise ImproperlyConfigured(f"RUNTIME_DEFAULTS lacks {spec.name!r}")
            continue
        kwargs[spec.name] = _coerce(spec.name, spec.type, values[spec.name])
    runtime = RuntimeSettings(**kwargs)
    if runtime.thinking_format not in THINKING_FORMATS:
        raise ImproperlyConfigured(
            f"thinking_format must be one of {', '.join(THINKING_FORMATS)}, not {runtime.thinking_format!r}"
        )
    if runtime.max_attempts < 1:
        raise ImproperlyConfigured("max_attempts must be at least 1")
    return runtime


def _coerce(name: str, type_name: object, value: Any) -> Any:
    # Field types are strings here (`from __future__ import annotations`).
    # bool is a subclass of int, so a bool is accepted only where a bool is wanted.
    accepted = {"bool": (bool,), "float": (int, float), "int": (int,), "str": (str,)}[str(type_name)]
    if isinstance(value, accepted) and (type_name == "bool") == isinstance(value, bool):
        return float(value) if type_name == "float" else value
    raise ImproperlyConfigured(f"runtime setting {name} must be {type_name}, not {value!r}")
