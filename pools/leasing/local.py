"""In-process leases: the SQLite default, one worker process by design.

In-flight leases are a dict guarded by a thread lock (the gateway's event loop
and a test's loop may share the process), so counting and taking a slot is one
step no other request can interleave with. Each lease still carries an expiry,
renewed while held, so a lease whose holder vanished without releasing (a bug,
a task that died) frees itself after the TTL as it would in the shared backends.
A lease touches no database row: the use is counted in the usage ledger
(`pools.usage`), and the roster is a snapshot.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import defaultdict

from pools import usage
from pools.leasing.base import Grant, LeaseRequest, Refusal, Ticket
from pools.leasing.roster import Roster


class LocalBackend:
    name = "local"
    records_use_on_release = False
    poll_interval = 0.25  # slots freed here wake waiters at once; polling only catches expired leases

    def __init__(self, using: str = "default", ttl: float = 60.0, roster_max_age: float = 1.0) -> None:
        self.using = using
        self.ttl = ttl
        self.roster = Roster(using, roster_max_age)
        self._lock = threading.Lock()
        self._held: dict[int, dict[str, float]] = defaultdict(dict)  # account -> lease key -> expiry (monotonic)
        self._last_used: dict[int, float] = {}  # Unix seconds, newer than the roster's copy
        self._sweep_at = 0.0  # monotonic time of the earliest expiry at the last sweep

    def _sweep(self, now: float) -> None:
        """Drop expired leases; a no-op until the earliest expiry seen at the last sweep (most leases)."""
        if now < self._sweep_at:
            return
        earliest = now + self.ttl
        for held in self._held.values():
            for key in [k for k, expiry in held.items() if expiry <= now]:
                del held[key]
            earliest = min(earliest, *held.values()) if held else earliest
        self._sweep_at = earliest

    def _count(self, account_id: int, now: float) -> int:
        self._sweep(now)
        held = self._held.get(account_id)
        return len(held) if held else 0

    async def acquire(self, request: LeaseRequest, ticket: Ticket | None) -> Grant | Refusal:
        candidates = await self.roster.eligible(request, ordered=False)  # the loop below weighs each one
        if not candidates:
            return Refusal.NONE
        with self._lock:
            now, wall = time.monotonic(), time.time()
            self._sweep(now)
            best = best_head = best_order = None
            for c in candidates:
                held = self._held.get(c.id)
                n = len(held) if held else 0
                if n >= c.limit(request.default_limit):
                    continue
                head = (-c.priority, c.rank, n)
                if best_head is not None and head > best_head:
                    continue  # already behind on the cheap part of the order (most candidates under load)
                last = max(c.last_used, self._last_used.get(c.id, 0.0))
                order = (*head, -c.quota_left(request.mode, wall), last, c.id)
                if best_order is None or order < best_order:
                    best, best_head, best_order = c, head, order
            if best is None:
                return Refusal.BUSY
            key = uuid.uuid4().hex
            self._held[best.id][key] = now + self.ttl
            self._last_used[best.id] = time.time()
        # The account row's `use_count`/`last_used_at` follow within a flush interval (`pools.usage`).
        usage.record_use(self.using, best.id)
        return Grant(key, best.id, best.token, best.tier)

    async def renew(self, grant: Grant) -> bool:
        with self._lock:
            held = self._held.get(grant.account_id, {})
            if held.get(grant.key, 0) <= time.monotonic():
                held.pop(grant.key, None)
                return False
            held[grant.key] = time.monotonic() + self.ttl
            return True

    async def release(self, grant: Grant) -> None:
        with self._lock:
            self._held.get(grant.account_id, {}).pop(grant.key, None)

    async def withdraw(self, ticket: Ticket, request: LeaseRequest) -> None:
        return None  # one process: there is no shared queue to leave

    async def in_flight(self) -> dict[int, int]:
        with self._lock:
            now = time.monotonic()
            counts = {account_id: self._count(account_id, now) for account_id in list(self._held)}
        return {account_id: n for account_id, n in counts.items() if n}

    def forget(self, account_id: int | None = None) -> None:
        self.roster.forget(account_id)

    def debit(self, account_id: int, mode: str, cost: int) -> None:
        self.roster.debit(account_id, mode, cost)
