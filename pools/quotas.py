"""Quota per account and mode, as Grok's `POST /rest/rate-limits` reports it (protocol §8).

`refresh_account(account_id, modes=None)` asks for each mode the account's tier
can use (basic: fast; super: fast, auto, expert; heavy: those and heavy) and
stores what Grok said in `pools.Quota`, one row per (account, mode):

- remaining > 0: the mode is in service; a cooldown on it, passed or not, ends
  (this is how a cooled mode comes back: the recovery probe calls it);
- remaining == 0: the mode cools down until its window resets
  (`resets_at` = now + `windowSizeSeconds`).

The account row follows its modes: when every mode of its tier is at zero it
cools down until the first of them resets; a cooling account with a mode that
has quota again is put back in rotation; an expired account that answers again
is active again (the opt-in expired-account probe relies on it). A 401 counts a
failure and expires the account at `auth_failure_threshold` failures in a row,
as leasing does; `blocked-user` disables it as banned; a Cloudflare refusal is
reported against the proxy, not the account. Nothing here raises for an
upstream error: it lands on the account's `last_error` and in the result.

Local debits between syncs are the leasing code's; this module only syncs.
The periodic job `quota_refresh` (`pools.schedule`) refreshes accounts whose rows are stale.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from asgiref.sync import sync_to_async
from django.db import DEFAULT_DB_ALIAS, transaction
from django.db.models import Count, Q
from django.utils import timezone

from gateway.grok import (
    GrokClient,
    QuotaParseError,
    Reading,
    UpstreamAuthError,
    UpstreamBanned,
    UpstreamBlocked,
    UpstreamError,
    UpstreamProxyFailed,
)
from pools import proxies, usage
from pools.models import Account, AccountQuerySet, Quota, Status, Tier
from pools.settings import Runtime, aget_runtime

logger = logging.getLogger(__name__)

MODES_BY_TIER: dict[str, tuple[str, ...]] = {
    Tier.BASIC: ("fast",),
    Tier.SUPER: ("fast", "auto", "expert"),
    Tier.HEAVY: ("fast", "auto", "expert", "heavy"),
}
MODE_ORDER = {"fast": 0, "auto": 1, "expert": 2, "heavy": 3}
CONCURRENCY = 8  # accounts probed at once
BATCH = 50  # accounts read and probed per round of a refresh
STALE_FRACTION = 0.9  # a row synced 0.9 interval ago is refreshed now rather than a whole interval late
PROBE_ERROR = "rate-limits probe"  # prefix of the errors this module writes on an account


@dataclass
class RefreshResult:
    """What one `refresh_account` call learnt and did."""

    account_id: int
    readings: dict[str, Reading] = field(default_factory=dict)
    error: str = ""
    kind: str = "ok"  # ok | auth | banned | blocked | error | missing
    revived: bool = False  # was expired, answers again
    resumed: bool = False  # was cooling, a mode has quota again
    cooled_until: datetime | None = None  # every mode at zero: cooling until then

    @property
    def ok(self) -> bool:
        return not self.error


def modes_for(tier: str) -> tuple[str, ...]:
    return MODES_BY_TIER.get(tier, MODES_BY_TIER[Tier.BASIC])


async def refresh_account(account_id: int, modes: Iterable[str] | None = None) -> RefreshResult:
    """Sync the account's quota for `modes` (default: every mode its tier can use). Never raises for upstream errors."""
    account = await Account.objects.filter(pk=account_id).only("id", "token", "tier", "status").afirst()
    if account is None:
        return RefreshResult(account_id, kind="missing", error="the account no longer exists")
    wanted = tuple(modes) if modes else modes_for(account.tier)
    runtime = await aget_runtime()
    result = RefreshResult(account_id)
    failure: Exception | None = None
    choice = None
    try:
        choice = await proxies.proxy_for(account_id)
        client = GrokClient(proxies.client_config(runtime, choice))
        for mode in wanted:
            result.readings[mode] = await client.rate_limits(account.token, mode)
    except (UpstreamError, QuotaParseError, proxies.ProxyError) as exc:
        failure = exc
    except Exception as exc:  # a bug must not stop a job's other accounts; it still shows on the account
        logger.exception("rate-limits probe of %s failed unexpectedly", account.masked_token)
        failure = exc
    if failure is not None:
        result.kind, result.error = _describe(failure)
        if isinstance(failure, UpstreamBlocked | UpstreamProxyFailed):
            await proxies.report_blocked(choice, str(failure))
    changes = await sync_to_async(_store, thread_sensitive=True)(
        account_id, result.readings, failure, result.error, timezone.now(), runtime
    )
    result.revived, result.resumed, result.cooled_until = changes
    if failure is not None:
        logger.info("quota refresh of %s: %s", account.masked_token, result.error)
    return result


def _describe(exc: Exception) -> tuple[str, str]:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, UpstreamBanned):
        return "banned", text
    if isinstance(exc, UpstreamAuthError):
        return "auth", "Grok rejected the token (HTTP 401)"
    if isinstance(exc, UpstreamBlocked | UpstreamProxyFailed | proxies.ProxyError):
        return "blocked", text
    if isinstance(exc, UpstreamError | QuotaParseError):
        return "error", text
    return "error", f"{type(exc).__name__}: {text}"


def _store(
    account_id: int,
    readings: dict[str, Reading],
    failure: Exception | None,
    error: str,
    now: datetime,
    runtime: Runtime,
) -> tuple[bool, bool, datetime | None]:
    """Write the readings and what they mean for the account, in one transaction."""
    revived = resumed = False
    cooled_until = None
    with usage.resyncing(DEFAULT_DB_ALIAS, account_id, readings), transaction.atomic():
        account = Account.objects.filter(pk=account_id).only("id", "tier", "status").first()
        if account is None:
            return revived, resumed, cooled_until
        quotas = Quota.objects.all()
        for mode, reading in readings.items():
            quotas.record_reading(account_id, mode, reading.remaining, reading.total, reading.window, now,
                                  runtime.cooldown_seconds)
        this: AccountQuerySet = Account.objects.filter(pk=account_id)
        if failure is not None:
            _record_failure(this, failure, error, runtime)
            if not readings:
                return revived, resumed, cooled_until
        else:
            this.succeeded()  # the token answered: failures in a row end here
            revived = bool(this.revive())
        if failure is not None and account.status == Status.EXPIRED:
            return revived, resumed, cooled_until
        cooled_until = quotas.spent_until(account_id, modes_for(account.tier), now)
        if cooled_until is not None:
            this.cool_down(cooled_until, "no quota left in any mode until the first window resets")
        elif any(r.remaining > 0 for r in readings.values()):
            resumed = bool(this.resume())
    return revived, resumed, cooled_until


def _record_failure(account: AccountQuerySet, failure: Exception, error: str, runtime: Runtime) -> None:
    reason = f"{PROBE_ERROR}: {error}"
    if isinstance(failure, UpstreamBanned):
        account.exclude(status=Status.DISABLED).banned(error)
    elif isinstance(failure, UpstreamAuthError):
        # As leasing counts a 401 (`AccountQuerySet.rejected`); an expired account teaches nothing new.
        account.exclude(status=Status.EXPIRED).rejected(f"expired: {reason}", runtime.auth_failure_threshold)
    else:
        account.noted(reason)  # not the account's fault (proxy, network, Grok down): shown, not counted


async def refresh_many(
    account_ids: Sequence[int],
    modes_by_account: dict[int, tuple[str, ...] | None] | None = None,
    *,
    on_batch: Callable[[list[RefreshResult]], Awaitable[None]] | None = None,
) -> list[RefreshResult]:
    """Refresh accounts `CONCURRENCY` at a time, `BATCH` per round; `on_batch` sees each round's results."""
    limit = asyncio.Semaphore(CONCURRENCY)
    modes_by_account = modes_by_account or {}

    async def one(account_id: int) -> RefreshResult:
        async with limit:
            return await refresh_account(account_id, modes_by_account.get(account_id))

    results: list[RefreshResult] = []
    for start in range(0, len(account_ids), BATCH):
        batch = await asyncio.gather(*(one(pk) for pk in account_ids[start : start + BATCH]))
        results.extend(batch)
        if on_batch is not None:
            await on_batch(batch)
    return results


def stale_accounts(interval: float, now: datetime) -> list[int]:
    """Accounts in rotation with a mode of their tier never synced, or synced over ~`interval` ago."""
    cutoff = now - timedelta(seconds=interval * STALE_FRACTION)
    fresh = {
        mode: Count("quotas", filter=Q(quotas__mode=mode, quotas__synced_at__gte=cutoff)) for mode in MODE_ORDER
    }
    rows = (
        Account.objects.in_rotation()
        .annotate(**{f"fresh_{mode}": count for mode, count in fresh.items()})
        .order_by("id")
        .values("id", "tier", *(f"fresh_{mode}" for mode in MODE_ORDER))
    )
    return [row["id"] for row in rows if any(not row[f"fresh_{mode}"] for mode in modes_for(row["tier"]))]


# --- after a 429 that named no window ---------------------------------------------

_followups: set[asyncio.Task] = set()  # referenced until done, so none is collected mid-flight


def learn_reset_soon(account_id: int, mode: str) -> None:
    """Ask Grok in the background when this mode's window resets, after a 429 without `Retry-After`.

    The 429 already cooled the mode for `cooldown_seconds`; if Grok's rate-limits say the
    quota is spent, the cooldown is stretched to the real reset. It is never shortened:
    the 429 is what Grok said last.
    """
    task = asyncio.get_running_loop().create_task(_learn_reset(account_id, mode), context=contextvars.Context())
    _followups.add(task)
    task.add_done_callback(_followups.discard)


async def wait_followups() -> None:
    """Tests: wait for the background follow-ups started so far."""
    while _followups:
        await asyncio.gather(*list(_followups), return_exceptions=True)


async def _learn_reset(account_id: int, mode: str) -> None:
    try:
        account = await Account.objects.filter(pk=account_id).only("id", "token").afirst()
        if account is None:
            return
        runtime = await aget_runtime()
        choice = await proxies.proxy_for(account_id)
        reading = await GrokClient(proxies.client_config(runtime, choice)).rate_limits(account.token, mode)
    except Exception as exc:  # a follow-up only improves a cooldown that is already in place
        logger.info("could not learn when %s resets after a 429: %s", mode, exc)
        return
    if reading.remaining > 0 or not reading.window:
        return
    await sync_to_async(Quota.objects.stretch_cooldown, thread_sensitive=True)(
        account_id, mode, reading.total, reading.window, timezone.now()
    )
