"""Operator bulk actions on accounts: at once for a few, as a background `BulkTask` for many.

    KINDS               refresh_quota, test, enable, disable, reset_failures, delete
    run_small(kind, ids) -> Tally        at once, in the admin request (up to SYNC_LIMIT)
    start_task(kind, ids, user) -> BulkTask
                                         queued, then run in a background thread; any
                                         worker's job runner also picks up a queued task
    run_task(task_id)                    claim a queued task (a conditional UPDATE decides
                                         who runs it) and work through it chunk by chunk,
                                         writing done / failed after each chunk
    summary(kind, tally) -> str          "Enabled 3 accounts." for the message and the task

`refresh_quota` syncs every mode of each account's tier; `test` asks rate-limits for
the fast mode only (every tier has it): a real request that proves the token works,
and that brings an expired account back when it does.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from asgiref.sync import sync_to_async
from django.db.models import F
from django.utils import timezone

from pools import background
from pools.models import Account, BulkTask
from pools.quotas import RefreshResult, refresh_many
from pools.reports import KIND_WORDS

logger = logging.getLogger(__name__)

SYNC_LIMIT = 20  # more accounts than this run as a background task
DB_CHUNK = 200  # accounts per progress step for database-only kinds
NET_CHUNK = 10  # accounts per progress step for kinds that ask Grok

KINDS = {
    "refresh_quota": "Refresh quota",
    "test": "Test",
    "enable": "Enable",
    "disable": "Disable",
    "reset_failures": "Reset failures",
    "delete": "Delete",
}
NETWORK_KINDS = ("refresh_quota", "test")
TEST_MODES = ("fast",)


@dataclass
class Tally:
    done: int = 0  # accounts processed
    changed: int = 0  # accounts whose row changed, or that answered Grok
    failed: int = 0
    reasons: Counter = field(default_factory=Counter)  # failure kind -> count

    def add(self, other: Tally) -> None:
        self.done += other.done
        self.changed += other.changed
        self.failed += other.failed
        self.reasons.update(other.reasons)


def _accounts(n: int) -> str:
    return f"{n} account{'s' if n != 1 else ''}"


def summary(kind: str, tally: Tally) -> str:
    reasons = ", ".join(f"{n} {KIND_WORDS.get(k, k)}" for k, n in tally.reasons.most_common())
    failed = f"{tally.failed} failed ({reasons})" if tally.failed else "0 failed"
    if kind == "refresh_quota":
        return f"Refreshed quota of {_accounts(tally.changed)}; {failed}."
    if kind == "test":
        return f"Tested {_accounts(tally.done)}: {tally.changed} answered, {failed}."
    verbs = {"enable": "Enabled", "disable": "Disabled", "delete": "Deleted"}
    if kind == "reset_failures":
        return f"Reset failures of {_accounts(tally.changed)}."
    return f"{verbs[kind]} {_accounts(tally.changed)}."


def _apply_db(kind: str, ids: Sequence[int]) -> Tally:
    accounts = Account.objects.filter(pk__in=list(ids))
    if kind == "enable":
        changed = accounts.enable()
    elif kind == "disable":
        changed = accounts.disable()
    elif kind == "reset_failures":
        changed = accounts.reset_failures()
    elif kind == "delete":
        changed = accounts.delete()[1].get(Account._meta.label, 0)
    else:
        raise ValueError(f"unknown bulk action {kind!r}")
    return Tally(done=len(ids), changed=changed)


def _tally(results: list[RefreshResult]) -> Tally:
    tally = Tally(done=len(results))
    for result in results:
        if result.ok:
            tally.changed += 1
        else:
            tally.failed += 1
            tally.reasons[result.kind] += 1
    return tally


async def _apply_net(kind: str, ids: Sequence[int]) -> Tally:
    modes = TEST_MODES if kind == "test" else None
    return _tally(await refresh_many(list(ids), dict.fromkeys(ids, modes)))


def run_small(kind: str, ids: Sequence[int]) -> Tally:
    """Apply `kind` to a few accounts now (sync code: the admin request waits)."""
    if kind not in KINDS:
        raise ValueError(f"unknown bulk action {kind!r}")
    if kind in NETWORK_KINDS:
        return background.run_isolated(lambda: _apply_net(kind, ids), name=f"bulk-{kind}")
    return _apply_db(kind, ids)


def start_task(kind: str, ids: Sequence[int], user: str = "") -> BulkTask:
    """Queue a task and start it in a background thread; returns at once."""
    if kind not in KINDS:
        raise ValueError(f"unknown bulk action {kind!r}")
    task = BulkTask.objects.create(kind=kind, total=len(ids), account_ids=list(ids), created_by=user[:150])
    background.spawn(lambda: run_task(task.pk), name=f"bulk-task-{task.pk}")
    logger.info("bulk task %d queued: %s on %d accounts by %s", task.pk, kind, len(ids), user or "?")
    return task


async def run_task(task_id: int) -> bool:
    """Run a queued task to its end; False when another thread or worker claimed it first."""
    claimed = await BulkTask.objects.filter(pk=task_id, status="queued").aupdate(status="running")
    if not claimed:
        return False
    task = await BulkTask.objects.aget(pk=task_id)
    ids = [int(pk) for pk in task.account_ids]
    network = task.kind in NETWORK_KINDS
    size = NET_CHUNK if network else DB_CHUNK
    tally = Tally()
    try:
        for start in range(0, len(ids), size):
            chunk = ids[start : start + size]
            if network:
                part = await _apply_net(task.kind, chunk)
            else:
                part = await sync_to_async(_apply_db, thread_sensitive=True)(task.kind, chunk)
            tally.add(part)
            await BulkTask.objects.filter(pk=task_id).aupdate(
                done=F("done") + part.done, failed=F("failed") + part.failed
            )
    except asyncio.CancelledError:
        await _finish(task_id, "failed", f"{summary(task.kind, tally)} Stopped: the worker stopped.")
        raise
    except Exception as exc:
        logger.exception("bulk task %d failed", task_id)
        await _finish(task_id, "failed", f"{summary(task.kind, tally)} Stopped: {type(exc).__name__}: {exc}")
        return True
    await _finish(task_id, "done", summary(task.kind, tally))
    logger.info("bulk task %d done: %s", task_id, summary(task.kind, tally))
    return True


async def _finish(task_id: int, status: str, message: str) -> None:
    await BulkTask.objects.filter(pk=task_id).aupdate(status=status, message=message, finished_at=timezone.now())


async def run_queued() -> int:
    """Run the tasks still queued (a thread that never started, a worker that restarted); returns how many."""
    ran = 0
    queued = [pk async for pk in BulkTask.objects.filter(status="queued").order_by("id").values_list("id", flat=True)]
    for task_id in queued:
        if await run_task(task_id):
            ran += 1
    return ran
