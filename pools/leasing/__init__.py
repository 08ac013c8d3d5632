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

from django.conf import settings

from pools.leasing.base import LeaseBackend
from pools.leasing.local import LocalBackend
from pools.leasing.postgres import PostgresBackend
from pools.leasing.queue import Lines
from pools.leasing.redis import RedisBackend
from pools.shared import Coordination, coordination


class _State:
    """The backend this process leases through, built on first use (configuration, not shared state)."""

    backend: LeaseBackend | None = None
    lines = Lines()


def configured() -> LeaseBackend:
    """The backend `pools.shared.coordination()` names for this deployment."""
    ttl = float(getattr(settings, "LEASE_TTL", 60.0))
    backends: dict[Coordination, Callable[..., LeaseBackend]] = {
        Coordination.REDIS: RedisBackend, Coordination.POSTGRES: PostgresBackend, Coordination.LOCAL: LocalBackend,
    }
    return backends[coordination()](ttl=ttl)


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
