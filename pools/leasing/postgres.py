"""Leases as `pools_leaserecord` rows in PostgreSQL: one statement per lease, correct across workers.

Each account has `limit` numbered slots; a lease is the row whose `key` is
`"<account id>:<slot>"`. The unique index on `key` is what enforces the limit:
two workers that pick the same free slot both INSERT it, and `ON CONFLICT`
(which always sees the latest committed row, whatever the statement's snapshot)
lets exactly one of them have it. A counted `INSERT … WHERE count < limit`
would not be safe in READ COMMITTED: two statements can count the same snapshot.
A slot whose lease expired (its worker died) is taken over by the same
`ON CONFLICT … DO UPDATE … WHERE expires_at <= now()`.

`created_at` is stamped with `clock_timestamp()` on every take-over and serves
as the holder's proof: release and renewal match `(key, created_at)`, so a
holder whose lease expired and was taken over cannot free or extend the new one.

The one statement (`LEASE_SQL`) picks the best eligible account (the rule of
`rule.py`, in its SQL copy), a random free slot on it, and takes the slot. It
returns the grant, or nothing plus how many accounts were eligible and how many
had a free slot: 0 eligible means "explain", free slots but no grant means
another worker won the slot (retry at once), no free slot means "busy" (wait).

The statement writes no account row: the use goes to the usage ledger
(`pools.usage`) after the grant, as in the local backend, so account rows are
written in one place. What this worker's ledger holds and has not written yet,
quota debits of the mode and last uses, goes into the statement as arrays, so a
quota spent a moment ago is not leased again and least-recently-used sees the
last lease. Other workers' unwritten uses reach it within a flush interval.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.db import connections

from pools import usage
from pools.leasing.base import Grant, LeaseRequest, Refusal, Ticket
from pools.leasing.rule import SQL_COLUMNS, SQL_ELIGIBLE, SQL_FROM, SQL_ORDER

RACE_RETRIES = 5  # statements to try when other workers keep winning the slot we picked

LEASE_SQL = f"""
WITH cand AS (
    SELECT {SQL_COLUMNS}
    FROM {SQL_FROM}
    WHERE {SQL_ELIGIBLE}
),
held AS (
    SELECT l.account_id, count(*) AS n
    FROM pools_leaserecord l
    WHERE l.account_id IN (SELECT id FROM cand) AND l.expires_at > now()
    GROUP BY l.account_id
),
free AS (
    SELECT c.*, COALESCE(h.n, 0) AS inflight
    FROM cand c LEFT JOIN held h ON h.account_id = c.id
    WHERE COALESCE(h.n, 0) < c.lim  -- the rule's step 5
),
best AS (
    SELECT id, lim FROM free
    ORDER BY {SQL_ORDER}
    LIMIT 1
),
slot AS (
    SELECT b.id AS account_id, b.id::text || ':' || s.n AS key
    FROM best b CROSS JOIN LATERAL generate_series(0, b.lim - 1) AS s(n)
    WHERE NOT EXISTS (
        SELECT 1 FROM pools_leaserecord l WHERE l.key = b.id::text || ':' || s.n AND l.expires_at > now())
    ORDER BY random()
    LIMIT 1
),
taken AS (
    INSERT INTO pools_leaserecord AS l (key, account_id, expires_at, created_at)
    SELECT key, account_id, now() + make_interval(secs => %(ttl)s), clock_timestamp() FROM slot
    ON CONFLICT (key) DO UPDATE
        SET account_id = EXCLUDED.account_id, expires_at = EXCLUDED.expires_at, created_at = EXCLUDED.created_at
        WHERE l.expires_at <= now()
    RETURNING l.key, l.account_id, l.created_at
)
SELECT a.id, a.token, a.tier, taken.key, taken.created_at,
       (SELECT count(*) FROM cand), (SELECT count(*) FROM free)
FROM (SELECT 1) AS one LEFT JOIN taken ON TRUE LEFT JOIN pools_account a ON a.id = taken.account_id
"""

RENEW_SQL = (
    "UPDATE pools_leaserecord SET expires_at = now() + make_interval(secs => %s) WHERE key = %s AND created_at = %s"
)
RELEASE_SQL = "DELETE FROM pools_leaserecord WHERE key = %s AND created_at = %s"
IN_FLIGHT_SQL = "SELECT account_id, count(*) FROM pools_leaserecord WHERE expires_at > now() GROUP BY account_id"


class PostgresBackend:
    name = "postgres"
    records_use_on_release = False  # recorded in the usage ledger at the grant
    poll_interval = 0.1

    def __init__(self, using: str = "default", ttl: float = 60.0) -> None:
        self.using = using
        self.ttl = ttl

    def _run(self, sql: str, params: Any) -> tuple[list[tuple], int]:
        with connections[self.using].cursor() as cursor:
            cursor.execute(sql, params)
            return (cursor.fetchall() if cursor.description else []), cursor.rowcount

    async def _execute(self, sql: str, params: Any) -> tuple[list[tuple], int]:
        return await sync_to_async(self._run, thread_sensitive=True)(sql, params)

    async def acquire(self, request: LeaseRequest, ticket: Ticket | None) -> Grant | Refusal:
        params = {
            "default_limit": request.default_limit, "mode": request.mode, "cost": request.cost,
            "tiers": request.tiers, "exclude": sorted(request.exclude), "ttl": self.ttl,
        }
        for _ in range(RACE_RETRIES):
            rows, _ = await self._execute(LEASE_SQL, {**params, **self._unwritten(request.mode)})
            account_id, token, tier, key, stamp, eligible, free = rows[0]
            if account_id is not None:
                usage.record_use(self.using, account_id)
                return Grant(key, account_id, token, tier, stamp)
            if not eligible:
                return Refusal.NONE
            if not free:
                return Refusal.BUSY
        return Refusal.BUSY  # others kept winning: wait in line like everyone else

    def _unwritten(self, mode: str) -> dict[str, list]:
        """This worker's usage not written yet, as LEASE_SQL's parallel `pending_*` arrays."""
        debits, uses = usage.pending_debits(self.using), usage.pending_uses(self.using)
        ids = sorted(uses.keys() | {pk for pk, modes in debits.items() if mode in modes})
        return {
            "pending_ids": ids,
            "pending_units": [debits.get(pk, {}).get(mode, 0) for pk in ids],
            "pending_used": [uses.get(pk) for pk in ids],
        }

    async def renew(self, grant: Grant) -> bool:
        _, count = await self._execute(RENEW_SQL, [self.ttl, grant.key, grant.stamp])
        return count == 1

    async def release(self, grant: Grant) -> None:
        await self._execute(RELEASE_SQL, [grant.key, grant.stamp])

    async def withdraw(self, ticket: Ticket, request: LeaseRequest) -> None:
        return None  # waiters are ordered per worker only

    async def in_flight(self) -> dict[int, int]:
        rows, _ = await self._execute(IN_FLIGHT_SQL, [])
        return {account_id: n for account_id, n in rows}

    def forget(self, account_id: int | None = None) -> None:
        return None  # every lease reads fresh rows

    def debit(self, account_id: int, mode: str, cost: int) -> None:
        return None
