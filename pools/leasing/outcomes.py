"""What a lease's outcome does to its account and quota rows, and why no account could be leased.

Both are sync functions for `sync_to_async(thread_sensitive=True)`: each runs as
one transaction of conditional UPDATEs, so concurrent releases in any number of
workers never overwrite each other's counters. Leasing settles only the outcomes
that can change eligibility here; a SUCCESS goes through the usage ledger
(`pools.usage`), which writes the same changes in batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from pools import usage
from pools.leasing.base import AllAccountsCooling, LeaseRequest, NoEligibleAccount, Outcome, PoolError
from pools.leasing.rule import Candidate, QuotaView, unix
from pools.models import Account, Quota


@dataclass(frozen=True)
class Settlement:
    """One lease's end, as `Lease.release` hands it over."""

    account_id: int
    mode: str
    cost: int
    outcome: Outcome
    reason: str = ""
    retry_after: float | None = None
    record_use: bool = False  # the backend leaves `last_used_at`/`use_count` to the release
    failure_threshold: int = 1
    cooldown_seconds: float = 300.0


# Outcomes after which the account is, or may be, no longer eligible: cached rosters re-read.
CHANGES_ELIGIBILITY = {Outcome.RATE_LIMITED, Outcome.EXPIRED, Outcome.BANNED}


def settle(using: str, s: Settlement) -> None:
    """Write what the outcome means for the account (`AccountQuerySet` / `QuotaQuerySet` state changes)."""
    now = timezone.now()
    accounts = Account.objects.using(using).filter(pk=s.account_id)
    quotas = Quota.objects.using(using)
    use = {"last_used_at": now, "use_count": F("use_count") + 1} if s.record_use else {}
    with transaction.atomic(using=using):
        if s.outcome is Outcome.SUCCESS:
            accounts.succeeded(**use)
            quotas.filter(account_id=s.account_id, mode=s.mode).debit(s.cost)
        elif s.outcome is Outcome.FAILURE:
            accounts.failed(s.reason or "request failed", **use)
        elif s.outcome is Outcome.RATE_LIMITED:
            seconds = s.retry_after if s.retry_after and s.retry_after > 0 else s.cooldown_seconds
            if accounts.noted(s.reason or f"rate limited by Grok (429) for {s.mode}", **use):
                quotas.cool(s.account_id, s.mode, now + timedelta(seconds=seconds))
        elif s.outcome is Outcome.EXPIRED:
            accounts.rejected(s.reason or "expired: Grok rejected the token (401)", s.failure_threshold, **use)
        elif s.outcome is Outcome.BANNED:
            accounts.banned(s.reason or "refused by Grok", **use)
        elif use:
            accounts.update(**use)


def explain(using: str, request: LeaseRequest, cooldown_seconds: float) -> PoolError | None:
    """Why nothing is eligible for `request`; None when something is after all (a stale read: try again)."""
    now = timezone.now()
    model, tier = request.model_id, request.tier
    serving = Account.objects.using(using).filter(tier__in=request.tiers)
    in_rotation = serving.in_rotation()
    if not in_rotation.exists():
        out = serving.count()
        aside = f" ({out} more expired or disabled: see the admin)" if out else ""
        return NoEligibleAccount(
            f"no active {tier} account for {model}{aside}: import one with `manage.py import_tokens FILE --type {tier}`"
        )
    others = list(in_rotation.exclude(pk__in=request.exclude).values_list("id", "status", "cooldown_until"))
    if not others:
        n = in_rotation.count()
        return NoEligibleAccount(f"all {n} account{'s' if n != 1 else ''} able to serve {model} failed on this request")
    # Debits of successes the usage ledger has not written yet count, as they do in every backend.
    unwritten = usage.pending_debits(using)
    quotas = {
        account_id: QuotaView(remaining, unix(cooldown), unix(resets)).debited(
            unwritten.get(account_id, {}).get(request.mode, 0)
        )
        for account_id, remaining, cooldown, resets in Quota.objects.using(using)
        .filter(account_id__in=[row[0] for row in others], mode=request.mode)
        .values_list("account_id", "remaining", "cooldown_until", "resets_at")
    }
    moment = now.timestamp()
    backs = []
    for account_id, status, cooldown in others:
        # The rule's own answer (`pools.leasing.rule`): when this account is back, 0 if it is now.
        candidate = Candidate(account_id, "", tier, 0, None, status, unix(cooldown), 0.0)
        if account_id in quotas:
            candidate.quotas[request.mode] = quotas[account_id]
        backs.append(candidate.available_at(request.mode, request.cost, moment))
    soonest = min(backs)
    if soonest == 0:
        return None
    if math.isinf(soonest):
        retry_after = max(1, math.ceil(cooldown_seconds))
        return AllAccountsCooling(
            f"every account able to serve {model} has used up its {request.mode} quota; "
            f"retry in {retry_after} s or refresh quotas in the admin",
            retry_after=retry_after,
        )
    retry_after = max(1, math.ceil(soonest - moment))
    return AllAccountsCooling(
        f"every account able to serve {model} is cooling down after rate limits; retry in {retry_after} s",
        retry_after=retry_after,
    )
