"""The leasing rule (`pools/leasing/rule.py`), one suite run against every backend.

The rule is written once in Python and restated in SQL (PostgreSQL backend) and Lua
(Redis backend); each test below runs on the local backend (SQLite), PostgreSQL and
Redis, so the three copies answer the same or a test fails. Each test is one clause
of the rule: who may serve a request, and who goes first.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest
from django.utils import timezone

from gateway.models import get_model
from pools import usage
from pools.models import Status
from pools.selection import AllAccountsCooling, NoEligibleAccount, Outcome, PoolBusy, lease
from tests.conftest import asettle_usage

pytest_plugins = ["tests.leasing_backends"]  # the `backend`, `cast` and `settings_` fixtures, per backend
pytestmark = [
    pytest.mark.django_db(transaction=True, databases=["default", "pg"], available_apps=["pools"]),
    pytest.mark.timeout(60),
]

FAST = get_model("grok-chat-fast")  # basic, mode fast, cost 1
AUTO = get_model("grok-chat-auto")  # super, mode auto, cost 1
EXPERT = get_model("grok-chat-expert")  # super, mode expert, cost 4
HEAVY = get_model("grok-chat-heavy")  # heavy, mode heavy, cost 4

HOUR = timedelta(hours=1)


def ago(seconds: float):
    return timezone.now() - timedelta(seconds=seconds)


async def lease_ids(model, n: int, **kwargs) -> list[int]:
    """Lease `n` times and keep every lease held."""
    return [(await lease(model, **kwargs)).account_id for _ in range(n)]


async def one_at_a_time(model, n: int) -> list[int]:
    """Lease `n` times, each released (successfully) before the next, as sequential requests are."""
    picked = []
    for _ in range(n):
        held = await lease(model)
        picked.append(held.account_id)
        await held.release(Outcome.SUCCESS)
    return picked


# --- eligibility: the account's status --------------------------------------------------------


async def test_an_active_account_serves(backend, cast) -> None:
    a = await cast.add(status=Status.ACTIVE)
    assert (await lease(FAST)).account_id == a.pk


async def test_a_cooling_account_serves_once_its_window_has_passed(backend, cast) -> None:
    passed = await cast.add(status=Status.COOLING, cooldown_until=ago(1))
    no_window = await cast.add(status=Status.COOLING, cooldown_until=None)
    assert sorted(await lease_ids(FAST, 2)) == [passed.pk, no_window.pk]


async def test_a_cooling_account_does_not_serve_while_its_window_runs(backend, cast) -> None:
    await cast.add(status=Status.COOLING, cooldown_until=timezone.now() + timedelta(seconds=60))
    with pytest.raises(AllAccountsCooling) as refused:
        await lease(FAST)
    assert 1 <= refused.value.retry_after <= 60  # when the window ends


async def test_expired_and_disabled_accounts_never_serve(backend, cast) -> None:
    await cast.add(status=Status.EXPIRED)
    await cast.add(status=Status.DISABLED)
    with pytest.raises(NoEligibleAccount, match="2 more expired or disabled"):
        await lease(FAST)
    active = await cast.add()
    assert await lease_ids(FAST, 3) == [active.pk] * 3


# --- eligibility: tier -----------------------------------------------------------------------


async def test_a_basic_model_is_served_by_super_and_heavy_accounts(backend, cast) -> None:
    sup = await cast.add(tier="super", max_concurrent=1)
    heavy = await cast.add(tier="heavy", max_concurrent=1)
    assert await lease_ids(FAST, 2) == [sup.pk, heavy.pk]


async def test_a_super_model_is_not_served_by_a_basic_account(backend, cast) -> None:
    await cast.add(tier="basic")
    with pytest.raises(NoEligibleAccount, match="no active super account for grok-chat-expert"):
        await lease(EXPERT)


# --- eligibility: exclusions -----------------------------------------------------------------


async def test_an_account_that_already_failed_the_request_is_skipped(backend, cast) -> None:
    a, b = await cast.add(), await cast.add()
    assert (await lease(FAST, exclude=[a.pk])).account_id == b.pk
    with pytest.raises(NoEligibleAccount, match="all 2 accounts able to serve grok-chat-fast failed"):
        await lease(FAST, exclude=[a.pk, b.pk])


# --- eligibility: the mode's quota and cooldown ------------------------------------------------


async def test_unknown_quota_serves_and_known_quota_serves_while_it_covers_the_cost(backend, cast) -> None:
    unknown = await cast.add(tier="super", max_concurrent=1)  # no quota row at all
    exact = await cast.add(tier="super", max_concurrent=1)
    short = await cast.add(tier="super", max_concurrent=1)
    await cast.quota(exact, "expert", remaining=4, resets_at=timezone.now() + HOUR)
    await cast.quota(short, "expert", remaining=3, resets_at=timezone.now() + HOUR)
    assert sorted(await lease_ids(EXPERT, 2)) == [unknown.pk, exact.pk]  # cost 4: 4 is enough, 3 is not


async def test_an_exhausted_quota_refuses_until_its_window_resets(backend, cast) -> None:
    a = await cast.add(tier="super")
    await cast.quota(a, "expert", remaining=0, resets_at=timezone.now() + timedelta(seconds=60))
    with pytest.raises(AllAccountsCooling) as refused:
        await lease(EXPERT)
    assert 1 <= refused.value.retry_after <= 60  # when the window resets


async def test_a_quota_window_that_has_reset_makes_a_zero_account_eligible_again(backend, cast) -> None:
    a = await cast.add(tier="super")
    await cast.quota(a, "expert", remaining=0, resets_at=ago(1))  # the count predates the reset
    assert (await lease(EXPERT)).account_id == a.pk


async def test_a_mode_cooldown_that_has_ended_makes_a_zero_account_eligible_again(backend, cast) -> None:
    a = await cast.add(tier="super")
    await cast.quota(a, "expert", remaining=0, cooldown_until=ago(1))  # zeroed by a 429 whose window ended
    assert (await lease(EXPERT)).account_id == a.pk


async def test_a_cooled_mode_does_not_block_another_mode_of_the_same_account(backend, cast) -> None:
    a = await cast.add(tier="super")
    await cast.quota(a, "expert", remaining=50, cooldown_until=timezone.now() + timedelta(seconds=60))
    with pytest.raises(AllAccountsCooling):
        await lease(EXPERT)
    assert (await lease(AUTO)).account_id == a.pk
    assert (await lease(FAST)).account_id == a.pk


async def test_debits_not_written_yet_count_against_the_quota(backend, cast) -> None:
    """Two cost-4 requests on 5 units left: the second is refused before the usage ledger writes anything."""
    a = await cast.add(tier="super")
    await cast.quota(a, "expert", remaining=5, resets_at=timezone.now() + HOUR)
    await (await lease(EXPERT)).release(Outcome.SUCCESS)
    assert usage.pending_debits(cast.using) == {a.pk: {"expert": 4}}  # not flushed
    with pytest.raises(AllAccountsCooling):
        await lease(EXPERT)
    await asettle_usage()
    assert (await cast.get_quota(a, "expert")).remaining == 1
    with pytest.raises(AllAccountsCooling):
        await lease(EXPERT)


async def test_debits_not_written_yet_count_in_the_order_too(backend, cast) -> None:
    a, b = await cast.add(tier="super"), await cast.add(tier="super")
    await cast.quota(a, "expert", remaining=50, resets_at=timezone.now() + HOUR)
    await cast.quota(b, "expert", remaining=48, resets_at=timezone.now() + HOUR)
    await (await lease(EXPERT)).release(Outcome.SUCCESS)  # `a`, the most quota left: 46 once written
    assert usage.pending_debits(cast.using) == {a.pk: {"expert": 4}}
    assert (await lease(EXPERT)).account_id == b.pk


# --- eligibility: in-flight limit -------------------------------------------------------------


async def test_an_account_holds_at_most_max_concurrent_leases(backend, cast, settings_) -> None:
    await settings_(queue_timeout=0.1)
    first = await cast.add(priority=1, max_concurrent=2)
    second = await cast.add(max_concurrent=1)
    held = [await lease(FAST) for _ in range(3)]
    assert [h.account_id for h in held] == [first.pk, first.pk, second.pk]
    assert await backend.in_flight() == {first.pk: 2, second.pk: 1}
    with pytest.raises(PoolBusy):
        await lease(FAST)
    await held[0].release(Outcome.SUCCESS)
    assert (await lease(FAST)).account_id == first.pk


async def test_the_runtime_default_limit_applies_when_max_concurrent_is_empty_or_0(backend, cast, settings_) -> None:
    await settings_(queue_timeout=0.1, account_max_concurrent=2)
    empty = await cast.add(priority=2, max_concurrent=None)
    zero = await cast.add(priority=1, max_concurrent=0)
    own = await cast.add(max_concurrent=3)
    assert Counter(await lease_ids(FAST, 7)) == {empty.pk: 2, zero.pk: 2, own.pk: 3}
    with pytest.raises(PoolBusy):
        await lease(FAST)


# --- order ------------------------------------------------------------------------------------


async def test_higher_priority_goes_first_before_anything_else(backend, cast) -> None:
    low = await cast.add(tier="basic")  # never used, unknown quota: first on every later key
    high = await cast.add(tier="super", priority=1, max_concurrent=2, last_used_at=timezone.now())
    await cast.quota(high, "fast", remaining=2, resets_at=timezone.now() + HOUR)
    assert await lease_ids(FAST, 3) == [high.pk, high.pk, low.pk]  # a full account stops serving


async def test_the_lowest_sufficient_tier_goes_first(backend, cast) -> None:
    heavy = await cast.add(tier="heavy")
    sup = await cast.add(tier="super")
    basic = await cast.add(tier="basic", last_used_at=timezone.now())  # used most recently, one lease held
    await cast.quota(basic, "fast", remaining=10, resets_at=timezone.now() + HOUR)
    assert await lease_ids(FAST, 2) == [basic.pk, basic.pk]  # super and heavy quota is scarcer
    assert (await lease(EXPERT)).account_id == sup.pk
    assert (await lease(HEAVY)).account_id == heavy.pk


async def test_fewer_leases_in_flight_go_first(backend, cast) -> None:
    rich = await cast.add()
    poor = await cast.add(last_used_at=timezone.now())
    await cast.quota(rich, "fast", remaining=50, resets_at=timezone.now() + HOUR)
    await cast.quota(poor, "fast", remaining=10, resets_at=timezone.now() + HOUR)
    # The richer account leads on quota, until it holds more leases than the other.
    assert await lease_ids(FAST, 4) == [rich.pk, poor.pk, rich.pk, poor.pk]


async def test_more_quota_left_goes_first_and_unknown_counts_as_plenty(backend, cast) -> None:
    low = await cast.add()
    high = await cast.add(last_used_at=ago(10))
    unknown = await cast.add(last_used_at=timezone.now())
    await cast.quota(low, "fast", remaining=10, resets_at=timezone.now() + HOUR)
    await cast.quota(high, "fast", remaining=50, resets_at=timezone.now() + HOUR)
    # One request at a time, each failing on the account it got: the order of its retries.
    tried: list[int] = []
    for _ in range(3):
        tried.append((await lease(FAST, exclude=tried)).account_id)
    assert tried == [unknown.pk, high.pk, low.pk]


async def test_a_quota_whose_window_has_reset_counts_as_plenty(backend, cast) -> None:
    stale = await cast.add(last_used_at=timezone.now())
    fresh = await cast.add()
    await cast.quota(stale, "fast", remaining=3, resets_at=ago(1))  # counted before its window reset
    await cast.quota(fresh, "fast", remaining=50, resets_at=timezone.now() + HOUR)
    assert (await lease(FAST)).account_id == stale.pk


async def test_the_least_recently_used_goes_first(backend, cast) -> None:
    older = await cast.add(last_used_at=ago(100))
    recent = await cast.add(last_used_at=ago(10))
    never = await cast.add()
    assert await one_at_a_time(FAST, 4) == [never.pk, older.pk, recent.pk, never.pk]


async def test_the_lowest_id_breaks_a_tie(backend, cast) -> None:
    same = timezone.now() - timedelta(seconds=5)
    a = await cast.add(last_used_at=same)
    await cast.add(last_used_at=same)
    assert (await lease(FAST)).account_id == a.pk
