"""Waiting for a free slot: first come, first served, up to the queue timeout.

Requests that want the same accounts (same tier, mode and exclusions) form one
line per worker. Only the line's head asks the backend; the others sleep until
they become head, so a thousand waiting requests cost one backend call per poll,
not a thousand. The head asks again when this worker frees a slot (woken at
once) and every `poll_interval` otherwise (a slot freed by another worker, or a
lease of a dead worker expiring).

Across workers (Redis backend) each line's head registers in a shared queue with
the arrival time of the request it stands for; the lease script grants a slot
only when more slots are free than there are older heads waiting, so a worker
cannot take a freed slot from a request that has been waiting longer elsewhere.
PostgreSQL and the local backend keep the per-worker order only.

A waiter whose task is cancelled (the client left) leaves its line in `finally`;
a worker that dies without leaving stops refreshing its registration, which the
script drops after a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Hashable

from pools.leasing.base import Grant, LeaseBackend, LeaseRequest, Refusal, Ticket

log = logging.getLogger(__name__)

def now_ms() -> int:
    return int(time.time() * 1000)


class Waiter:
    """One request in a line. Woken from any thread (the gateway and tests run separate loops)."""

    def __init__(self, key: Hashable, arrival_ms: int) -> None:
        self.key = key
        self.arrival_ms = arrival_ms
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()

    def wake(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop already closed: nobody to wake
            self._loop.call_soon_threadsafe(self._event.set)

    async def sleep(self, seconds: float) -> None:
        """Until woken or `seconds` pass; a wake that came early is not lost."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), max(seconds, 0))
        self._event.clear()


class Lines:
    """This worker's lines of waiting requests, one per queue key."""

    def __init__(self, worker_id: str | None = None) -> None:
        self.worker_id = worker_id or uuid.uuid4().hex[:12]  # names this worker's places in the shared queue
        self._lock = threading.Lock()
        self._lines: dict[Hashable, deque[Waiter]] = {}

    def join(self, key: Hashable) -> Waiter:
        waiter = Waiter(key, now_ms())
        with self._lock:
            self._lines.setdefault(key, deque()).append(waiter)
        return waiter

    def position(self, waiter: Waiter) -> tuple[bool, Waiter | None]:
        """(is it the head, the waiter right behind it)."""
        with self._lock:
            line = self._lines.get(waiter.key)
            if not line or line[0] is not waiter:
                return False, None
            return True, (line[1] if len(line) > 1 else None)

    def leave(self, waiter: Waiter) -> Waiter | None:
        """Take `waiter` out; wakes and returns the new head when it was the head."""
        with self._lock:
            line = self._lines.get(waiter.key)
            if not line or waiter not in line:
                return None
            was_head = line[0] is waiter
            line.remove(waiter)
            if not line:
                del self._lines[waiter.key]
                return None
            head = line[0] if was_head else None
        if head is not None:
            head.wake()
        return head

    def head_arrival(self, key: Hashable) -> int:
        with self._lock:
            line = self._lines.get(key)
            return line[0].arrival_ms if line else 0

    def wake_heads(self) -> None:
        """A slot was freed in this worker: every line's head tries again now."""
        with self._lock:
            heads = [line[0] for line in self._lines.values() if line]
        for head in heads:
            head.wake()

    def waiting(self) -> int:
        with self._lock:
            return sum(len(line) for line in self._lines.values())


def _member(lines: Lines, request: LeaseRequest) -> str:
    exclude = ",".join(str(i) for i in sorted(request.exclude))
    digest = hashlib.blake2s(f"{request.tier}:{request.mode}:{exclude}".encode(), digest_size=6).hexdigest()
    return f"{lines.worker_id}:{digest}"


async def wait_for_slot(backend: LeaseBackend, lines: Lines, request: LeaseRequest, patience: float) -> Grant | Refusal:
    """A grant; Refusal.NONE when nothing is eligible; Refusal.BUSY after `patience` seconds in line."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(patience, 0)
    waiter = lines.join(request.queue_key)
    member = _member(lines, request)
    ticket: Ticket | None = None  # set once we have asked as our line's head (and may hold its place)
    granted = False  # a grant hands the place on by itself
    try:
        while True:
            head, behind = lines.position(waiter)
            if head:
                ticket = Ticket(member, waiter.arrival_ms, behind.arrival_ms if behind else 0)
                got = await _acquire(backend, request, ticket)
                if isinstance(got, Grant) or got is Refusal.NONE:
                    granted = isinstance(got, Grant)
                    return got
            left = deadline - loop.time()
            if left <= 0:
                return Refusal.BUSY
            # Heads poll for slots freed elsewhere; the rest wait their turn (leave() wakes them).
            pause = backend.poll_interval * random.uniform(0.8, 1.2) if head else left
            await waiter.sleep(min(left, pause))
    finally:
        lines.leave(waiter)
        if ticket is not None and not granted:
            # Hand our place in the shared queue to the next waiter of this line, or give it up.
            await _withdraw(backend, request, Ticket(member, ticket.arrival_ms, lines.head_arrival(waiter.key)))


async def _acquire(backend: LeaseBackend, request: LeaseRequest, ticket: Ticket) -> Grant | Refusal:
    """backend.acquire, but a grant that arrives after our caller was cancelled goes back at once."""
    task = asyncio.ensure_future(backend.acquire(request, ticket))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        _orphans.add(task)
        task.add_done_callback(_orphans.discard)
        task.add_done_callback(_give_back(backend))
        raise


_orphans: set[asyncio.Task] = set()  # abandoned acquires and their releases, held until they finish


def _give_back(backend: LeaseBackend):
    def done(task: asyncio.Task) -> None:
        if task.cancelled() or task.exception() is not None:
            return
        grant = task.result()
        if isinstance(grant, Grant):
            release = asyncio.ensure_future(backend.release(grant))
            _orphans.add(release)
            release.add_done_callback(_orphans.discard)

    return done


async def _withdraw(backend: LeaseBackend, request: LeaseRequest, ticket: Ticket) -> None:
    try:
        await asyncio.shield(backend.withdraw(ticket, request))
    except asyncio.CancelledError:
        raise
    except Exception:  # the registration expires on its own; never fail the request for it
        log.warning("could not leave the shared lease queue", exc_info=True)
