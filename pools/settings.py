"""Runtime settings: one row (`pools.models.RuntimeSettings`), one cached accessor with sync and async twins.

Environment variables (`settings.RUNTIME_DEFAULTS`) give the row its first values.
A save bumps the row's version (`RuntimeSettings.save`); once it commits, `publish`
puts the version in Redis when REDIS_URL is set. Each worker checks the version at
most every `CHECK_EVERY` seconds (the Redis key, else the row's `version` column:
one indexed read, so a `manage.py runtime set` in another process counts too) and
reloads the row when it changed. A change reaches every worker within a second,
without a restart and without a database query per request.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import logging
import time
import weakref
from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction

from pools import shared
from pools.models import THINKING_FORMATS, RuntimeSettings

logger = logging.getLogger(__name__)

CHECK_EVERY = 0.5  # seconds between version checks in one worker
# A check a request started waits this long first: run at once, its database read took the
# GIL from that very request's first token (+0.5-1 ms at one stream, docs/benchmarks.md).
CHECK_DELAY = 0.05
VERSION_KEY = "grok2api:runtime-version"


@dataclass(frozen=True)
class Runtime:
    """The values in force. Field names are the model's."""

    thinking_format: str
    show_thinking: bool
    show_search_results: bool
    first_byte_timeout: float
    idle_timeout: float
    total_timeout: float
    heartbeat_interval: float
    max_attempts: int
    retry_status_codes: frozenset[int]
    account_max_concurrent: int
    queue_timeout: float
    auth_failure_threshold: int
    cooldown_seconds: float
    quota_refresh_interval: int
    recovery_probe_interval: int
    probe_expired_accounts: bool
    proxy_mode: str
    proxy_url: str = dataclasses.field(repr=False)
    proxy_pool_url: str = dataclasses.field(repr=False)
    proxy_pool_interval: int
    proxy_health_interval: int
    cf_clearance: str = dataclasses.field(repr=False)
    impersonate: str
    user_agent: str
    statsig_mode: str
    statsig_id: str
    max_upstream_streams: int
    list_model_aliases: bool
    version: int = 0

    @property
    def statsig_constant(self) -> str:
        return self.statsig_id if self.statsig_mode == "static" else ""


def env_defaults() -> dict[str, Any]:
    """The first values of the row, from the environment (`RUNTIME_DEFAULTS`)."""
    values = dict(getattr(django_settings, "RUNTIME_DEFAULTS", {}))
    names = {f.name for f in RuntimeSettings._meta.concrete_fields} - {"id", "version", "updated_at"}
    unknown = set(values) - names
    if unknown:
        raise ImproperlyConfigured(f"RUNTIME_DEFAULTS has unknown keys: {', '.join(sorted(unknown))}")
    values.setdefault("proxy_mode", "static" if values.get("proxy_url") else "none")
    values.setdefault("statsig_mode", "static" if values.get("statsig_id") else "generated")
    formats = [name for name, _ in THINKING_FORMATS]
    if values.get("thinking_format", "reasoning_content") not in formats:
        raise ImproperlyConfigured(f"THINKING_FORMAT must be one of {', '.join(formats)}")
    return values


def from_row(row: RuntimeSettings) -> Runtime:
    values = {}
    for spec in dataclasses.fields(Runtime):
        value = getattr(row, spec.name)
        if spec.name == "retry_status_codes":
            value = frozenset(int(code) for code in str(value).replace(" ", "").split(",") if code.isdigit())
        values[spec.name] = value
    if not values["user_agent"]:
        values["user_agent"] = django_settings.RUNTIME_DEFAULTS.get("user_agent", "")
    return Runtime(**values)


@dataclass
class _Cache:
    runtime: Runtime | None = None
    checked_at: float = 0.0


_cache = _Cache()


def _row_version() -> int | None:
    """The version in the database (None: no row yet): what is in force when Redis says nothing."""
    return RuntimeSettings.objects.filter(pk=1).values_list("version", flat=True).first()


def _fresh(version: int | None) -> bool:
    runtime = _cache.runtime
    return runtime is not None and version == runtime.version


def _check(published: int | None) -> Runtime:
    """Reload the row unless `published` (the Redis key; None: missing or no Redis) matches the copy.

    Without a Redis version, the row's own version decides: this is what makes a save in
    another process (`manage.py runtime set` on SQLite) visible, and what survives a Redis flush.
    """
    runtime = _cache.runtime
    if runtime is None or (not _fresh(published) and not _fresh(_row_version())):
        runtime = _cache.runtime = from_row(load_row())
    return runtime


def _redis_version(raw: str | bytes | None) -> int | None:
    return int(raw) if raw else None


def get_runtime() -> Runtime:
    """The runtime settings in force (sync twin: commands, admin, tests)."""
    now = time.monotonic()
    if _cache.runtime is not None and now - _cache.checked_at < CHECK_EVERY:
        return _cache.runtime
    client = shared.sync_redis()
    runtime = _check(_redis_version(client.get(VERSION_KEY)) if client is not None else None)
    _cache.checked_at = now
    return runtime


async def aget_runtime() -> Runtime:
    """The runtime settings in force, with no I/O on the request path once loaded.

    At most one version check per `CHECK_EVERY` runs behind the requests: a request that
    finds the copy older than that starts it (if none is running) and is answered from the
    copy, so a change is in force within `CHECK_EVERY` plus one read. Only the first request
    of a process (or the first after a save in this process) waits for the row.
    """
    runtime = _cache.runtime
    if runtime is not None and time.monotonic() - _cache.checked_at < CHECK_EVERY:
        return runtime
    # One check per worker at a time: a burst of requests at the end of CHECK_EVERY (or
    # after a save) would otherwise open one Redis and one database connection each.
    loop = asyncio.get_running_loop()
    check = _checks.get(loop)
    if check is None:
        # A fresh context: the task outlives the request that happened to start it.
        delay = CHECK_DELAY if runtime is not None else 0.0
        check = _checks[loop] = loop.create_task(_acheck(delay), context=contextvars.Context())
        check.add_done_callback(lambda _: _checks.pop(loop, None))
    if runtime is not None:
        return runtime
    return await asyncio.shield(check)


_checks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task] = weakref.WeakKeyDictionary()


async def _acheck(delay: float = 0.0) -> Runtime:
    if delay:
        await asyncio.sleep(delay)
    now = time.monotonic()
    try:
        client = shared.async_redis()
        published = _redis_version(await client.get(VERSION_KEY)) if client is not None else None
        runtime = _cache.runtime
        if runtime is None or not _fresh(published):
            # The database read (version, then the row if it changed) stays off the event loop.
            runtime = await sync_to_async(_check, thread_sensitive=True)(published)
    except Exception:
        runtime = _cache.runtime
        if runtime is None:
            raise
        # Redis or the database blinked: the copy in force stays, the next check tries again.
        logger.warning("could not check the runtime settings version; version %d stays in force",
                       runtime.version, exc_info=True)
    _cache.checked_at = now
    return runtime


def load_row() -> RuntimeSettings:
    row = RuntimeSettings.objects.filter(pk=1).first()
    if row is None:
        row, _ = RuntimeSettings.objects.get_or_create(pk=1, defaults=env_defaults())
    return row


def publish(version: int) -> None:
    """Tell every worker that version `version` is in force (after a save commits).

    Redis carries it to the other workers when there is one; without Redis they read
    the row's version. This process applies it at its next read either way.
    """
    client = shared.sync_redis()
    if client is not None:
        client.set(VERSION_KEY, version)
    # This process reads the row again before answering from it: a save here is in force here at once.
    _cache.runtime = None
    _cache.checked_at = 0.0


def publish_saved(sender: type[RuntimeSettings], instance: RuntimeSettings, **kwargs: Any) -> None:
    """`post_save` receiver for the row (connected in `PoolsConfig.ready`): every save publishes."""
    version = instance.version
    transaction.on_commit(lambda: publish(version))


def update_runtime(**values: Any) -> Runtime:
    """Change runtime settings from code (commands, tests); the admin saves the row itself."""
    with transaction.atomic():
        row = load_row()
        for name, value in values.items():
            if not hasattr(row, name) or name in ("id", "version"):
                raise ImproperlyConfigured(f"unknown runtime setting {name!r}")
            setattr(row, name, value)
        row.full_clean()
        row.save()
    return get_runtime()


def forget_runtime() -> None:
    """Drop this process's copy (tests flush the database under it)."""
    _cache.runtime = None
    _cache.checked_at = 0.0
    client = shared.sync_redis()
    if client is not None:
        client.delete(VERSION_KEY)
