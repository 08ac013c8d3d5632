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
from collections.abc import Iterable

from pools import usage
from pools.leasing.base import Grant, LeaseRequest, Refusal, Ticket
from pools.leasing.roster import Roster
from pools.leasing.rule import Candidate

# A use the snapshot never caught up with (its account left rotation) is forgotten after this
# many seconds: by then the usage ledger has written it, or the account is out of the order.
FORGET_USE_AFTER = 300.0


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
        self._indexes: dict[int, tuple[list[Candidate], dict[int, Candidate]]] = {}  # `_pick`'s lookups
        self._sweep_at = 0.0  # monotonic time of the earliest expiry at the last sweep

    def _sweep(self, now: float) -> None:
        """Drop expired leases; a no-op until the earliest expiry seen at the last sweep (most leases)."""
        if now < self._sweep_at:
            return
        earliest = now + self.ttl
        for account_id, held in list(self._held.items()):
            for key in [k for k, expiry in held.items() if expiry <= now]:
                del held[key]
            if held:
                earliest = min(earliest, *held.values())
            else:
                del self._held[account_id]  # only accounts with leases stay: `_touched` walks them
        self._sweep_at = earliest

    def _count(self, account_id: int, now: float) -> int:
        self._sweep(now)
        held = self._held.get(account_id)
        return len(held) if held else 0

    async def acquire(self, request: LeaseRequest, ticket: Ticket | None) -> Grant | Refusal:
        # Without exclusions the roster answers in lease order, kept per snapshot (`_pick`).
        candidates = await self.roster.eligible(request, ordered=not request.exclude)
        if not candidates:
            return Refusal.NONE
        with self._lock:
            now, wall = time.monotonic(), time.time()
            self._sweep(now)
            choose = self._weigh if request.exclude else self._pick
            best = choose(candidates, request, wall)
            if best is None:
                return Refusal.BUSY
            key = uuid.uuid4().hex
            self._held[best.id][key] = now + self.ttl
            self._last_used[best.id] = time.time()
        # The account row's `use_count`/`last_used_at` follow within a flush interval (`pools.usage`).
        usage.record_use(self.using, best.id)
        return Grant(key, best.id, best.token, best.tier)

    def _weigh(self, candidates: Iterable[Candidate], request: LeaseRequest, wall: float) -> Candidate | None:
        """The first of `candidates` in lease order, in-flight counts and uses since the snapshot included.

        The order is `rule.Candidate.order` with the in-flight count after the tier, built in two
        steps so an account already behind on its head is not weighed further.
        """
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
        return best

    def _pick(self, ordered: list[Candidate], request: LeaseRequest, wall: float) -> Candidate | None:
        """`_weigh` over the whole pool, at the cost of the accounts touched since the snapshot.

        `ordered` is the snapshot's lease order. An account with no lease in flight and no use
        since the snapshot was read still sits where that sort put it (the same count, quota and
        last use), so the first such one beats every other untouched account; only the touched
        ones (about as many as the leases of the last second or two) are weighed against it.
        """
        index = self._index_of(ordered)
        touched = self._touched(index, wall)
        weighed = [index[account_id] for account_id in touched if account_id in index]
        first = next((c for c in ordered if c.id not in touched), None)
        if first is not None:
            weighed.append(first)
        return self._weigh(weighed, request, wall)

    def _index_of(self, ordered: list[Candidate]) -> dict[int, Candidate]:
        """Candidates by id, built once per roster answer (one per model kind asked for)."""
        entry = self._indexes.get(id(ordered))
        if entry is None or entry[0] is not ordered:
            if len(self._indexes) >= 32:  # answers of older snapshots
                self._indexes.clear()
            entry = self._indexes[id(ordered)] = (ordered, {c.id: c for c in ordered})
        return entry[1]

    def _touched(self, index: dict[int, Candidate], wall: float) -> set[int]:
        """Accounts holding leases or used since the snapshot; uses the snapshot has caught up with are forgotten."""
        touched = set(self._held)
        for account_id, used in list(self._last_used.items()):
            c = index.get(account_id)
            caught_up = c.last_used >= used if c is not None else wall - used > FORGET_USE_AFTER
            if caught_up:
                del self._last_used[account_id]
            else:
                touched.add(account_id)
        return touched

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
            held = self._held.get(grant.account_id)
            if held is not None:
                held.pop(grant.key, None)
                if not held:
                    del self._held[grant.account_id]

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
