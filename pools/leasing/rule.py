"""The leasing rule: which accounts may serve a request, and in which order. Its one source.

The Python below is the rule. The local and Redis backends evaluate it on the
roster's snapshot (`roster.py`). Two places cannot call Python, so the rule is
restated there, and the copies live here, under the Python they restate, with
comments that map each line back to it:
- the PostgreSQL backend decides in one statement on fresh rows (`SQL_*`, used
  by `postgres.py`), which is what keeps it correct across workers;
- the Redis backend counts leases in flight inside its Lua script, so the last
  step of the order is Lua (`LUA_ORDER`, used by `redis.py`).
`tests/test_leasing_rule.py` runs one behaviour suite against all three
backends: a change made here in one language and not the others fails it.

Eligibility, for a model of tier T, mode M and cost C (`Candidate.available_at`, `eligible`):
1. the account is usable: active, or cooling with an account-wide window that
   has passed (no window counts as passed): `AccountQuerySet.usable`; expired
   and disabled accounts never serve;
2. its tier is T or above (a heavy account serves super and basic models);
3. it is not excluded (it already failed this request);
4. its quota row for M, if any, has no cooldown running, and its `remaining`,
   less the debits this worker's usage ledger has not written yet, is unknown,
   or >= C, or stale: its window `resets_at` has passed, or the cooldown that
   zeroed it has ended (nothing stays limited after its window);
5. it has fewer leases in flight than its limit (`Candidate.limit`):
   `max_concurrent`, or the runtime `account_max_concurrent` when that is empty or 0.

Order, best first (`Candidate.order`; backends put the in-flight count after the tier):
highest priority, lowest sufficient tier (super quota is scarcer than basic),
fewest in flight, most quota left (unknown or stale counts as plenty), least
recently used (never used first), lowest id.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime

from pools.leasing.base import LeaseRequest
from pools.models import TIER_ORDER, Status

PLENTY = 2**31 - 1  # an unknown (or stale) quota counts as plenty when ordering
IN_ROTATION = frozenset({Status.ACTIVE.value, Status.COOLING.value})  # `AccountQuerySet.in_rotation`


def unix(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


@dataclass(frozen=True)
class QuotaView:
    """One quota row of a mode, in Unix seconds."""

    remaining: int | None
    cooldown_until: float | None
    resets_at: float | None

    def debited(self, units: int) -> QuotaView:
        """Less `units` used but not written yet (rule step 4); unknown stays unknown, never below 0."""
        if self.remaining is None or not units:
            return self
        return QuotaView(max(self.remaining - units, 0), self.cooldown_until, self.resets_at)


@dataclass
class Candidate:
    id: int
    token: str = field(repr=False)
    tier: str
    priority: int
    max_concurrent: int | None
    status: str
    cooldown_until: float | None  # the account-wide window (Unix seconds)
    last_used: float  # Unix seconds; 0 when never used
    quotas: dict[str, QuotaView] = field(default_factory=dict)  # with pending debits taken off (`debited`)

    @property
    def rank(self) -> int:
        return TIER_ORDER[self.tier]

    def limit(self, default: int) -> int:
        """Step 5: leases it may hold at once."""
        return self.max_concurrent or default

    def available_at(self, mode: str, cost: int, now: float) -> float:
        """Steps 1 and 4: 0 when it can serve now; else when it should be back (`inf`: not known)."""
        if self.status not in IN_ROTATION:
            return math.inf
        back = 0.0
        if self.status == Status.COOLING and self.cooldown_until is not None and self.cooldown_until > now:
            back = self.cooldown_until
        quota = self.quotas.get(mode)
        if quota is None:
            return back
        if quota.cooldown_until is not None and quota.cooldown_until > now:
            return max(back, quota.cooldown_until)
        if _exhausted(quota, cost, now):
            return max(back, quota.resets_at if quota.resets_at is not None else math.inf)
        return back

    def quota_left(self, mode: str, now: float) -> int:
        """The order's quota key: `remaining`, or PLENTY when unknown or stale."""
        quota = self.quotas.get(mode)
        if quota is None or quota.remaining is None:
            return PLENTY
        # `_stale`, inlined: the Redis backend asks this of every candidate on every lease.
        if (quota.resets_at is not None and quota.resets_at <= now) or (
            quota.cooldown_until is not None and quota.cooldown_until <= now
        ):
            return PLENTY
        return quota.remaining

    def order(self, mode: str, now: float) -> tuple:
        """The lease order before in-flight counts, which backends put after `rank`:
        (-priority, rank, [in flight], -quota_left, last_used, id), smallest first."""
        return (-self.priority, self.rank, -self.quota_left(mode, now), self.last_used, self.id)


def _stale(quota: QuotaView, now: float) -> bool:
    """The count was taken before its window reset, or before the cooldown that zeroed it ended."""
    return (quota.resets_at is not None and quota.resets_at <= now) or (
        quota.cooldown_until is not None and quota.cooldown_until <= now
    )


def _exhausted(quota: QuotaView, cost: int, now: float) -> bool:
    return quota.remaining is not None and quota.remaining < cost and not _stale(quota, now)


def eligible(candidates: list[Candidate], request: LeaseRequest, now: float, *, ordered: bool = True
             ) -> list[Candidate]:
    """Candidates able to serve `request` now (steps 1-4), in lease order (before in-flight counts) when `ordered`."""
    found = [
        c
        for c in candidates
        if c.rank >= TIER_ORDER[request.tier]  # step 2
        and c.id not in request.exclude  # step 3
        and c.available_at(request.mode, request.cost, now) == 0  # steps 1 and 4
    ]
    if ordered:
        found.sort(key=lambda c: c.order(request.mode, now))
    return found


# --- the rule in SQL (the PostgreSQL backend's LEASE_SQL) ----------------------------------------
#
# Rows: `a` the account, `q` its quota row for the mode (NULLs when it has none), `p` this
# worker's usage not written yet (NULLs when none): the Python reads the same through the roster,
# which takes pending debits off `remaining` and the backend's own later uses into `last_used`.
# Parameters: %(mode)s %(tiers)s (LeaseRequest.tiers) %(exclude)s %(cost)s %(default_limit)s, and
# %(pending_ids)s %(pending_units)s %(pending_used)s: parallel arrays of account id, unwritten debit
# of the mode, unwritten last use. `now()` is the statement's clock, as `now` is the Python's.

SQL_FROM = """
    pools_account a
    LEFT JOIN pools_quota q ON q.account_id = a.id AND q.mode = %(mode)s
    LEFT JOIN unnest(%(pending_ids)s::bigint[], %(pending_units)s::int[], %(pending_used)s::timestamptz[])
        AS p(account_id, units, used_at) ON p.account_id = a.id
"""

# QuotaView.debited: `remaining` less the unwritten debit, never below 0 (only read where it is not NULL).
_SQL_REMAINING = "GREATEST(q.remaining - COALESCE(p.units, 0), 0)"
# _stale: NULL (no such moment) counts as false, as `is not None and` does.
_SQL_STALE = "(q.resets_at <= now() OR q.cooldown_until <= now())"

SQL_ELIGIBLE = f"""
        (a.status = '{Status.ACTIVE.value}'                              -- step 1: usable: active, or a cooling
         OR (a.status = '{Status.COOLING.value}'                         --   account's window has passed
             AND (a.cooldown_until IS NULL OR a.cooldown_until <= now())))
    AND a.tier = ANY(%(tiers)s::text[])                                  -- step 2: c.rank >= rank of T
    AND NOT (a.id = ANY(%(exclude)s::bigint[]))                          -- step 3: c.id not in exclude
    AND (q.cooldown_until IS NULL OR q.cooldown_until <= now())          -- step 4: no mode cooldown running
    AND (q.remaining IS NULL                                             --   not _exhausted: unknown,
         OR {_SQL_REMAINING} >= %(cost)s                                 --   or enough after debits,
         OR {_SQL_STALE})                                                --   or stale
"""

SQL_LIMIT = "COALESCE(NULLIF(a.max_concurrent, 0), %(default_limit)s)"  # Candidate.limit: `max_concurrent or default`
SQL_RANK = "CASE a.tier " + " ".join(f"WHEN '{t}' THEN {r}" for t, r in TIER_ORDER.items()) + " END"  # .rank
SQL_QUOTA_LEFT = (  # Candidate.quota_left
    f"CASE WHEN q.remaining IS NULL OR {_SQL_STALE} THEN {PLENTY} ELSE {_SQL_REMAINING} END"
)
SQL_LAST_USED = "GREATEST(a.last_used_at, p.used_at)"  # the later of the row and this worker's unwritten use

# The columns SQL_ORDER sorts by, for a SELECT over SQL_FROM; `inflight` is the backend's count.
SQL_COLUMNS = (
    f"a.id, a.priority, {SQL_RANK} AS rank, {SQL_LAST_USED} AS last_used, {SQL_LIMIT} AS lim, "
    f"{SQL_QUOTA_LEFT} AS quota_left"
)
SQL_ORDER = (  # Candidate.order with the in-flight count after rank; never used (NULL) = 0, first
    "priority DESC, rank, inflight, quota_left DESC, last_used ASC NULLS FIRST, id"
)

# --- the order in Lua (the Redis backend's LEASE_LUA) ---------------------------------------------
#
# The script gets the eligible candidates in the Python's lease order (`eligible`) with each one's
# priority, rank, limit, quota_left and last use, counts its leases in flight, and keeps the one
# whose order is `less` than the rest's. Its last use is the latest lease through Redis, in
# milliseconds: two leases within one millisecond tie there, so the last key is the candidate's
# place in the Python's order, which ends as the rule does (the snapshot's last use, then the id).

LUA_ORDER = """
-- Candidate.order with the in-flight count after rank; compared with `less`, smallest first.
local function lease_order(priority, rank, count, quota_left, used, place)
  return {-priority,    -- highest priority
          rank,         -- lowest sufficient tier
          count,        -- fewest in flight
          -quota_left,  -- most quota left (PLENTY when unknown or stale)
          used,         -- least recently used (ms; 0: never)
          place}        -- then the Python's order: its last use, then the lowest id
end
local function less(a, b)
  for k = 1, #a do
    if a[k] ~= b[k] then return a[k] < b[k] end
  end
  return false
end
"""
