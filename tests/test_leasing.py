"""Leasing through each backend (in-process, PostgreSQL rows, Redis), one worker: the same rules everywhere.

Accounts live in SQLite for the local backend and in the `pg` database for the
other two (Redis holds only the leases), as in the deployments they stand for.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter, defaultdict
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.db import connections
from django.utils import timezone

from gateway.models import get_model
from pools import leasing
from pools.leasing.base import LeaseRequest
from pools.leasing.local import LocalBackend
from pools.leasing.postgres import PostgresBackend
from pools.leasing.queue import Lines, wait_for_slot
from pools.leasing.redis import RedisBackend
from pools.models import Account, Quota, Status
from pools.selection import AllAccountsCooling, NoEligibleAccount, Outcome, PoolBusy, PoolError, lease
from pools.settings import update_runtime
from tests.conftest import asettle_usage

pytestmark = [
    # Only the pools tables are flushed between tests: truncating every table of two databases is slow.
    pytest.mark.django_db(transaction=True, databases=["default", "pg"], available_apps=["pools"]),
    pytest.mark.timeout(60),
]
REDIS_TEST_URL = "redis://127.0.0.1:6379/15"

FAST = get_model("grok-chat-fast")  # basic, mode fast, cost 1
EXPERT = get_model("grok-chat-expert")  # super, mode expert, cost 4


@pytest.fixture(params=["local", "postgres", "redis"])
async def build(request):
    """`build(ttl=…)`: a fresh backend of the parametrised kind, installed as the one `lease()` uses."""
    made: list = []

    def build(ttl: float = 60.0):
        if request.param == "local":
            backend = LocalBackend(using="default", ttl=ttl)
        elif request.param == "postgres":
            backend = PostgresBackend(using="pg", ttl=ttl)
        else:
            # Keys of our own: other runs (cluster tests) share this Redis db.
            backend = RedisBackend(using="pg", ttl=ttl, url=REDIS_TEST_URL, prefix=f"test:{uuid.uuid4().hex}:")
        made.append(backend)
        leasing.use(backend)
        return backend

    yield build
    await asettle_usage()  # before the connections close: a later flush would open one again
    for backend in made:
        if isinstance(backend, RedisBackend):
            client = backend.client()
            keys = [key async for key in client.scan_iter(match=f"{backend.prefix}*")]
            if keys:
                await client.delete(*keys)
            await client.aclose()
    # The ORM ran in asgiref's worker thread: close its connections, or the test database cannot be dropped.
    await sync_to_async(connections.close_all, thread_sensitive=True)()


@pytest.fixture
def backend(build):
    return build()


@pytest.fixture
def settings_(transactional_db):
    async def change(**values: object) -> None:
        await sync_to_async(update_runtime)(**values)

    return change


class Cast:
    """Accounts in the backend's database: `await cast.add(tier="super", priority=2)`."""

    def __init__(self, using: str) -> None:
        self.using = using
        self.n = 0

    async def add(self, **fields: object) -> Account:
        fields.setdefault("tier", "basic")
        self.n += 1
        return await Account.objects.using(self.using).acreate(token=f"eyJtoken{self.n:04d}secretpart", **fields)

    async def get(self, account: Account) -> Account:
        return await Account.objects.using(self.using).aget(pk=account.pk)

    async def quota(self, account: Account, mode: str, **fields: object) -> Quota:
        return await Quota.objects.using(self.using).acreate(account=account, mode=mode, **fields)

    async def get_quota(self, account: Account, mode: str) -> Quota:
        return await Quota.objects.using(self.using).aget(account=account, mode=mode)


@pytest.fixture
def cast(backend) -> Cast:
    return Cast(backend.using)


async def test_it_orders_by_priority_then_the_lowest_sufficient_tier(backend, cast) -> None:
    sup = await cast.add(tier="super")
    basic = await cast.add(tier="basic", max_concurrent=1)
    first = await cast.add(tier="heavy", priority=5, max_concurrent=2)
    held = [await lease(FAST) for _ in range(4)]
    # Priority wins until that account is full; then basic before super (super quota is scarcer).
    assert [h.account_id for h in held] == [first.pk, first.pk, basic.pk, sup.pk]


async def test_it_prefers_fewer_in_flight_then_more_quota_then_least_recently_used(backend, cast) -> None:
    now = timezone.now()
    old = await cast.add(last_used_at=now - timedelta(seconds=100))
    recent = await cast.add(last_used_at=now - timedelta(seconds=10))
    never = await cast.add()
    assert [(await lease(FAST)).account_id for _ in range(3)] == [never.pk, old.pk, recent.pk]

    rich, poor, unknown = await cast.add(), await cast.add(), await cast.add()
    await cast.quota(rich, "fast", remaining=50)
    await cast.quota(poor, "fast", remaining=10)
    # The three above each hold one lease now: the fresh accounts go first, unknown quota counting as plenty.
    assert [(await lease(FAST)).account_id for _ in range(3)] == [unknown.pk, rich.pk, poor.pk]


async def test_it_keeps_each_account_under_its_in_flight_limit(backend, cast, settings_) -> None:
    await settings_(queue_timeout=0.2, account_max_concurrent=2)
    a = await cast.add()
    b = await cast.add(max_concurrent=1)
    held = [await lease(FAST) for _ in range(3)]
    assert Counter(h.account_id for h in held) == {a.pk: 2, b.pk: 1}
    assert await backend.in_flight() == {a.pk: 2, b.pk: 1}
    with pytest.raises(PoolBusy) as info:
        await lease(FAST)
    assert info.value.retry_after >= 1 and isinstance(info.value, PoolError)
    assert "grok-chat-fast" in str(info.value)
    await next(h for h in held if h.account_id == b.pk).release(Outcome.SUCCESS)
    assert (await lease(FAST)).account_id == b.pk


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


async def test_a_cooldown_whose_window_passed_never_blocks(backend, cast) -> None:
    past = timezone.now() - timedelta(seconds=1)
    a = await cast.add(status=Status.COOLING, cooldown_until=past)  # a stale account-wide "cooling"
    await cast.quota(a, "fast", remaining=0, cooldown_until=past)  # zeroed by a 429 whose window ended
    assert (await lease(FAST)).account_id == a.pk


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
