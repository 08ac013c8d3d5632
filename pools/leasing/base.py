"""What every leasing backend shares: the request, the grant, the errors, the protocol.

    PoolError                  base; nothing could be leased
    ├── NoEligibleAccount      no active account of a sufficient tier (or all of them
    │                          already failed on this request): 503
    ├── AllAccountsCooling     every account that could serve is cooling down for this
    │                          mode (429) or out of quota; `retry_after` says when the
    │                          first one is back: 429
    └── PoolBusy               accounts could serve, but every one stayed at its in-flight
                               limit for the whole `queue_timeout`: 429 with `retry_after`

A backend only answers "which account, and is it under its limit" and keeps the
in-flight records; `pools.selection` does the waiting, the renewal and the
outcome bookkeeping the same way for all three.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Protocol

from pools.models import TIER_ORDER


class PoolError(Exception):
    """No account could be leased for a request."""


class NoEligibleAccount(PoolError):
    """No active account of a sufficient tier, or every one of them already failed this request."""


class AllAccountsCooling(PoolError):
    """Accounts that could serve exist, but each is cooling down (or out of quota) for this mode."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PoolBusy(PoolError):
    """Every account that could serve stayed at its in-flight limit until the queue timeout."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Outcome(enum.Enum):
    SUCCESS = "success"  # the request completed: debit the quota, forget earlier failures
    FAILURE = "failure"  # an error that may not be the account's fault: count it
    RATE_LIMITED = "rate_limited"  # 429: cool this mode of the account down
    EXPIRED = "expired"  # 401: count it; out of rotation at the failure threshold
    BANNED = "banned"  # Grok refuses the account for good: disable it
    CANCELLED = "cancelled"  # the client left: nothing to record about the account


@dataclass(frozen=True)
class LeaseRequest:
    """One call to `lease()`, with the runtime values in force when it was made."""

    model_id: str
    tier: str  # the minimum account tier
    mode: str  # quota and cooldown are kept per mode
    cost: int  # quota units one call uses
    exclude: frozenset[int] = frozenset()
    default_limit: int = 4  # in-flight limit of accounts without their own `max_concurrent`

    @property
    def tiers(self) -> list[str]:
        return [name for name, rank in TIER_ORDER.items() if rank >= TIER_ORDER[self.tier]]

    @property
    def queue_key(self) -> tuple[str, str, frozenset[int]]:
        """Requests with the same key compete for the same accounts, so they queue together."""
        return (self.tier, self.mode, self.exclude)


@dataclass(frozen=True)
class Ticket:
    """A waiting request's place in line, for backends that keep a queue across workers (Redis)."""

    member: str  # one per worker and queue key: only each worker's oldest waiter registers
    arrival_ms: int  # wall clock, comparable across hosts
    next_arrival_ms: int = 0  # the worker's next waiter, registered in its place on a grant


@dataclass(frozen=True)
class Grant:
    """One slot held on one account. `stamp` is the backend's proof of ownership."""

    key: str
    account_id: int
    token: str = field(repr=False)
    tier: str
    stamp: Any = None


class Refusal(enum.Enum):
    NONE = "none"  # no account is eligible at all: explain why (503 / 429), do not wait
    BUSY = "busy"  # eligible accounts exist, each at its in-flight limit (or others queue first): wait


class LeaseBackend(Protocol):
    """Where in-flight leases live: this process (`local`), PostgreSQL rows, or Redis sorted sets."""

    name: str
    using: str  # the database alias holding accounts and quotas
    ttl: float  # seconds a lease lives without renewal
    poll_interval: float  # seconds between a waiting worker's attempts (slots freed elsewhere)
    records_use_on_release: bool  # True when `last_used_at`/`use_count` are written at release

    async def acquire(self, request: LeaseRequest, ticket: Ticket | None) -> Grant | Refusal:
        """Take a slot on the best eligible account, atomically; one round trip in the common case."""
        ...

    async def renew(self, grant: Grant) -> bool:
        """Push the lease's expiry `ttl` ahead; False when it was already lost."""
        ...

    async def release(self, grant: Grant) -> None:
        """Free the slot; releasing twice (or after expiry) is harmless."""
        ...

    async def withdraw(self, ticket: Ticket, request: LeaseRequest) -> None:
        """A waiter gave up (timeout, client left): drop or hand on its place in the shared queue."""
        ...

    async def in_flight(self) -> dict[int, int]:
        """Unexpired leases per account id (admin, tests)."""
        ...

    def forget(self, account_id: int | None = None) -> None:
        """Drop cached account state (after an outcome that changes it); None: everything."""
        ...

    def debit(self, account_id: int, mode: str, cost: int) -> None:
        """Apply a quota debit to cached state so this worker sees it before the next refresh."""
        ...
