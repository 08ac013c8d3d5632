"""The usage ledger: successes and uses are added up in memory and written in batches, off the request path.

Some tests use a ledger of their own (`Ledger()`), which no background flusher
touches, so what one flush writes is exactly what the test recorded; the others
go through `lease()` and the process-wide ledger, as the gateway does.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.db import DatabaseError, connection, connections
from django.test.utils import CaptureQueriesContext

from gateway.models import get_model
from pools import leasing, usage
from pools.leasing.local import LocalBackend
from pools.leasing.outcomes import Settlement, settle
from pools.models import Account, Quota
from pools.selection import AllAccountsCooling, Outcome, lease
from pools.usage import Ledger
from tests.conftest import asettle_usage

pytestmark = pytest.mark.django_db(transaction=True)

FAST = get_model("grok-chat-fast")  # basic, mode fast, cost 1
EXPERT = get_model("grok-chat-expert")  # super, mode expert, cost 4


def account(token: str, **fields: object) -> Account:
    return Account.objects.create(token=f"eyJ{token}-secretpart", **fields)


def updates(captured: CaptureQueriesContext) -> list[str]:
    """The UPDATE statements sent; Django logs an `executemany` as one entry, "N times: <sql>"."""
    statements = (q["sql"].partition(" times: ")[2] or q["sql"] for q in captured.captured_queries)
    return [sql for sql in statements if sql.lstrip().upper().startswith("UPDATE")]


# --- one flush ---------------------------------------------------------------------------------


def test_successes_on_one_account_coalesce_into_one_flush() -> None:
    a = account("a", tier="super", failure_count=3, last_error="earlier")
    b = account("b", tier="super")
    Quota.objects.create(account=a, mode="fast", remaining=5)  # 4 x 2 units: stops at 0
    Quota.objects.create(account=a, mode="expert")  # never synced: stays unknown
    Quota.objects.create(account=b, mode="fast", remaining=100)
    ledger = Ledger()
    for _ in range(4):
        for who in (a, b):
            ledger.record_use("default", who.pk)  # the lease (local backend)
            ledger.record_success("default", who.pk, "fast", 2, record_use=False)  # the release
    ledger.record_success("default", a.pk, "expert", 4, record_use=False)
    assert Account.objects.get(pk=a.pk).use_count == 0  # nothing written yet

    with CaptureQueriesContext(connection) as captured:
        assert ledger.flush() == 2
    # Both accounts share each statement: uses (+4 each, one prepared UPDATE run per account),
    # failure resets, fast debits (8 each), expert debits.
    assert len(updates(captured)) == 4

    a, b = Account.objects.get(pk=a.pk), Account.objects.get(pk=b.pk)
    assert (a.use_count, a.failure_count, a.last_error) == (4, 0, "")
    assert b.use_count == 4 and a.last_used_at is not None and b.last_used_at is not None
    quotas = {(q.account_id, q.mode): q.remaining for q in Quota.objects.all()}
    assert quotas == {(a.pk, "fast"): 0, (a.pk, "expert"): None, (b.pk, "fast"): 92}
    assert not ledger and ledger.flush() == 0  # nothing left: a second flush writes nothing


def test_a_failure_settled_after_buffered_successes_is_kept_and_a_later_success_resets_it() -> None:
    a = account("a")
    ledger = Ledger()
    ledger.record_success("default", a.pk, "fast", 1, record_use=False)
    ledger.record_success("default", a.pk, "fast", 1, record_use=False)
    # The failure comes after those successes and is written at once, as leasing does it.
    with ledger.superseding("default", a.pk):
        settle("default", Settlement(a.pk, "fast", 1, Outcome.FAILURE, "upstream 502"))
    ledger.flush()
    a = Account.objects.get(pk=a.pk)
    assert (a.failure_count, a.last_error) == (1, "upstream 502")  # the older successes did not wipe it

    ledger.record_success("default", a.pk, "fast", 1, record_use=False)
    ledger.flush()
    a = Account.objects.get(pk=a.pk)
    assert (a.failure_count, a.last_error) == (0, "")  # this success is newer than the failure


def test_a_flush_whose_write_fails_keeps_its_entries_for_the_next_flush() -> None:
    if connection.vendor != "sqlite":
        pytest.skip("the refusing trigger is written for SQLite")
    a = account("a", failure_count=1, last_error="earlier")
    Quota.objects.create(account=a, mode="fast", remaining=10)
    ledger = Ledger()
    ledger.record_use("default", a.pk)
    ledger.record_success("default", a.pk, "fast", 3, record_use=False)
    with connection.cursor() as cursor:  # the database refuses every account update for now
        cursor.execute(
            "CREATE TRIGGER usage_test_refuse BEFORE UPDATE ON pools_account "
            "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        )
    try:
        with pytest.raises(DatabaseError, match="refused by the test"):
            ledger.flush()
        assert Quota.objects.get(account=a).remaining == 10  # one transaction: the debit rolled back too
        ledger.record_use("default", a.pk)  # recorded while the entries were out: both are kept
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TRIGGER usage_test_refuse")

    assert ledger.flush() == 1
    a = Account.objects.get(pk=a.pk)
    assert (a.use_count, a.failure_count, a.last_error) == (2, 0, "")
    assert Quota.objects.get(account=a).remaining == 7  # debited once, not once per attempt


# --- through leasing -----------------------------------------------------------------------------


@pytest.fixture
def local():
    """A local backend whose snapshot stays warm for the whole test (no re-read is due)."""
    backend = LocalBackend(using="default", roster_max_age=3600)
    leasing.use(backend)
    return backend


async def test_the_background_flusher_writes_pending_usage_without_an_explicit_flush(settings) -> None:
    settings.USAGE_FLUSH_INTERVAL = 0.05
    # The suite runs with no background flush (conftest): this loop's flusher, if an earlier
    # test started one, sleeps for an hour. The next record starts a fresh one at 0.05 s.
    sleeping = usage._flushers.pop(asyncio.get_running_loop(), None)
    if sleeping is not None:
        sleeping.cancel()
    a = await Account.objects.acreate(token="eyJa-secretpart", failure_count=2, last_error="earlier")
    held = await lease(FAST)
    await held.release(Outcome.SUCCESS)

    deadline = time.monotonic() + 10
    while True:
        row = await Account.objects.aget(pk=a.pk)
        if (row.use_count, row.failure_count, row.last_error) == (1, 0, ""):
            break
        assert time.monotonic() < deadline, f"not written after 10 s: {row.use_count=}, {row.failure_count=}"
        await asyncio.sleep(0.05)
    assert not usage.pending()


async def test_a_failure_after_buffered_successes_survives_the_flush(local) -> None:
    a = await Account.objects.acreate(token="eyJa-secretpart")
    for _ in range(2):
        await (await lease(FAST)).release(Outcome.SUCCESS)
    await (await lease(FAST)).release(Outcome.FAILURE, reason="upstream 502")
    await asettle_usage()
    a = await Account.objects.aget(pk=a.pk)
    assert (a.use_count, a.failure_count, a.last_error) == (3, 1, "upstream 502")

    await (await lease(FAST)).release(Outcome.SUCCESS)
    await asettle_usage()
    a = await Account.objects.aget(pk=a.pk)
    assert (a.use_count, a.failure_count, a.last_error) == (4, 0, "")


async def test_leasing_counts_debits_not_written_yet(local) -> None:
    a = await Account.objects.acreate(token="eyJa-secretpart", tier="super")
    await Quota.objects.acreate(account=a, mode="expert", remaining=9)
    for _ in range(2):  # 9 - 2 x 4 = 1 left, less than a call costs
        await (await lease(EXPERT)).release(Outcome.SUCCESS)
    with pytest.raises(AllAccountsCooling, match="used up its expert quota"):
        await lease(EXPERT)
    local.forget()  # a fresh read of the rows still counts what the ledger holds
    with pytest.raises(AllAccountsCooling, match="used up its expert quota"):
        await lease(EXPERT)
    await asettle_usage()
    assert (await Quota.objects.aget(account=a, mode="expert")).remaining == 1


def _start_capture() -> CaptureQueriesContext:
    captured = CaptureQueriesContext(connections["default"])
    captured.__enter__()
    return captured


async def _queries_of(work) -> list[str]:
    """The SQL `work()` runs through Django's sync thread: in a context of its own, that thread is ours alone."""
    async with ThreadSensitiveContext():
        captured = await sync_to_async(_start_capture)()
        try:
            await work()
        finally:
            await sync_to_async(captured.__exit__)(None, None, None)
    return [q["sql"] for q in captured.captured_queries]


async def test_a_lease_and_its_successful_release_query_no_database(local) -> None:
    a = await Account.objects.acreate(token="eyJa-secretpart")
    await Quota.objects.acreate(account=a, mode="fast", remaining=50)
    await (await lease(FAST)).release(Outcome.SUCCESS)  # warms the roster and the runtime settings

    async def serve() -> None:
        held = await lease(FAST)
        await held.release(Outcome.SUCCESS)

    async def fail() -> None:
        held = await lease(FAST)
        await held.release(Outcome.FAILURE, reason="upstream 502")

    assert await _queries_of(serve) == []
    assert any("UPDATE" in sql for sql in await _queries_of(fail))  # the same harness sees what does query
    await asettle_usage()
    a = await Account.objects.aget(pk=a.pk)
    assert a.use_count == 3 and (await Quota.objects.aget(account=a, mode="fast")).remaining == 48
