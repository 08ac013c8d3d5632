"""Quotas: what rate-limits says lands in `Quota` rows, cooldowns follow it, probes bring modes back."""

from __future__ import annotations

from datetime import timedelta

import openai
import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from gateway.grok import QuotaParseError, Reading, parse_rate_limits
from gateway.models import get_model
from pools import selection, usage
from pools.jobs import run_job
from pools.models import Account, Quota, Status
from pools.quotas import refresh_account, stale_accounts
from pools.settings import update_runtime
from tests.multiworker import eventually

FAST = get_model("grok-chat-fast")


# --- both body shapes (§8.1) -------------------------------------------------------------


def test_it_reads_the_current_shape() -> None:
    body = {"windowSizeSeconds": 7200, "remainingQueries": 140, "totalQueries": 140,
            "lowEffortRateLimits": None, "highEffortRateLimits": None}
    assert parse_rate_limits(body) == Reading(remaining=140, total=140, window=7200)


def test_it_reads_the_older_shape() -> None:
    assert parse_rate_limits({"remainingTokens": 75, "totalTokens": 80}) == Reading(75, 80, None)
    assert parse_rate_limits({"remainingTokens": "3", "windowSizeSeconds": 72000}) == Reading(3, None, 72000)


def test_it_prefers_the_current_fields_in_the_union() -> None:
    body = {"windowSizeSeconds": 3600, "remainingQueries": 9, "totalQueries": 50,
            "remainingTokens": 99, "totalTokens": 990}
    assert parse_rate_limits(body) == Reading(9, 50, 3600)


def test_it_treats_a_zero_total_as_unknown_and_clamps_negatives() -> None:
    assert parse_rate_limits({"remainingQueries": -2, "totalQueries": 0, "windowSizeSeconds": 0}) == Reading(
        0, None, None
    )


@pytest.mark.parametrize("body", [{}, [], "140", {"remainingQueries": None, "totalQueries": 5},
                                  {"remainingQueries": True}])
def test_it_refuses_an_answer_without_counters(body) -> None:
    with pytest.raises(QuotaParseError):
        parse_rate_limits(body)


# --- refresh_account against the fake ----------------------------------------------------


async def add(token: str, tier: str = "basic", **fields: object) -> Account:
    return await Account.objects.acreate(token=token, tier=tier, **fields)


async def quotas(account: Account) -> dict[str, Quota]:
    return {q.mode: q async for q in Quota.objects.filter(account=account)}


async def test_it_stores_a_row_per_mode_of_the_tier(gateway, fake_grok) -> None:
    account = await add("quota-super-1", "super")
    fake_grok.set_quota("quota-super-1", "expert", 37, 50, 3600)

    result = await refresh_account(account.pk)

    assert result.ok and result.kind == "ok"
    asked = [r.json["modelName"] for r in fake_grok.requests("quota-super-1") if r.path == "/rest/rate-limits"]
    assert asked == ["fast", "auto", "expert"]
    rows = await quotas(account)
    assert set(rows) == {"fast", "auto", "expert"}
    expert = rows["expert"]
    assert (expert.remaining, expert.total, expert.window_seconds) == (37, 50, 3600)
    assert expert.resets_at - expert.synced_at == timedelta(seconds=3600)
    assert expert.cooldown_until is None
    assert (rows["fast"].remaining, rows["fast"].total, rows["fast"].window_seconds) == (140, 140, 7200)


async def test_it_asks_only_for_the_modes_given(gateway, fake_grok) -> None:
    account = await add("quota-heavy-1", "heavy")
    await refresh_account(account.pk, modes=["heavy"])
    assert set(await quotas(account)) == {"heavy"}
    assert [r.json["modelName"] for r in fake_grok.requests("quota-heavy-1")] == ["heavy"]


async def test_it_cools_a_mode_at_zero_until_its_window_resets(gateway, fake_grok) -> None:
    account = await add("quota-super-2", "super")
    fake_grok.set_quota("quota-super-2", "expert", 0, 50, 3600)

    result = await refresh_account(account.pk)

    expert = (await quotas(account))["expert"]
    assert expert.remaining == 0
    assert expert.cooldown_until == expert.resets_at == expert.synced_at + timedelta(seconds=3600)
    # The other modes still serve, so the account stays in rotation.
    assert result.cooled_until is None
    assert (await Account.objects.aget(pk=account.pk)).status == Status.ACTIVE


async def test_it_cools_the_account_when_every_mode_is_at_zero(gateway, fake_grok) -> None:
    account = await add("ratelimited-quota-1", "basic")  # the fake answers 0 for every mode

    result = await refresh_account(account.pk)

    fast = (await quotas(account))["fast"]
    assert fast.remaining == 0 and fast.cooldown_until == fast.resets_at
    account = await Account.objects.aget(pk=account.pk)
    assert account.status == Status.COOLING
    assert account.cooldown_until == fast.resets_at == result.cooled_until
    with pytest.raises(selection.AllAccountsCooling):
        await selection.lease(FAST)


async def test_it_counts_a_401_and_expires_at_the_threshold(gateway, runtime) -> None:
    await sync_to_async(runtime)(auth_failure_threshold=2)
    account = await add("expired-quota-1")

    first = await refresh_account(account.pk)
    account = await Account.objects.aget(pk=account.pk)
    assert first.kind == "auth" and not first.ok
    assert (account.status, account.failure_count) == (Status.ACTIVE, 1)
    assert "401" in account.last_error

    await refresh_account(account.pk)
    account = await Account.objects.aget(pk=account.pk)
    assert account.status == Status.EXPIRED
    assert account.last_error.startswith("expired:")


async def test_a_401_never_turns_a_disabled_account_into_an_expired_one(gateway) -> None:
    account = await add("expired-quota-2", status=Status.DISABLED)
    await refresh_account(account.pk)
    account = await Account.objects.aget(pk=account.pk)
    assert (account.status, account.failure_count) == (Status.DISABLED, 1)


async def test_it_takes_out_a_banned_account(gateway) -> None:
    account = await add("banned-quota-1")
    result = await refresh_account(account.pk)
    account = await Account.objects.aget(pk=account.pk)
    assert result.kind == "banned"
    assert account.status == Status.DISABLED
    assert account.last_error.startswith("banned:")


async def test_it_records_an_upstream_error_without_counting_it(gateway) -> None:
    account = await add("flaky-quota-1")
    result = await refresh_account(account.pk)  # 503: must not raise
    account = await Account.objects.aget(pk=account.pk)
    assert result.kind == "error" and "503" in result.error
    assert (account.status, account.failure_count) == (Status.ACTIVE, 0)
    assert account.last_error.startswith("rate-limits probe:")
    assert not await Quota.objects.filter(account=account).aexists()


async def test_it_reports_a_missing_account(gateway) -> None:
    result = await refresh_account(987654)
    assert (result.kind, result.ok) == ("missing", False)


# --- recovery ----------------------------------------------------------------------------


async def cooled(account: Account, mode: str, *, ago: float) -> None:
    """A `mode` row at zero whose cooldown ended `ago` seconds ago (negative: still to come)."""
    now = timezone.now()
    await Quota.objects.acreate(
        account=account, mode=mode, remaining=0, total=140, window_seconds=600,
        synced_at=now - timedelta(seconds=600 + ago), resets_at=now - timedelta(seconds=ago),
        cooldown_until=now - timedelta(seconds=ago),
    )


async def test_the_recovery_probe_returns_a_cooled_mode_to_service(gateway, fake_grok) -> None:
    account = await add("recover-1", "basic", status=Status.COOLING, cooldown_until=timezone.now())
    await cooled(account, "fast", ago=5)
    fake_grok.set_quota("recover-1", "fast", 100, 140, 7200)

    result = await run_job("recovery_probe")

    assert result.outcome == "ok", result.message
    fast = (await quotas(account))["fast"]
    assert (fast.remaining, fast.cooldown_until) == (100, None)
    account = await Account.objects.aget(pk=account.pk)
    assert (account.status, account.cooldown_until) == (Status.ACTIVE, None)
    assert "1 in service" in result.message


async def test_the_recovery_probe_extends_a_cooldown_to_the_real_reset(gateway, fake_grok) -> None:
    account = await add("recover-2", "super")
    await cooled(account, "expert", ago=5)
    fake_grok.set_quota("recover-2", "expert", 0, 50, 1800)

    await run_job("recovery_probe")

    expert = (await quotas(account))["expert"]
    assert expert.cooldown_until == expert.synced_at + timedelta(seconds=1800)
    assert expert.cooldown_until > timezone.now()
    # Only the cooled mode was asked about.
    assert [r.json["modelName"] for r in fake_grok.requests("recover-2")] == ["expert"]


async def test_the_recovery_probe_leaves_running_cooldowns_alone(gateway, fake_grok) -> None:
    account = await add("recover-3", "basic")
    await cooled(account, "fast", ago=-300)
    result = await run_job("recovery_probe")
    assert result.message == "nothing to probe"
    assert fake_grok.requests("recover-3") == []


async def test_a_stale_cooldown_cannot_outlive_its_window(gateway, fake_grok) -> None:
    # Cooling, its window passed, and Grok unreachable for the probe: still usable.
    account = await add("flaky-recover-4", "basic", status=Status.COOLING,
                        cooldown_until=timezone.now() - timedelta(seconds=1))
    await cooled(account, "fast", ago=1)

    result = await run_job("recovery_probe")

    assert result.outcome == "ok"  # an upstream error is recorded, never raised out of the job
    assert "1 probe(s) failed" in result.message
    account = await Account.objects.aget(pk=account.pk)
    assert account.last_error.startswith("rate-limits probe:")
    assert await Account.objects.usable(timezone.now()).filter(pk=account.pk).aexists()
    held = await selection.lease(FAST)
    assert held.account_id == account.pk
    await held.release(selection.Outcome.CANCELLED)


async def test_expired_accounts_are_probed_only_when_asked(gateway, fake_grok, runtime) -> None:
    works = await add("works-again-1", status=Status.EXPIRED, failure_count=1, last_error="expired: 401")
    still = await add("expired-still-1", status=Status.EXPIRED, failure_count=1, last_error="expired: 401")

    await run_job("recovery_probe")
    assert fake_grok.requests("works-again-1") == []

    await sync_to_async(runtime)(probe_expired_accounts=True)
    result = await run_job("recovery_probe")

    works = await Account.objects.aget(pk=works.pk)
    still = await Account.objects.aget(pk=still.pk)
    assert (works.status, works.failure_count, works.last_error) == (Status.ACTIVE, 0, "")
    assert (still.status, still.failure_count) == (Status.EXPIRED, 1)
    assert "1 of 2 expired account(s) back" in result.message


# --- the periodic refresh ----------------------------------------------------------------


async def test_the_refresh_job_syncs_only_stale_accounts(gateway, fake_grok) -> None:
    never = await add("refresh-never-1", "basic")
    fresh = await add("refresh-fresh-1", "basic")
    old = await add("refresh-old-1", "super")
    await add("refresh-off-1", "basic", status=Status.DISABLED)
    await add("expired-refresh-1", "basic", status=Status.EXPIRED)
    now = timezone.now()
    await Quota.objects.acreate(account=fresh, mode="fast", remaining=5, synced_at=now)
    for mode in ("fast", "auto"):
        await Quota.objects.acreate(account=old, mode=mode, remaining=5, synced_at=now)
    await Quota.objects.acreate(account=old, mode="expert", remaining=5, synced_at=now - timedelta(hours=1))

    interval = (await sync_to_async(update_runtime)(quota_refresh_interval=1800)).quota_refresh_interval
    assert await sync_to_async(stale_accounts)(interval, timezone.now()) == [never.pk, old.pk]

    result = await run_job("quota_refresh")

    assert result.outcome == "ok"
    assert result.message == "refreshed 2 accounts"
    tokens = {r.token for r in fake_grok.requests() if r.path == "/rest/rate-limits"}
    assert tokens == {"refresh-never-1", "refresh-old-1"}
    assert (await quotas(old))["expert"].remaining == 140
    assert await sync_to_async(stale_accounts)(interval, timezone.now()) == []


def _cooldown_left(token: str, mode: str = "fast") -> float | None:
    quota = Quota.objects.filter(account__token=token, mode=mode).first()
    if quota is None or quota.cooldown_until is None:
        return None
    return (quota.cooldown_until - timezone.now()).total_seconds()


def test_a_429_without_retry_after_learns_the_real_reset(client, pool, fake_grok) -> None:
    # An in-band "rate limit" names no window: the gateway asks Grok's rate-limits when this mode resets.
    pool.add("limit-1")
    fake_grok.set_quota("limit-1", "fast", 0, 140, 5400)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(
            model="grok-chat-fast", messages=[{"role": "user", "content": "[fake:inband-ratelimit]"}]
        )
    assert eventually(lambda: (_cooldown_left("limit-1") or 0) > 5300), _cooldown_left("limit-1")
    assert _cooldown_left("limit-1") <= 5400
    quota = Quota.objects.get(account__token="limit-1", mode="fast")
    assert quota.remaining == 0 and quota.window_seconds == 5400


def test_a_429_with_retry_after_is_taken_at_its_word(client, pool, fake_grok) -> None:
    pool.add("ratelimited-2")  # the fake answers 429 with Retry-After: 60
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="grok-chat-fast", messages=[{"role": "user", "content": "hi"}])
    assert eventually(lambda: _cooldown_left("ratelimited-2") is not None)
    assert _cooldown_left("ratelimited-2") <= 60
    assert not [r for r in fake_grok.requests("ratelimited-2") if r.path == "/rest/rate-limits"]


async def test_a_release_never_talks_to_grok(gateway, fake_grok) -> None:
    await Account.objects.acreate(token="limit-4", tier="basic")
    held = await selection.lease(get_model("grok-chat-fast"))
    await held.release(selection.Outcome.RATE_LIMITED, reason="usage limit")
    assert not [r for r in fake_grok.requests("limit-4") if r.path == "/rest/rate-limits"]


async def test_a_429_followup_never_shortens_the_cooldown(gateway, fake_grok) -> None:
    from pools.quotas import learn_reset_soon, wait_followups

    await Account.objects.acreate(token="limit-3", tier="basic")
    held = await selection.lease(get_model("grok-chat-fast"))
    await held.release(selection.Outcome.RATE_LIMITED, reason="usage limit")  # Grok still reports quota left
    before = (await Quota.objects.aget(account__token="limit-3", mode="fast")).cooldown_until
    learn_reset_soon(held.account_id, "fast")
    await wait_followups()
    quota = await Quota.objects.aget(account__token="limit-3", mode="fast")
    assert quota.cooldown_until == before > timezone.now()


async def test_a_reading_from_grok_replaces_the_debits_still_waiting_to_be_written(gateway, fake_grok) -> None:
    # Grok's count already includes the requests that finished before the sync: debiting
    # them again when the ledger flushes would count them twice.
    account = await add("quota-resync-1")
    fake_grok.set_quota("quota-resync-1", "fast", 90, 140, 7200)
    usage.record_success("default", account.pk, "fast", 4, record_use=False)
    usage.record_success("default", account.pk, "auto", 1, record_use=False)

    await refresh_account(account.pk, modes=["fast"])
    await usage.aflush()

    rows = await quotas(account)
    assert rows["fast"].remaining == 90  # not 86
    assert usage.pending("default") == {}  # the auto debit was written (there is no auto row to debit)
