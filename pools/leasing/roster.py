"""The accounts a worker may lease from, cached for a second, and the leasing rule's answers on them.

Reading every account and quota per lease would cost a query per request, so the
local and Redis backends keep a snapshot for `max_age` seconds (1 s: an account
imported in another worker is used within a second). A snapshot that is only
older than that is still served while one background task re-reads it (stale
while revalidate: no lease waits for the database because a second passed). It
is dropped, and re-read before the next lease, when this process saves or deletes
an account or quota (signals below) or when a lease outcome changes one
(`forget`); and it is re-read before saying "no account", so a stale copy never
refuses a request. Quota debits the usage ledger (`pools.usage`) has not written
yet are subtracted from what is read.

The rule itself (eligibility and order) is `rule.py`; this module only feeds it
the snapshot and keeps its answers until something they depend on changes. The
PostgreSQL backend evaluates the rule's SQL copy on fresh rows every time.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import time

from asgiref.sync import sync_to_async
from django.db.models.signals import post_delete, post_save
from django.utils import timezone

from pools import usage
from pools.leasing.base import LeaseRequest
from pools.leasing.rule import Candidate, QuotaView, eligible, unix
from pools.models import Account, Quota, Status

log = logging.getLogger(__name__)


def load(using: str) -> list[Candidate]:
    """Usable accounts with their quotas; also returns passed account-wide cooldowns to `active`."""
    now = timezone.now()
    accounts = Account.objects.using(using)
    if accounts.filter(status=Status.COOLING).usable(now).exists():
        accounts.end_cooldowns(now)
    rows = accounts.usable(now).values_list(
        "id", "token", "tier", "priority", "max_concurrent", "status", "cooldown_until", "last_used_at"
    )
    found = {
        row[0]: Candidate(row[0], row[1], row[2], row[3], row[4], row[5], unix(row[6]), unix(row[7]) or 0.0)
        for row in rows
    }
    # Successes this worker has not written yet: the rows read lag behind them by up to one flush.
    unwritten = usage.pending_debits(using)
    quotas = Quota.objects.using(using).filter(account_id__in=list(found)).values_list(
        "account_id", "mode", "remaining", "cooldown_until", "resets_at"
    )
    for account_id, mode, remaining, cooldown_until, resets_at in quotas:
        debit = unwritten.get(account_id, {}).get(mode, 0)
        found[account_id].quotas[mode] = QuotaView(remaining, unix(cooldown_until), unix(resets_at)).debited(debit)
    return list(found.values())


def _next_change(candidates: list[Candidate], mode: str, now: float) -> float:
    """The first instant after `now` when a cooldown or quota window of `mode` ends (inf: none)."""
    soonest = math.inf
    for c in candidates:
        quota = c.quotas.get(mode)
        moments = (c.cooldown_until,) if quota is None else (c.cooldown_until, quota.cooldown_until, quota.resets_at)
        for moment in moments:
            if moment is not None and now < moment < soonest:
                soonest = moment
    return soonest


class _Generation:
    """Bumped when this process saves an account or quota, so every roster re-reads at once."""

    value = 0


def _bump(**kwargs: object) -> None:
    _Generation.value += 1


for _model in (Account, Quota):
    post_save.connect(_bump, sender=_model, dispatch_uid=f"leasing-roster-save-{_model.__name__}")
    post_delete.connect(_bump, sender=_model, dispatch_uid=f"leasing-roster-delete-{_model.__name__}")


class Roster:
    """One database alias's candidates, at most `max_age` seconds old (or being re-read in the background)."""

    def __init__(self, using: str = "default", max_age: float = 1.0) -> None:
        self.using = using
        self.max_age = max_age
        self._candidates: list[Candidate] | None = None
        self._by_id: dict[int, Candidate] = {}
        self._loaded_at = 0.0
        self._generation = -1
        self._epoch = 0  # bumped by every install and every `forget`: a background read older than either is dropped
        self._revalidation: asyncio.Task | None = None  # the background re-read in flight, at most one
        # Unordered answers by (mode, cost, tier): (epoch, valid until, candidates). Eligibility only
        # changes with the snapshot, a debit, or when a cooldown or quota window passes.
        self._answers: dict[tuple[str, int, str], tuple[int, float, list[Candidate]]] = {}

    async def eligible(self, request: LeaseRequest, *, ordered: bool = True) -> list[Candidate]:
        """Eligible candidates, in lease order when `ordered` or when `request` excludes nobody
        (that answer is kept per snapshot: never change the list); an empty answer is always
        from fresh rows. The order is the snapshot's: in-flight counts and uses since are not in it."""
        fresh = await self._ensure()
        found = self._eligible(request, ordered)
        if not found and not fresh:
            await self._reload()
            found = self._eligible(request, ordered)
        return found

    def _eligible(self, request: LeaseRequest, ordered: bool) -> list[Candidate]:
        now, candidates = time.time(), self._candidates or []
        if request.exclude:  # a retry: rare, answered afresh
            return eligible(candidates, request, now, ordered=ordered)
        # Every first attempt: the same answer, in lease order, until something changes. The
        # order puts quota before recency, and quota_left only changes when a window ends.
        key = (request.mode, request.cost, request.tier)
        answer = self._answers.get(key)
        if answer is not None and answer[0] == self._epoch and now < answer[1]:
            return answer[2]
        found = eligible(candidates, request, now, ordered=True)
        self._answers[key] = (self._epoch, _next_change(candidates, request.mode, now), found)
        return found

    async def _ensure(self) -> bool:
        """Have a snapshot to answer from; True when it was read just now."""
        if self._candidates is None or self._generation != _Generation.value:
            await self._reload()  # none, forgotten, or this process changed an account: read before answering
            return True
        if time.monotonic() - self._loaded_at > self.max_age:
            self._revalidate()  # only old: answer from it, re-read behind
        return False

    async def _reload(self) -> None:
        generation = _Generation.value
        candidates = await sync_to_async(load, thread_sensitive=True)(self.using)
        self._install(candidates, generation)

    def _install(self, candidates: list[Candidate], generation: int) -> None:
        self._candidates = candidates
        self._by_id = {c.id: c for c in candidates}
        self._loaded_at = time.monotonic()
        self._generation = generation
        self._epoch += 1

    def _revalidate(self) -> None:
        running = self._revalidation
        # One at a time; one left on a loop that stopped (another thread's, a test's) would never finish.
        if running is not None and not running.done() and running.get_loop().is_running():
            return
        # A fresh context: the re-read serves every later request, not the one that started it.
        self._revalidation = asyncio.get_running_loop().create_task(
            self._reload_behind(), name=f"roster-revalidate-{self.using}", context=contextvars.Context()
        )

    async def _reload_behind(self) -> None:
        epoch, generation = self._epoch, _Generation.value
        try:
            candidates = await sync_to_async(load, thread_sensitive=True)(self.using)
        except Exception:  # the snapshot stays; the next lease after `max_age` tries again
            log.warning("could not re-read the accounts of %r in the background", self.using, exc_info=True)
            return
        if self._epoch == epoch:  # nothing newer was installed or forgotten meanwhile
            self._install(candidates, generation)

    def forget(self, account_id: int | None = None) -> None:
        """Re-read before the next lease (an outcome changed an account's state)."""
        self._candidates = None
        self._by_id = {}
        self._epoch += 1

    def debit(self, account_id: int, mode: str, cost: int) -> None:
        """Mirror a quota debit in the snapshot, so a count reaching zero is skipped before the next read."""
        candidate = self._by_id.get(account_id)
        if candidate is None:
            return
        quota = candidate.quotas.get(mode)
        if quota is not None and quota.remaining is not None:
            left = max(quota.remaining - cost, 0)
            candidate.quotas[mode] = quota.debited(cost)
            if any(key[0] == mode and left < key[1] for key in self._answers):
                self._answers.clear()  # it may no longer afford a cost asked before
