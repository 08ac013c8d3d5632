"""Recovery probes: nothing stays "limited" after its window has passed.

The periodic job `recovery_probe` (`pools.schedule`, every `recovery_probe_interval`
seconds) asks Grok's rate-limits again, through `pools.quotas.refresh_many`, for

- every mode whose cooldown has passed (`Quota.cooldown_until <= now`): the mode
  comes back with its real counters, or its cooldown moves to the real reset;
- every account still marked cooling after its window (a cooldown leasing set
  without naming a mode): its tier's modes are synced, which puts it back or
  extends its cooldown;
- with `probe_expired_accounts` on, every expired account: one that answers
  200 is active again.

A probe that fails (Grok or the network down) changes no cooldown; a cooldown
that has passed already counts as usable for leasing, so a failing probe never
keeps an account out longer than its window.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from django.db.models import Q

from pools.models import Account, Quota, Status


@dataclass
class ProbePlan:
    """Which accounts to probe, and for which modes (None: every mode of the tier)."""

    modes: dict[int, tuple[str, ...] | None] = field(default_factory=dict)
    cooled_modes: int = 0
    expired: set[int] = field(default_factory=set)


def plan_probes(now: datetime, *, include_expired: bool) -> ProbePlan:
    plan = ProbePlan()
    rows = (
        Quota.objects.filter(cooldown_until__lte=now, account__in=Account.objects.in_rotation())
        .order_by("account_id", "mode")
        .values_list("account_id", "mode")
    )
    for account_id, mode in rows:
        plan.modes[account_id] = (*(plan.modes.get(account_id) or ()), mode)
        plan.cooled_modes += 1
    ended = Q(cooldown_until__isnull=True) | Q(cooldown_until__lte=now)
    for account_id in Account.objects.filter(ended, status=Status.COOLING).values_list("id", flat=True):
        plan.modes[account_id] = None  # the whole tier: the account-level cooldown names no mode
    if include_expired:
        for account_id in Account.objects.filter(status=Status.EXPIRED).values_list("id", flat=True):
            plan.modes[account_id] = None
            plan.expired.add(account_id)
    return plan
