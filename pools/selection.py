"""Leasing: pick the account that serves the next request, hold it while the answer streams, settle it.

    PoolError                  base; nothing could be leased
    ├── NoEligibleAccount      no active account of a sufficient tier (or all of them
    │                          already failed on this request): 503
    ├── AllAccountsCooling     every account that could serve is cooling down for the
    │                          model's mode; `retry_after` = when the first is back: 429
    └── PoolBusy               every account that could serve stayed at its in-flight
                               limit for the runtime `queue_timeout`: 429 + `retry_after`

`lease(model)` takes a slot on an eligible account (active, tier >= the model's,
quota left for its mode, no cooldown running for that mode, under its in-flight
limit: `Account.max_concurrent` or the runtime `account_max_concurrent`). Order:
`priority` (highest first), the lowest sufficient tier (super quota is scarcer
than basic), fewest in flight, most quota left, least recently used, oldest id.
When every eligible account is full the request waits in line (first come, first
served, `pools.leasing.queue`) up to `queue_timeout`, then raises PoolBusy.

Slots are held by the backend `pools.leasing` chooses (local, PostgreSQL or
Redis), each with a TTL a background task renews every TTL/3, so a long stream
keeps its slot and a worker killed mid-stream loses its slots after the TTL.

`Lease.release(outcome)` records what happened and frees the slot; it is
idempotent, survives cancellation, and a lease is also an async context manager
that releases itself on the way out. A success (and the use a cancelled request
still counts on backends that count at release) goes to the usage ledger
(`pools.usage`), written in batches off the request path; the outcomes that can
change an account's eligibility are written at once (`pools.leasing.outcomes`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
from collections.abc import Collection
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol

from asgiref.sync import sync_to_async
from django.utils import timezone

from pools import leasing, usage
from pools.leasing.base import (
    AllAccountsCooling,
    Grant,
    LeaseBackend,
    LeaseRequest,
    NoEligibleAccount,
    Outcome,
    PoolBusy,
    PoolError,
    Refusal,
)
from pools.leasing.outcomes import CHANGES_ELIGIBILITY, Settlement, explain, settle
from pools.leasing.queue import wait_for_slot
from pools.models import TIER_ORDER, Account, mask_token, tiers_at_least
from pools.settings import aget_runtime

__all__ = [
    "AllAccountsCooling", "Lease", "NoEligibleAccount", "Outcome", "PoolBusy", "PoolError", "available_tiers",
    "lease",
]

log = logging.getLogger(__name__)

BUSY_RETRY_AFTER = 5  # seconds we suggest after a queue timeout: streams end at unknown times
STALE_READS = 3  # "nothing eligible" that turned out stale: look again this many times


class ModelLike(Protocol):
    """What leasing needs from `gateway.models.ModelSpec` (pools does not import gateway)."""

    @property
    def id(self) -> str: ...

    @property
    def tier(self) -> str: ...

    @property
    def mode(self) -> str: ...

    @property
    def cost(self) -> int: ...


_settling: set[asyncio.Task] = set()  # releases under way, referenced until they finish


class _Renewals:
    """The leases one backend holds on one event loop, renewed together every TTL/3 by one task.

    A task and a timer per lease would be one more of each per open stream; one task
    per loop and backend renews them all (concurrently, so a slow store delays none).
    A lease taken just after a round is renewed within TTL/3, well before it expires.
    """

    def __init__(self, backend: LeaseBackend, loop: asyncio.AbstractEventLoop) -> None:
        self.backend = backend
        self.leases: set[Lease] = set()
        self.key = (loop, backend)
        # A fresh context: the task outlives the request that started it (its request id).
        self.task = loop.create_task(self._run(), name="lease-renewals", context=contextvars.Context())

    async def _run(self) -> None:
        try:
            while self.leases:
                await asyncio.sleep(self.backend.ttl / 3)
                await asyncio.gather(*(self._renew(lease) for lease in list(self.leases)))
        finally:
            if _renewals.get(self.key) is self:
                del _renewals[self.key]

    async def _renew(self, lease: Lease) -> None:
        assert lease._grant is not None
        try:
            if not await self.backend.renew(lease._grant):
                log.warning("lease on %s expired before its renewal; its slot may be reused", lease.masked_token)
                self.leases.discard(lease)
        except Exception:  # Redis or the database blinked: the next round may get through
            log.warning("could not renew the lease on %s", lease.masked_token, exc_info=True)


_renewals: dict[tuple[asyncio.AbstractEventLoop, LeaseBackend], _Renewals] = {}


@dataclass(eq=False)
class Lease:
    account_id: int
    token: str = field(repr=False)
    tier: str
    mode: str = ""
    cost: int = 0
    _backend: LeaseBackend | None = field(default=None, repr=False)
    _grant: Grant | None = field(default=None, repr=False)
    _renewals: _Renewals | None = field(default=None, init=False, repr=False)
    _released: bool = field(default=False, init=False, repr=False)

    def __repr__(self) -> str:
        return f"<Lease account={self.account_id} {self.masked_token} {self.tier}>"

    @property
    def masked_token(self) -> str:
        return mask_token(self.token)

    @property
    def released(self) -> bool:
        return self._released

    def _hold(self) -> None:
        """Renew this lease every TTL/3 while the answer streams (with the others on this loop)."""
        assert self._backend is not None
        key = (asyncio.get_running_loop(), self._backend)
        group = _renewals.get(key)
        if group is None or group.task.done():
            group = _renewals[key] = _Renewals(self._backend, key[0])
        group.leases.add(self)
        self._renewals = group

    async def release(self, outcome: Outcome, *, reason: str = "", retry_after: float | None = None) -> None:
        """Record the outcome and free the slot. A second call is a no-op."""
        if self._released:
            return
        # Set before the first await so a concurrent second call cannot record twice.
        self._released = True
        if self._renewals is not None:
            self._renewals.leases.discard(self)
        # Shielded, and held here until done: a client that leaves mid-release must not leave the slot taken.
        settling = asyncio.ensure_future(self._settle(outcome, reason, retry_after))
        _settling.add(settling)
        settling.add_done_callback(_settling.discard)
        await asyncio.shield(settling)

    async def _settle(self, outcome: Outcome, reason: str, retry_after: float | None) -> None:
        backend = self._backend or leasing.backend()
        try:
            if outcome is Outcome.SUCCESS:
                # The common case stays in memory: the usage ledger writes it within a flush interval,
                # and the roster sees the debit at once.
                usage.record_success(backend.using, self.account_id, self.mode, self.cost,
                                     record_use=backend.records_use_on_release)
                backend.debit(self.account_id, self.mode, self.cost)
            elif outcome is Outcome.CANCELLED:
                if backend.records_use_on_release:
                    usage.record_use(backend.using, self.account_id)
            else:
                # Rare, and it may change eligibility: written now, after any buffered success.
                runtime = await aget_runtime()
                await sync_to_async(_settle_at_once, thread_sensitive=True)(backend.using, Settlement(
                    self.account_id, self.mode, self.cost, outcome, reason, retry_after,
                    record_use=backend.records_use_on_release,
                    failure_threshold=runtime.auth_failure_threshold, cooldown_seconds=runtime.cooldown_seconds,
                ))
                if outcome in CHANGES_ELIGIBILITY:
                    backend.forget(self.account_id)
        except Exception:  # bookkeeping must never keep the slot or fail a finished answer
            log.exception("could not record %s on account %s", outcome.value, self.masked_token)
        finally:
            if self._grant is not None:
                try:
                    await backend.release(self._grant)
                except Exception:
                    log.warning("could not free the slot on %s; it expires after the TTL", self.masked_token,
                                exc_info=True)
            leasing.lines().wake_heads()
        log.debug("released %s: %s", self.masked_token, outcome.value)

    async def __aenter__(self) -> Lease:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # An explicit release() inside the block wins; this only covers the paths that forgot.
        if exc is None:
            await self.release(Outcome.SUCCESS)
        elif isinstance(exc, asyncio.CancelledError | GeneratorExit):
            await self.release(Outcome.CANCELLED)
        else:
            await self.release(Outcome.FAILURE, reason=f"{type(exc).__name__}: {exc}")


def _settle_at_once(using: str, settlement: Settlement) -> None:
    """Settle a non-success outcome now; the account's buffered failure reset is older, so it goes first."""
    with usage.superseding(using, settlement.account_id):
        settle(using, settlement)


async def lease(model: ModelLike, *, exclude: Collection[int] = ()) -> Lease:
    """Lease an account able to serve `model`, skipping the account ids in `exclude`.

    Raises NoEligibleAccount, AllAccountsCooling or PoolBusy.
    """
    if model.tier not in TIER_ORDER:
        raise ValueError(f"unknown tier {model.tier!r} for model {model.id}")
    runtime = await aget_runtime()
    backend = leasing.backend()
    request = LeaseRequest(
        model.id, model.tier, model.mode, model.cost, frozenset(exclude), max(1, runtime.account_max_concurrent)
    )
    for _ in range(STALE_READS):
        got = await wait_for_slot(backend, leasing.lines(), request, runtime.queue_timeout)
        if isinstance(got, Grant):
            held = Lease(got.account_id, got.token, got.tier, model.mode, model.cost, backend, got)
            held._hold()
            log.debug("leased %s (%s) for %s", held.masked_token, held.tier, model.id)
            return held
        if got is Refusal.BUSY:
            retry_after = max(1, math.ceil(min(runtime.queue_timeout, BUSY_RETRY_AFTER)))
            raise PoolBusy(
                f"every account able to serve {model.id} is at its in-flight limit and no slot freed up in "
                f"{runtime.queue_timeout:g} s; retry in {retry_after} s (or add accounts / raise max_concurrent)",
                retry_after=retry_after,
            )
        error = await sync_to_async(explain, thread_sensitive=True)(backend.using, request, runtime.cooldown_seconds)
        if error is not None:
            raise error
    raise NoEligibleAccount(f"the pool for {model.id} kept changing while leasing; retry")


async def available_tiers() -> set[str]:
    """Tiers a model may require and still find a usable account right now.

    A heavy account also serves super and basic models, so one usable heavy
    account makes all three tiers available: `model.tier in available_tiers()`
    says whether `lease(model)` can succeed (barring cooldowns, quotas and limits it cannot see).
    """
    qs = Account.objects.usable(timezone.now()).values_list("tier", flat=True).order_by().distinct()
    present = {tier async for tier in qs}
    return {needed for needed in TIER_ORDER if any(t in present for t in tiers_at_least(needed))}


def cancel_renewals() -> None:
    """Stop the renewal of every lease still held in this process (tests end with some)."""
    for group in list(_renewals.values()):
        with contextlib.suppress(RuntimeError):  # its loop has closed: nothing left to stop
            group.task.get_loop().call_soon_threadsafe(group.task.cancel)  # the gateway's loop runs in a thread
    _renewals.clear()
