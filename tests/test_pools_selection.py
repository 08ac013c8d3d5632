"""Leasing: which account serves a request, and what its outcome does to the account."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta

import pytest
from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.utils import timezone

from gateway.models import get_model
from pools.models import Account, Quota, Status
from pools.selection import (
    AllAccountsCooling,
    NoEligibleAccount,
    Outcome,
    PoolError,
    available_tiers,
    lease,
)
from pools.settings import update_runtime
from tests.conftest import asettle_usage

pytestmark = pytest.mark.django_db(transaction=True)

FAST = get_model("grok-chat-fast")  # basic
EXPERT = get_model("grok-chat-expert")  # super
HEAVY = get_model("grok-chat-heavy")  # heavy


async def make(n: int = 1, **fields: object) -> list[Account]:
    fields.setdefault("tier", "basic")
    created = []
    for _ in range(n):
        index = await Account.objects.acount()
        created.append(await Account.objects.acreate(token=f"eyJtoken{index:04d}secretpart", **fields))
    return created


async def fresh(account: Account) -> Account:
    return await Account.objects.aget(pk=account.pk)


async def test_it_rotates_least_recently_used() -> None:
    a, b, c = await make(3)
    picked = [(await lease(FAST)).account_id for _ in range(6)]
    assert picked == [a.pk, b.pk, c.pk, a.pk, b.pk, c.pk]


async def test_it_marks_the_account_used() -> None:
    (a,) = await make()
    held = await lease(FAST)
    await asettle_usage()
    a = await fresh(a)
    assert a.use_count == 1
    assert a.last_used_at is not None
    assert held.token == a.token
    assert held.tier == "basic"
    assert held.masked_token == a.masked_token
    assert a.token not in repr(held)


async def test_it_prefers_the_lowest_sufficient_tier() -> None:
    (heavy,) = await make(tier="heavy")
    (sup,) = await make(tier="super")
    (basic,) = await make(tier="basic")
    assert (await lease(FAST)).account_id == basic.pk
    assert (await lease(EXPERT)).account_id == sup.pk
    assert (await lease(HEAVY)).account_id == heavy.pk


async def test_it_prefers_the_lowest_tier_even_when_used_more_recently() -> None:
    await make(tier="super")
    (basic,) = await make(tier="basic", last_used_at=timezone.now())
    assert (await lease(FAST)).account_id == basic.pk
    assert (await lease(FAST)).account_id == basic.pk


async def test_it_serves_a_lower_tier_model_with_a_higher_tier_account() -> None:
    (sup,) = await make(tier="super")
    held = await lease(FAST)
    assert held.account_id == sup.pk
    assert held.tier == "super"


async def test_it_skips_expired_and_disabled_accounts() -> None:
    await make(status=Status.EXPIRED)
    await make(status=Status.DISABLED)
    (ok,) = await make()
    for _ in range(3):
        assert (await lease(FAST)).account_id == ok.pk


async def test_it_skips_cooling_accounts_until_their_window_passes() -> None:
    (a,) = await make(status=Status.COOLING, cooldown_until=timezone.now() + timedelta(minutes=5))
    with pytest.raises(AllAccountsCooling):
        await lease(FAST)

    await Account.objects.filter(pk=a.pk).aupdate(cooldown_until=timezone.now() - timedelta(seconds=1))
    assert (await lease(FAST)).account_id == a.pk
    a = await fresh(a)
    assert a.status == Status.ACTIVE
    assert a.cooldown_until is None


async def test_it_ends_passed_cooldowns_of_accounts_it_does_not_pick() -> None:
    (basic,) = await make()
    (sup,) = await make(
        tier="super", status=Status.COOLING, cooldown_until=timezone.now() - timedelta(seconds=1)
    )
    assert (await lease(FAST)).account_id == basic.pk
    assert (await fresh(sup)).status == Status.ACTIVE


async def test_it_says_when_to_retry_when_all_accounts_cool_down() -> None:
    now = timezone.now()
    await make(status=Status.COOLING, cooldown_until=now + timedelta(seconds=30))
    await make(status=Status.COOLING, cooldown_until=now + timedelta(seconds=90))
    await make(status=Status.EXPIRED)
    with pytest.raises(AllAccountsCooling) as info:
        await lease(FAST)
    assert 28 <= info.value.retry_after <= 30
    assert "grok-chat-fast" in str(info.value)
    assert isinstance(info.value, PoolError)


async def test_it_names_the_tier_and_model_when_no_account_can_serve() -> None:
    await make(tier="basic")
    with pytest.raises(NoEligibleAccount) as info:
        await lease(EXPERT)
    message = str(info.value)
    assert "no active super account for grok-chat-expert" in message
    assert "import_tokens FILE --type super" in message


async def test_it_mentions_expired_accounts_in_the_message() -> None:
    await make(2, tier="super", status=Status.EXPIRED)
    with pytest.raises(NoEligibleAccount, match="2 more expired or disabled"):
        await lease(EXPERT)


async def test_it_raises_no_eligible_account_on_an_empty_pool() -> None:
    with pytest.raises(NoEligibleAccount, match="no active basic account for grok-chat-fast"):
        await lease(FAST)


async def test_it_honours_exclude() -> None:
    a, b = await make(2)
    assert (await lease(FAST, exclude=[a.pk])).account_id == b.pk
    assert (await lease(FAST, exclude={a.pk})).account_id == b.pk


async def test_it_says_every_account_failed_when_all_are_excluded() -> None:
    a, b = await make(2)
    with pytest.raises(NoEligibleAccount, match="all 2 accounts able to serve grok-chat-fast failed"):
        await lease(FAST, exclude=[a.pk, b.pk])


async def test_it_reports_cooling_when_the_rest_are_excluded() -> None:
    (a,) = await make()
    await make(status=Status.COOLING, cooldown_until=timezone.now() + timedelta(seconds=10))
    with pytest.raises(AllAccountsCooling) as info:
        await lease(FAST, exclude=[a.pk])
    assert 1 <= info.value.retry_after <= 10


async def test_it_uses_an_account_created_after_the_first_lease() -> None:
    (a,) = await make()
    assert (await lease(FAST)).account_id == a.pk
    (b,) = await make()
    assert (await lease(FAST)).account_id == b.pk


async def test_it_spreads_concurrent_leases_evenly() -> None:
    await sync_to_async(update_runtime)(account_max_concurrent=10)  # 50 leases held at once on 5 accounts
    accounts = await make(5)
    leases = await asyncio.gather(*(lease(FAST) for _ in range(50)))
    assert Counter(held.account_id for held in leases) == {a.pk: 10 for a in accounts}
    await asettle_usage()
    counts = [a.use_count async for a in Account.objects.all()]
    assert counts == [10] * 5


async def test_it_stays_correct_across_threads() -> None:
    # Like ASGI requests, each lease runs its ORM work in its own thread and connection.
    await sync_to_async(update_runtime)(account_max_concurrent=5)  # 20 leases held at once on 4 accounts
    accounts = await make(4)

    async def one() -> int:
        async with ThreadSensitiveContext():
            return (await lease(FAST)).account_id

    picked = await asyncio.gather(*(one() for _ in range(20)))
    assert Counter(picked) == {a.pk: 5 for a in accounts}
    await asettle_usage()
    assert [a.use_count async for a in Account.objects.all()] == [5] * 4


async def test_it_resets_failures_on_success() -> None:
    (a,) = await make(failure_count=2, last_error="boom")
    held = await lease(FAST)
    await held.release(Outcome.SUCCESS)
    await asettle_usage()
    a = await fresh(a)
    assert (a.failure_count, a.last_error, a.status) == (0, "", Status.ACTIVE)


async def test_it_counts_failures() -> None:
    (a,) = await make()
    held = await lease(FAST)
    await held.release(Outcome.FAILURE, reason="upstream 502")
    a = await fresh(a)
    assert (a.failure_count, a.last_error, a.status) == (1, "upstream 502", Status.ACTIVE)


async def test_it_cools_a_rate_limited_account_for_the_window_given() -> None:
    (a,) = await make()
    held = await lease(FAST)
    await held.release(Outcome.RATE_LIMITED, reason="429 from grok", retry_after=120)
    a = await fresh(a)
    quota = await Quota.objects.aget(account=a, mode=FAST.mode)  # the cooldown is per mode now
    assert a.last_error == "429 from grok"
    remaining = (quota.cooldown_until - timezone.now()).total_seconds()
    assert 110 < remaining <= 120


async def test_it_cools_for_the_runtime_default_without_a_window() -> None:
    (a,) = await make()
    held = await lease(FAST)
    await sync_to_async(update_runtime)(cooldown_seconds=42)
    await held.release(Outcome.RATE_LIMITED)
    a = await fresh(a)
    quota = await Quota.objects.aget(account=a, mode=FAST.mode)  # the cooldown is per mode now
    remaining = (quota.cooldown_until - timezone.now()).total_seconds()
    assert 35 < remaining <= 42
    assert "rate limited" in a.last_error


async def test_it_takes_an_expired_account_out_of_rotation() -> None:
    a, b = await make(2)
    held = await lease(FAST)
    await held.release(Outcome.EXPIRED, reason="401: token expired")
    a = await fresh(a)
    assert (a.status, a.last_error, a.failure_count) == (Status.EXPIRED, "401: token expired", 1)
    assert [(await lease(FAST)).account_id for _ in range(2)] == [b.pk, b.pk]


async def test_it_disables_a_banned_account() -> None:
    (a,) = await make()
    held = await lease(FAST)
    await held.release(Outcome.BANNED, reason="account suspended")
    a = await fresh(a)
    assert (a.status, a.last_error) == (Status.DISABLED, "banned: account suspended")
    with pytest.raises(NoEligibleAccount):
        await lease(FAST)


async def test_it_records_nothing_for_a_cancelled_request() -> None:
    (a,) = await make(failure_count=1, last_error="earlier")
    held = await lease(FAST)
    await held.release(Outcome.CANCELLED)
    a = await fresh(a)
    assert (a.status, a.failure_count, a.last_error) == (Status.ACTIVE, 1, "earlier")
    assert held.released


async def test_it_releases_only_once() -> None:
    (a,) = await make()
    held = await lease(FAST)
    await held.release(Outcome.FAILURE, reason="first")
    await held.release(Outcome.FAILURE, reason="second")
    await held.release(Outcome.EXPIRED)
    a = await fresh(a)
    assert (a.failure_count, a.last_error, a.status) == (1, "first", Status.ACTIVE)


async def test_it_releases_when_leaving_an_async_with_block() -> None:
    (a,) = await make(failure_count=3)
    async with await lease(FAST):
        pass
    await asettle_usage()
    assert (await fresh(a)).failure_count == 0

    with pytest.raises(RuntimeError):
        async with await lease(FAST):
            raise RuntimeError("stream broke")
    a = await fresh(a)
    assert (a.failure_count, a.last_error) == (1, "RuntimeError: stream broke")


async def test_it_survives_releasing_a_deleted_account() -> None:
    (a,) = await make()
    held = await lease(FAST)
    await Account.objects.filter(pk=a.pk).adelete()
    await held.release(Outcome.FAILURE, reason="gone")
    assert held.released


async def test_it_lists_available_tiers() -> None:
    assert await available_tiers() == set()
    await make(tier="heavy", status=Status.EXPIRED)
    await make(tier="super", status=Status.COOLING, cooldown_until=timezone.now() + timedelta(minutes=1))
    await make(tier="basic")
    assert await available_tiers() == {"basic"}
    await make(tier="super", status=Status.COOLING, cooldown_until=timezone.now() - timedelta(seconds=1))
    assert await available_tiers() == {"basic", "super"}


async def test_it_counts_a_heavy_account_as_serving_every_tier() -> None:
    await make(tier="heavy")
    assert await available_tiers() == {"basic", "super", "heavy"}
