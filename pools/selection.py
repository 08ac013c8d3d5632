"""Leasing: pick the account that serves the next request, and settle it afterwards.

    PoolError                  base; nothing could be leased
    ├── NoEligibleAccount      no active account of a sufficient tier (or all of them
    │                          already failed on this request): 503
    └── AllAccountsCooling     every usable account is cooling down after a 429;
                               `retry_after` says when the first one is back: 429

`lease(model)` picks, among active accounts of a sufficient tier, the lowest
tier first (super quota is scarcer than basic), then the least recently used,
then the oldest id, and marks it used in the same transaction. The pick is a
conditional UPDATE (`Account.claim`), so it stays correct when several threads
or processes lease at once; on SQLite the IMMEDIATE transaction serialises it.
Every call reads the database, so accounts imported while the server runs are
used at once.

`Lease.release(outcome)` records what happened; it is idempotent, and a lease
is also an async context manager that releases itself on the way out.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import weakref
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Protocol

from asgiref.sync import sync_to_async
from django.db import transaction
from django.db.models import Case, F, IntegerField, Min, Value, When
from django.utils import timezone

from pools.models import TIER_ORDER, Account, Status, mask_token, tiers_at_least
from pools.settings import get_runtime

log = logging.getLogger(__name__)

# A lost race means another worker took the row we read; read again a few times
# before giving up on this call (each retry sees the newer `last_used_at`).
CLAIM_ATTEMPTS = 10


class ModelLike(Protocol):
    """What leasing needs from `gateway.models.ModelSpec` (pools does not import gateway)."""

    @property
    def id(self) -> str: ...

    @property
    def tier(self) -> str: ...


class PoolError(Exception):
    """No account could be leased for a request."""


class NoEligibleAccount(PoolError):
    """No active account of a sufficient tier, or every one of them already failed this request."""


class AllAccountsCooling(PoolError):
    """Accounts that could serve exist, but each is cooling down (or already failed this request)."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Outcome(enum.Enum):
    SUCCESS = "success"  # the request completed: forget earlier failures
    FAILURE = "failure"  # an error that may not be the account's fault: count it
    RATE_LIMITED = "rate_limited"  # 429: cool the account down
    EXPIRED = "expired"  # 401: the token is no longer valid, out of rotation at once
    BANNED = "banned"  # Grok refuses the account for good: disable it
    CANCELLED = "cancelled"  # the client left: nothing to record about the account


@dataclass(eq=False)
class Lease:
    account_id: int
    token: str = field(repr=False)
    tier: str
    _released: bool = field(default=False, init=False, repr=False)

    def __repr__(self) -> str:
        return f"<Lease account={self.account_id} {self.masked_token} {self.tier}>"

    @property
    def masked_token(self) -> str:
        return mask_token(self.token)

    @property
    def released(self) -> bool:
        return self._released

    async def release(self, outcome: Outcome, *, reason: str = "", retry_after: float | None = None) -> None:
        """Record the outcome on the account. A second call is a no-op."""
        if self._released:
            return
        # Set before the first await so a concurrent second call cannot record twice.
        self._released = True
        if outcome is Outcome.CANCELLED:
            return
        async with _lock():
            await sync_to_async(_settle, thread_sensitive=True)(self.account_id, outcome, reason, retry_after)
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


async def lease(model: ModelLike, *, exclude: Collection[int] = ()) -> Lease:
    """Lease an account able to serve `model`, skipping the account ids in `exclude`.

    Raises NoEligibleAccount or AllAccountsCooling when there is none.
    """
    if model.tier not in TIER_ORDER:
        raise ValueError(f"unknown tier {model.tier!r} for model {model.id}")
    async with _lock():
        account = await sync_to_async(_claim, thread_sensitive=True)(model.id, model.tier, frozenset(exclude))
    log.debug("leased %s (%s) for %s", account.masked_token, account.tier, model.id)
    return Lease(account_id=account.pk, token=account.token, tier=account.tier)


async def available_tiers() -> set[str]:
    """Tiers a model may require and still find a usable account right now.

    A heavy account also serves super and basic models, so one usable heavy
    account makes all three tiers available: `model.tier in available_tiers()`
    says whether `lease(model)` can succeed (barring cooldowns it cannot see).
    """
    qs = Account.objects.usable(timezone.now()).values_list("tier", flat=True).order_by().distinct()
    present = {tier async for tier in qs}
    return {needed for needed in TIER_ORDER if any(t in present for t in tiers_at_least(needed))}


# --- the single-process SQLite backend -------------------------------------


# Per event loop, because an asyncio.Lock belongs to the loop that first waits on it.
# The lock is not what makes a lease correct (the conditional UPDATE is); it keeps
# requests of one process from queueing on SQLite's write lock, whose busy handler
# sleeps in steps of up to 100 ms.
_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


def _lock() -> asyncio.Lock:
    loop = asyncio.get_running_loop()
    lock = _locks.get(loop)
    if lock is None:
        lock = _locks[loop] = asyncio.Lock()
    return lock


def _claim(model_id: str, tier: str, exclude: frozenset[int]) -> Account:
    with transaction.atomic():
        # Read the clock inside the transaction: once SQLite's write lock is held, so
        # `last_used_at` follows the order in which leases really happened.
        now = timezone.now()
        picked = _pick(model_id, tier, exclude, now)
    # Raised outside the block so the ended cooldowns stay committed.
    if isinstance(picked, PoolError):
        raise picked
    return picked


def _pick(model_id: str, tier: str, exclude: frozenset[int], now: datetime) -> Account | PoolError:
    Account.objects.end_cooldowns(now)
    rank = Case(
        *(When(tier=name, then=Value(order)) for name, order in TIER_ORDER.items()),
        output_field=IntegerField(),
    )
    candidates = (
        Account.objects.able_to_serve(tier)
        .filter(status=Status.ACTIVE)
        .exclude(pk__in=exclude)
        .order_by(rank, F("last_used_at").asc(nulls_first=True), "id")
    )
    for _ in range(CLAIM_ATTEMPTS):
        account = candidates.first()
        if account is None:
            return _why_none(model_id, tier, exclude, now)
        if account.claim(now):
            return account
    # Only reachable when other workers keep winning the same rows (not on SQLite).
    return NoEligibleAccount(f"could not claim an account for {model_id}: too many concurrent leases; retry")


def _why_none(model_id: str, tier: str, exclude: frozenset[int], now: datetime) -> PoolError:
    serving = Account.objects.able_to_serve(tier)
    in_rotation = serving.exclude(status__in=[Status.EXPIRED, Status.DISABLED])
    if not in_rotation.exists():
        out = serving.count()
        aside = f" ({out} more expired or disabled: see the admin)" if out else ""
        return NoEligibleAccount(
            f"no active {tier} account for {model_id}{aside}: "
            f"import one with `manage.py import_tokens FILE --type {tier}`"
        )
    cooling = in_rotation.filter(status=Status.COOLING).exclude(pk__in=exclude)
    soonest = cooling.aggregate(soonest=Min("cooldown_until"))["soonest"]
    if soonest is None:
        # Everything that could serve was excluded: each one already failed this request.
        n = in_rotation.count()
        return NoEligibleAccount(
            f"all {n} account{'s' if n != 1 else ''} able to serve {model_id} failed on this request"
        )
    retry_after = max(1, math.ceil((soonest - now).total_seconds()))
    return AllAccountsCooling(
        f"every account able to serve {model_id} is cooling down after rate limits; retry in {retry_after} s",
        retry_after=retry_after,
    )


def _settle(account_id: int, outcome: Outcome, reason: str, retry_after: float | None) -> None:
    account = Account.objects.filter(pk=account_id).first()
    if account is None:
        return  # deleted by an operator while the request ran
    if outcome is Outcome.SUCCESS:
        if account.failure_count or account.last_error:
            account.mark_success()
    elif outcome is Outcome.FAILURE:
        account.record_failure(reason or "request failed")
    elif outcome is Outcome.RATE_LIMITED:
        seconds = retry_after if retry_after and retry_after > 0 else get_runtime().cooldown_seconds
        account.cool_down_for(seconds, reason or "rate limited by Grok (429)")
    elif outcome is Outcome.EXPIRED:
        account.mark_expired(reason or "expired: Grok rejected the token (401)")
    elif outcome is Outcome.BANNED:
        account.disable(f"banned: {reason or 'refused by Grok'}")
