"""Write-behind usage ledger: the counters of successful requests, written in batches off the request path.

Every streamed request used to write its account row (and quota row) through
`sync_to_async` twice: once to count the use, once to settle the success. On
SQLite those writes queue behind each other and cost more than the request
itself at a hundred concurrent streams. What they record is bookkeeping, not a
decision: nothing becomes eligible or ineligible because an account was used or
succeeded. So the common outcomes are added up here, in memory, and written by
one background task per event loop at most once per `USAGE_FLUSH_INTERVAL`
seconds (default 1):

    record_use(using, account_id)                       use_count += 1, last_used_at = now
    record_success(using, account_id, mode, cost, ...)  failures reset (only where set), the
                                                        mode's quota debited by `cost`, and the
                                                        use when the backend counts it at release
    flush(using=None) / aflush(using=None)              write everything pending now

One flush is one transaction per database alias with a handful of statements,
however many requests it covers: use counts are one prepared UPDATE run once per
account (`executemany`), every failure reset is one statement, and quota debits share one
statement per (mode, amount). `remaining` never goes below 0 and an unknown
(null) `remaining` stays unknown, as `pools.leasing.outcomes.settle` does it.

The outcomes that change eligibility (FAILURE, RATE_LIMITED, EXPIRED, BANNED) are
still settled at once by the caller, inside `superseding(using, account_id)`:
that drops the account's pending failure reset first (the failure is newer than
the buffered successes, so the next flush must not wipe it; a success recorded
after the failure sets it again), and holds off any flush until the failure is
written, so the two can never land in the wrong order.

The trade-off: the counters in the database lag by up to one interval, and a
worker killed with SIGKILL loses at most one interval of use counts and quota
debits (quotas are re-synced from Grok by the `quota_refresh` job anyway). A
worker that exits cleanly (`manage.py serve` workers on SIGTERM, a management
command, a test run) writes what is pending at exit. Rosters re-read from the
database apply the pending debits on top (`pending_debits`), so this worker's
leasing never sees a quota go back up between two flushes.

The ledger is process-wide and guarded by a thread lock: the gateway's event loop
runs in the server's thread while tests lease from another thread of the process.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import contextvars
import logging
import threading
import time
import weakref
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connections, transaction
from django.utils import timezone

from pools.models import Account, Quota

__all__ = [
    "Ledger", "aflush", "discard", "flush", "flush_at_exit", "pending", "pending_debits", "pending_uses",
    "record_success", "record_use", "superseding",
]

log = logging.getLogger(__name__)

CHUNK = 200  # accounts per UPDATE: ~4 parameters each stays far below any SQLite build's limit


@dataclass(slots=True)
class Entry:
    """What is pending for one account since the last flush."""

    uses: int = 0  # use_count increment
    last_used: datetime | None = None  # the latest use
    reset_failures: bool = False  # a success since the last failure: failure_count = 0, last_error = ""
    debits: dict[str, int] = field(default_factory=dict)  # mode -> quota units to take off `remaining`

    def absorb(self, other: Entry) -> None:
        """Add `other` in (a flush that failed puts its entries back this way)."""
        self.uses += other.uses
        if other.last_used is not None and (self.last_used is None or other.last_used > self.last_used):
            self.last_used = other.last_used
        self.reset_failures = self.reset_failures or other.reset_failures
        for mode, cost in other.debits.items():
            self.debits[mode] = self.debits.get(mode, 0) + cost

    def __bool__(self) -> bool:
        return bool(self.uses or self.reset_failures or self.debits)


class Ledger:
    """Pending usage per database alias and account, and the one way it reaches the database (`flush`).

    Recording only touches memory under a thread lock, so it is safe (and cheap) on
    an event loop. Flushing does ORM work: call it from sync code or through `aflush`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards `_pending`; held for dictionary work only, never across I/O
        # Held across a flush's whole swap-write-(put back) and across a superseding settle: their
        # writes to one account land in the order they were decided in.
        self._writing = threading.RLock()
        self._pending: dict[str, dict[int, Entry]] = {}

    # --- recording (any thread, event loops included) ---------------------------------

    def record_use(self, using: str, account_id: int, at: datetime | None = None) -> None:
        """Count one use of the account (a lease was granted on it)."""
        at = at or timezone.now()
        with self._lock:
            entry = self._entry(using, account_id)
            entry.uses += 1
            if entry.last_used is None or at > entry.last_used:
                entry.last_used = at

    def record_success(self, using: str, account_id: int, mode: str, cost: int, *, record_use: bool) -> None:
        """A request on the account succeeded: reset its failures, debit `cost` from `mode`'s quota.

        `record_use` also counts the use, for backends that record it at release (Redis).
        """
        at = timezone.now() if record_use else None
        with self._lock:
            entry = self._entry(using, account_id)
            entry.reset_failures = True
            if cost > 0:
                entry.debits[mode] = entry.debits.get(mode, 0) + cost
            if at is not None:
                entry.uses += 1
                if entry.last_used is None or at > entry.last_used:
                    entry.last_used = at

    def _entry(self, using: str, account_id: int) -> Entry:
        accounts = self._pending.get(using)
        if accounts is None:
            accounts = self._pending[using] = {}
        entry = accounts.get(account_id)
        if entry is None:
            entry = accounts[account_id] = Entry()
        return entry

    @contextlib.contextmanager
    def superseding(self, using: str, account_id: int) -> Iterator[None]:
        """Settle a non-success outcome of the account inside this block.

        Its pending failure reset is dropped (the failure is newer), and no flush
        runs until the block ends: a flush that already took the reset out writes
        it first, so it cannot land after the failure and wipe it.
        """
        with self._writing:
            with self._lock:
                entry = self._pending.get(using, {}).get(account_id)
                if entry is not None:
                    entry.reset_failures = False
            yield

    @contextlib.contextmanager
    def resyncing(self, using: str, account_id: int, modes: Iterable[str]) -> Iterator[None]:
        """Write a quota reading from Grok for these modes inside this block.

        Grok's count already includes every request that finished before it was read, so
        the account's pending debits for those modes are dropped (applying them after the
        reading would count those requests twice), and no flush runs until the block ends.
        """
        with self._writing:
            with self._lock:
                entry = self._pending.get(using, {}).get(account_id)
                if entry is not None:
                    for mode in modes:
                        entry.debits.pop(mode, None)
            yield

    # --- reading -----------------------------------------------------------------------

    def pending(self, using: str | None = None) -> dict[str, dict[int, Entry]]:
        """A copy of what is pending, per alias (admin, tests)."""
        with self._lock:
            return {
                alias: {pk: Entry(e.uses, e.last_used, e.reset_failures, dict(e.debits)) for pk, e in accounts.items()}
                for alias, accounts in self._pending.items()
                if accounts and (using is None or alias == using)
            }

    def pending_debits(self, using: str) -> dict[int, dict[str, int]]:
        """Quota units taken but not written yet, per account and mode: rosters subtract them from what they read."""
        with self._lock:
            return {pk: dict(e.debits) for pk, e in self._pending.get(using, {}).items() if e.debits}

    def pending_uses(self, using: str) -> dict[int, datetime]:
        """The latest use not written yet, per account: leasing counts it as the account's last use."""
        with self._lock:
            return {pk: e.last_used for pk, e in self._pending.get(using, {}).items() if e.last_used is not None}

    def __bool__(self) -> bool:
        with self._lock:
            return any(self._pending.values())

    # --- writing (sync: worker threads, never an event loop) -------------------------------

    def flush(self, using: str | None = None) -> int:
        """Write what is pending (for `using`, or every alias); returns how many accounts were written.

        One transaction per alias. When the write fails its entries go back into the
        ledger (added to anything recorded meanwhile), so the next flush retries them;
        the error is raised after every alias was tried.
        """
        with self._lock:
            aliases = [using] if using is not None else [a for a, accounts in self._pending.items() if accounts]
        written = 0
        error: BaseException | None = None
        for alias in aliases:
            with self._writing:
                with self._lock:
                    entries = self._pending.pop(alias, {})
                entries = {pk: entry for pk, entry in entries.items() if entry}
                if not entries:
                    continue
                try:
                    _close_expired_connections()
                    _write(alias, entries)
                except BaseException as exc:
                    self._put_back(alias, entries)
                    error = error or exc
                    continue
            written += len(entries)
        if error is not None:
            raise error
        return written

    def _put_back(self, using: str, entries: dict[int, Entry]) -> None:
        with self._lock:
            for account_id, older in entries.items():
                self._entry(using, account_id).absorb(older)

    def discard(self, using: str | None = None) -> int:
        """Drop what is pending without writing it; returns how many accounts had entries (tests)."""
        with self._lock:
            if using is None:
                dropped = sum(len(accounts) for accounts in self._pending.values())
                self._pending.clear()
            else:
                dropped = len(self._pending.pop(using, {}))
        return dropped


def _close_expired_connections() -> None:
    """Close this thread's connections older than CONN_MAX_AGE, as Django does at the end of a request.

    The flusher's thread (asgiref's one sync thread, which the API's database work
    shares) is outside Django's request cycle. A broken connection is not its business:
    the PostgreSQL backend (`grok2api.db.postgresql`) replaces one wherever it is used
    next, flush or not. A connection inside a transaction (a sync flush from inside one)
    belongs to its caller: it stays.
    """
    now = time.monotonic()
    for conn in connections.all(initialized_only=True):
        expired = conn.close_at is not None and now >= conn.close_at
        if expired and conn.connection is not None and conn.autocommit and not conn.in_atomic_block:
            conn.close()


def _chunks(items: list, size: int = CHUNK) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _write(using: str, entries: dict[int, Entry]) -> None:
    """The pending entries of one alias, in one transaction of as few UPDATEs as they allow."""
    accounts = Account.objects.using(using)
    uses: list[tuple[int, int, datetime | None]] = []
    debits: defaultdict[tuple[str, int], list[int]] = defaultdict(list)
    resets: list[int] = []
    for account_id, entry in sorted(entries.items()):
        if entry.uses:
            uses.append((account_id, entry.uses, entry.last_used))
        if entry.reset_failures:
            resets.append(account_id)
        for mode, cost in entry.debits.items():
            debits[(mode, cost)].append(account_id)
    with transaction.atomic(using=using):
        accounts.add_uses(uses)
        for chunk in _chunks(resets):
            accounts.filter(pk__in=chunk).succeeded()
        for (mode, cost), ids in debits.items():
            for chunk in _chunks(ids):
                Quota.objects.using(using).filter(account_id__in=chunk, mode=mode).debit(cost)


# --- the process-wide ledger and its background flusher ------------------------------------------

_ledger = Ledger()


def record_use(using: str, account_id: int) -> None:
    """Count a use of the account (local backend: at lease time); written by the next flush."""
    _ledger.record_use(using, account_id)
    _ensure_flusher()


def record_success(using: str, account_id: int, mode: str, cost: int, *, record_use: bool) -> None:
    """A request succeeded on the account: failures reset, quota debited (and the use counted
    when `record_use`); written by the next flush."""
    _ledger.record_success(using, account_id, mode, cost, record_use=record_use)
    _ensure_flusher()


def superseding(using: str, account_id: int) -> contextlib.AbstractContextManager[None]:
    """Wrap the immediate settlement of a non-success outcome (see `Ledger.superseding`)."""
    return _ledger.superseding(using, account_id)


def resyncing(using: str, account_id: int, modes: Iterable[str]) -> contextlib.AbstractContextManager[None]:
    return _ledger.resyncing(using, account_id, modes)


def pending(using: str | None = None) -> dict[str, dict[int, Entry]]:
    return _ledger.pending(using)


def pending_debits(using: str) -> dict[int, dict[str, int]]:
    return _ledger.pending_debits(using)


def pending_uses(using: str) -> dict[int, datetime]:
    return _ledger.pending_uses(using)


def flush(using: str | None = None) -> int:
    """Write everything pending now (sync code only); returns how many accounts were written."""
    return _ledger.flush(using)


async def aflush(using: str | None = None) -> int:
    """`flush` in Django's sync thread: the only way an event loop flushes."""
    return await sync_to_async(flush, thread_sensitive=True)(using)


def discard(using: str | None = None) -> int:
    """Drop what is pending without writing it (tests: a finished test's counters go nowhere)."""
    return _ledger.discard(using)


def interval() -> float:
    """Seconds between two background flushes (`USAGE_FLUSH_INTERVAL`)."""
    return max(float(getattr(settings, "USAGE_FLUSH_INTERVAL", 1.0)), 0.01)


# One flusher task per event loop that records; the set keeps them referenced until they end.
_flushers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task] = weakref.WeakKeyDictionary()
_flusher_tasks: set[asyncio.Task] = set()
_flushers_lock = threading.Lock()


def _ensure_flusher() -> None:
    """Start this event loop's flusher on its first record (no loop: sync code flushes itself, or exit does)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    task = _flushers.get(loop)
    if task is not None and not task.done():
        return
    with _flushers_lock:
        task = _flushers.get(loop)
        if task is not None and not task.done():
            return
        # A fresh context: the task outlives the request that happened to start it.
        task = loop.create_task(_flush_every_interval(), name="usage-flusher", context=contextvars.Context())
        _flushers[loop] = task
        _flusher_tasks.add(task)
        task.add_done_callback(_flusher_tasks.discard)


async def _flush_every_interval() -> None:
    while True:
        await asyncio.sleep(interval())
        if not _ledger:
            continue  # idle: one wake-up and a look at a dict per interval
        try:
            await aflush()
        except Exception:
            log.exception("could not write usage counts; they stay pending for the next flush")


class _Exit:
    enabled = True


def flush_at_exit(enabled: bool) -> None:
    """Write what is pending when the process exits (the default). A test run turns it off:
    by then its databases are gone and Django points at the real one again."""
    _Exit.enabled = enabled


@atexit.register
def _flush_on_exit() -> None:
    if not _Exit.enabled or not _ledger:
        return
    try:
        written = flush()
    except Exception:
        log.exception("could not write the pending usage counts at exit; they are lost")
    else:
        log.debug("wrote the pending usage of %d account(s) at exit", written)
