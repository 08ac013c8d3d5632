"""Leasing through each backend (in-process, PostgreSQL rows, Redis), one worker: queueing, TTLs, renewal,
outcomes and races, the same everywhere. Which account may serve and in which order is
`tests/test_leasing_rule.py`.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict

import pytest
from django.utils import timezone

from gateway.models import get_model
from pools import leasing
from pools.leasing.base import LeaseRequest
from pools.leasing.queue import Lines, wait_for_slot
from pools.models import Account, Status
from pools.selection import AllAccountsCooling, NoEligibleAccount, Outcome, PoolBusy, lease
from tests.conftest import asettle_usage

pytest_plugins = ["tests.leasing_backends"]  # the `build`, `backend`, `cast` and `settings_` fixtures
pytestmark = [
    # Only the pools tables are flushed between tests: truncating every table of two databases is slow.
    pytest.mark.django_db(transaction=True, databases=["default", "pg"], available_apps=["pools"]),
    pytest.mark.timeout(60),
]

FAST = get_model("grok-chat-fast")  # basic, mode fast, cost 1
EXPERT = get_model("grok-chat-expert")  # super, mode expert, cost 4


async def test_a_waiting_request_gets_the_next_free_slot_first_come_first_served(backend, cast, settings_) -> None:
    await settings_(queue_timeout=20)
    a = await cast.add(max_concurrent=1)
    held = await lease(FAST)
    served: list[str] = []

    async def wait(name: str):
        got = await lease(FAST)
        served.append(name)
        return got

    first = asyncio.create_task(wait("first"))
    await asyncio.sleep(0.05)
    second = asyncio.create_task(wait("second"))
    await asyncio.sleep(0.2)
    assert not first.done() and not second.done()
    await held.release(Outcome.SUCCESS)
    got = await first
    assert got.account_id == a.pk and served == ["first"]
    await got.release(Outcome.SUCCESS)
    await (await second).release(Outcome.SUCCESS)
    assert served == ["first", "second"]
    assert await backend.in_flight() == {}


async def test_a_cancelled_waiter_leaves_the_queue(backend, cast, settings_) -> None:
    await settings_(queue_timeout=20)
    a = await cast.add(max_concurrent=1)
    held = await lease(FAST)
    gone = asyncio.create_task(lease(FAST))
    await asyncio.sleep(0.05)
    stays = asyncio.create_task(lease(FAST))
    await asyncio.sleep(0.2)
    gone.cancel()  # the client left
    await asyncio.gather(gone, return_exceptions=True)
    assert leasing.lines().waiting() == 1
    await held.release(Outcome.CANCELLED)
    got = await asyncio.wait_for(stays, 10)
    assert got.account_id == a.pk
    assert await backend.in_flight() == {a.pk: 1}  # nothing leased for the request that left
    await got.release(Outcome.SUCCESS)
    assert leasing.lines().waiting() == 0
    assert await backend.in_flight() == {}


async def test_a_429_cools_only_that_mode_and_for_the_window_given(backend, cast) -> None:
    a = await cast.add(tier="super")
    held = await lease(EXPERT)
    await held.release(Outcome.RATE_LIMITED, reason="429 from grok", retry_after=60)
    quota = await cast.get_quota(a, "expert")
    assert quota.remaining == 0 and 55 < (quota.cooldown_until - timezone.now()).total_seconds() <= 60
    a = await cast.get(a)
    assert (a.status, a.last_error) == (Status.ACTIVE, "429 from grok")
    with pytest.raises(AllAccountsCooling) as info:
        await lease(EXPERT)
    assert 55 <= info.value.retry_after <= 60
    assert (await lease(FAST)).account_id == a.pk  # the fast mode is still in service


async def test_it_debits_quota_and_skips_an_account_at_zero(backend, cast) -> None:
    a = await cast.add(tier="super")
    await cast.quota(a, "expert", remaining=9)
    for left in (5, 1):
        held = await lease(EXPERT)
        await held.release(Outcome.SUCCESS)
        await asettle_usage()
        assert (await cast.get_quota(a, "expert")).remaining == left
    with pytest.raises(AllAccountsCooling, match="used up its expert quota"):
        await lease(EXPERT)  # 1 left, the model costs 4
    b = await cast.add(tier="super")
    assert (await lease(EXPERT)).account_id == b.pk


async def test_a_lease_nobody_renews_frees_its_slot_after_the_ttl(build, cast, settings_) -> None:
    backend = build(ttl=0.5)
    await settings_(queue_timeout=10)
    a = await cast.add(max_concurrent=1)
    # A worker that died holding the slot: it was granted, and nobody renews or releases it.
    request = LeaseRequest(FAST.id, FAST.tier, FAST.mode, FAST.cost)
    orphan = await backend.acquire(request, None)
    assert orphan.account_id == a.pk
    got = await lease(FAST)  # waits in line until the orphan expires
    assert got.account_id == a.pk
    assert await backend.in_flight() == {a.pk: 1}
    assert not await backend.renew(orphan)  # the dead holder cannot take it back


async def test_renewal_keeps_a_long_lease_alive(build, cast, settings_) -> None:
    backend = build(ttl=0.4)
    await settings_(queue_timeout=0.1)
    a = await cast.add(max_concurrent=1)
    held = await lease(FAST)
    await asyncio.sleep(1.5)  # several TTLs
    assert await backend.in_flight() == {a.pk: 1}
    with pytest.raises(PoolBusy):
        await lease(FAST)
    await held.release(Outcome.SUCCESS)
    assert (await lease(FAST)).account_id == a.pk


async def test_releasing_twice_never_frees_another_lease(backend, cast) -> None:
    a = await cast.add(max_concurrent=1)
    first = await lease(FAST)
    await first.release(Outcome.FAILURE, reason="first")
    second = await lease(FAST)  # the same account, the same slot
    await first.release(Outcome.FAILURE, reason="again")
    assert await backend.in_flight() == {a.pk: 1}
    assert (await cast.get(a)).failure_count == 1
    await second.release(Outcome.SUCCESS)
    assert await backend.in_flight() == {}


async def test_every_outcome_is_recorded_and_state_changes_apply_at_once(backend, cast, settings_) -> None:
    await settings_(auth_failure_threshold=2)
    a, b = await cast.add(), await cast.add()
    for expected in (a, b):
        held = await lease(FAST)
        assert held.account_id == expected.pk
        await held.release(Outcome.SUCCESS)
    await asettle_usage()
    assert [x.use_count for x in (await cast.get(a), await cast.get(b))] == [1, 1]

    held = await lease(FAST, exclude=[b.pk])
    await held.release(Outcome.EXPIRED, reason="401 once")
    assert ((await cast.get(a)).status, (await cast.get(a)).failure_count) == (Status.ACTIVE, 1)
    held = await lease(FAST, exclude=[b.pk])
    await held.release(Outcome.EXPIRED, reason="401 twice")
    assert (await cast.get(a)).status == Status.EXPIRED  # at the threshold
    assert {(await lease(FAST)).account_id for _ in range(3)} == {b.pk}  # out of rotation at once

    held = await lease(FAST)
    await held.release(Outcome.BANNED, reason="blocked-user")
    b = await cast.get(b)
    assert (b.status, b.last_error) == (Status.DISABLED, "banned: blocked-user")
    with pytest.raises(NoEligibleAccount, match="no active basic account"):
        await lease(FAST)


async def test_a_cancelled_request_still_counts_as_a_use_and_nothing_else(backend, cast) -> None:
    a = await cast.add(failure_count=1, last_error="earlier")
    await (await lease(FAST)).release(Outcome.CANCELLED)
    await asettle_usage()
    a = await cast.get(a)
    assert (a.use_count, a.failure_count, a.last_error) == (1, 1, "earlier")


@pytest.mark.parametrize("build", ["local", "redis"], indirect=True)
async def test_an_old_snapshot_serves_at_once_while_it_is_read_again_behind(build, cast) -> None:
    backend = build()
    backend.roster.max_age = 0.05
    a = await cast.add(priority=1)
    b = await cast.add()
    await (await lease(FAST)).release(Outcome.SUCCESS)  # reads the rows: `a` first
    # Changed behind this process's back (no signal): only a re-read shows it.
    await Account.objects.using(cast.using).filter(pk=b.pk).aupdate(priority=5)
    await asyncio.sleep(0.1)  # the snapshot is older than its max age now
    held = await lease(FAST)
    assert held.account_id == a.pk  # answered from the old snapshot, not after a read
    await held.release(Outcome.SUCCESS)
    deadline = asyncio.get_running_loop().time() + 10
    while (got := await lease(FAST)).account_id != b.pk:  # the re-read behind lands
        await got.release(Outcome.SUCCESS)
        assert asyncio.get_running_loop().time() < deadline, "the old snapshot was never read again"
        await asyncio.sleep(0.02)
    await got.release(Outcome.SUCCESS)


async def test_an_account_added_while_serving_is_used_at_once(backend, cast) -> None:
    a = await cast.add()
    assert (await lease(FAST)).account_id == a.pk
    b = await cast.add()
    assert (await lease(FAST)).account_id == b.pk


async def test_it_explains_an_empty_or_exhausted_pool(backend, cast) -> None:
    with pytest.raises(NoEligibleAccount, match="no active basic account for grok-chat-fast"):
        await lease(FAST)
    a, b = await cast.add(), await cast.add()
    with pytest.raises(NoEligibleAccount, match="all 2 accounts able to serve grok-chat-fast failed"):
        await lease(FAST, exclude=[a.pk, b.pk])
    with pytest.raises(NoEligibleAccount, match="no active super account for grok-chat-expert"):
        await lease(EXPERT)


async def test_many_concurrent_leases_never_exceed_a_limit_nor_leak(backend, cast, settings_) -> None:
    await settings_(queue_timeout=30)
    accounts = [await cast.add(max_concurrent=2) for _ in range(3)]
    now: Counter[int] = Counter()
    peak: defaultdict[int, int] = defaultdict(int)

    async def one() -> None:
        held = await lease(FAST)
        now[held.account_id] += 1
        peak[held.account_id] = max(peak[held.account_id], now[held.account_id])
        await asyncio.sleep(random.uniform(0, 0.01))
        now[held.account_id] -= 1
        await held.release(random.choice([Outcome.SUCCESS, Outcome.CANCELLED, Outcome.FAILURE]))

    await asyncio.gather(*(one() for _ in range(150)))
    assert set(peak) == {a.pk for a in accounts}
    assert max(peak.values()) <= 2
    assert await backend.in_flight() == {}
    assert leasing.lines().waiting() == 0


@pytest.mark.parametrize("build", ["redis"], indirect=True)
async def test_a_slot_freed_in_one_worker_goes_to_the_request_waiting_longest_in_another(build, cast) -> None:
    # Two workers on one Redis: their own lines, one shared queue. The worker that frees the
    # slot wakes its own waiter at once, yet the older waiter of the other worker gets it.
    here, there = build(), build()
    there.prefix = here.prefix
    here_lines, there_lines = Lines(), Lines()
    a = await cast.add(max_concurrent=1)
    request = LeaseRequest(FAST.id, FAST.tier, FAST.mode, FAST.cost)
    held = await wait_for_slot(here, here_lines, request, 1)
    assert held.account_id == a.pk
    older = asyncio.create_task(wait_for_slot(there, there_lines, request, 20))
    await asyncio.sleep(0.2)
    newer = asyncio.create_task(wait_for_slot(here, here_lines, request, 20))
    await asyncio.sleep(0.2)
    await here.release(held)
    here_lines.wake_heads()
    first = await asyncio.wait_for(older, 10)
    assert first.account_id == a.pk and not newer.done()
    await there.release(first)
    there_lines.wake_heads()
    assert (await asyncio.wait_for(newer, 10)).account_id == a.pk
