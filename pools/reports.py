"""What the pools' background work says to operators: job messages and admin notices."""

from __future__ import annotations

from pools.probes import ProbePlan
from pools.quotas import RefreshResult

# Why a refresh failed, as `RefreshResult.kind` names it.
KIND_WORDS = {
    "auth": "rejected (401)",
    "banned": "banned",
    "blocked": "refused by Cloudflare or the proxy",
    "error": "errors",
    "missing": "no longer exist",
}


def refreshed(results: list[RefreshResult]) -> str:
    """`refreshed 12 accounts, 1 failed (1 rejected (401))`-style counts."""
    failed = [r for r in results if not r.ok]
    done = len(results) - len(failed)
    text = f"refreshed {done} account{'s' if done != 1 else ''}"
    if failed:
        kinds: dict[str, int] = {}
        for r in failed:
            kinds[r.kind] = kinds.get(r.kind, 0) + 1
        text += f", {len(failed)} failed ({', '.join(f'{n} {KIND_WORDS.get(k, k)}' for k, n in kinds.items())})"
    cooling = sum(1 for r in results if r.cooled_until)
    if cooling:
        text += f"; {cooling} out of quota in every mode"
    return text


def probed(plan: ProbePlan, results: list[RefreshResult]) -> str:
    """What a recovery probe round brought back."""
    back = sum(1 for r in results if r.ok and r.account_id not in plan.expired and not r.cooled_until)
    still = sum(1 for r in results if r.cooled_until)
    failed = sum(1 for r in results if not r.ok and r.account_id not in plan.expired)
    parts = [
        f"probed {len(results) - len(plan.expired)} cooled account(s) ({plan.cooled_modes} mode(s) past their window)",
        f"{back} in service",
        f"{still} still out of quota",
    ]
    if failed:
        parts.append(f"{failed} probe(s) failed")
    if plan.expired:
        revived = sum(1 for r in results if r.revived)
        parts.append(f"{revived} of {len(plan.expired)} expired account(s) back")
    return ", ".join(parts)
