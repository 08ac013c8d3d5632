"""Where in-flight leases live, chosen by configuration (`pools.selection` is the public face).

    REDIS_URL set            -> redis.RedisBackend     leases in Redis (Lua over sorted sets)
    PostgreSQL, no REDIS_URL -> postgres.PostgresBackend  leases as `pools_leaserecord` rows
    SQLite (the default)     -> local.LocalBackend     leases in this process (one worker by design)

`LEASE_TTL` (seconds, default 60) is how long a lease outlives a worker that died
holding it; held leases are renewed every TTL/3. Tests swap the backend with `use()`.
"""

from __future__ import annotations

from django.conf import settings
from django.db import connections

from pools.leasing.base import LeaseBackend
from pools.leasing.queue import Lines


class _State:
    """The backend this process leases through, built on first use (configuration, not shared state)."""

    backend: LeaseBackend | None = None
    lines = Lines()


def configured() -> LeaseBackend:
    ttl = float(getattr(settings, "LEASE_TTL", 60.0))
    if settings.REDIS_URL:
        from pools.leasing.redis import RedisBackend

        return RedisBackend(ttl=ttl)
    if connections["default"].vendor == "postgresql":
        from pools.leasing.postgres import PostgresBackend

        return PostgresBackend(ttl=ttl)
    from pools.leasing.local import LocalBackend

    return LocalBackend(ttl=ttl)


def backend() -> LeaseBackend:
    if _State.backend is None:
        _State.backend = configured()
    return _State.backend


def lines() -> Lines:
    """This worker's lines of requests waiting for a slot."""
    return _State.lines


def use(new: LeaseBackend | None) -> LeaseBackend | None:
    """Lease through `new` from now on (None: back to the configured one); returns the previous backend."""
    previous, _State.backend = _State.backend, new
    return previous
