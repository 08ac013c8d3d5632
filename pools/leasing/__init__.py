"""Where in-flight leases live, chosen by configuration (`pools.selection` is the public face).

    REDIS_URL set            -> redis.RedisBackend     leases in Redis (Lua over sorted sets)
    PostgreSQL, no REDIS_URL -> postgres.PostgresBackend  leases as `pools_leaserecord` rows
    SQLite (the default)     -> local.LocalBackend     leases in this process (one worker by design)

(the choice is `pools.shared.coordination()`, made once for leases, job locks and settings)

`LEASE_TTL` (seconds, default 60) is how long a lease outlives a worker that died
holding it; held leases are renewed every TTL/3. Tests swap the backend with `use()`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from django.conf import settings
from django.utils.module_loading import import_string

from pools.leasing.base import LeaseBackend
from pools.leasing.queue import Lines
from pools.shared import Coordination, coordination

# By name: a worker loads only the backend it leases through. Importing all three cost
# ~6 KB per open stream on the SQLite default (docs/benchmarks.md, session 5).
BACKENDS = {
    Coordination.REDIS: "pools.leasing.redis.RedisBackend",
    Coordination.POSTGRES: "pools.leasing.postgres.PostgresBackend",
    Coordination.LOCAL: "pools.leasing.local.LocalBackend",
}


class _State:
    """The backend this process leases through, built on first use (configuration, not shared state)."""

    backend: LeaseBackend | None = None
    lines = Lines()


def configured() -> LeaseBackend:
    """The backend `pools.shared.coordination()` names for this deployment."""
    ttl = float(getattr(settings, "LEASE_TTL", 60.0))
    backend_class = cast(Callable[..., LeaseBackend], import_string(BACKENDS[coordination()]))
    return backend_class(ttl=ttl)


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
