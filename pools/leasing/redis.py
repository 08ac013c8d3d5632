"""Leases in Redis: one Lua script call per lease, atomic across every worker and host.

Keys (prefix `grok2api:lease:`):
    acct:<id>            sorted set: lease key -> expiry (ms, Redis clock)
    last                 hash: account id -> when it was last leased (ms), for least-recently-used
    queue:<tier>:<mode>  sorted set: waiting worker line -> arrival of its oldest request (ms)
    seen:<tier>:<mode>   sorted set: waiting worker line -> when it last asked (ms)

The worker passes the eligible accounts (from its one-second roster) in ARGV;
the script, which Redis runs without interleaving anything else, counts each
account's unexpired leases (ZCOUNT from now: a dead worker's leases stop counting
at their expiry, and are purged when the account is next leased), picks the best
one under its limit and first in the lease order (`rule.LUA_ORDER`: priority,
tier, in flight, quota left, least recently used, id) and adds the lease.
Choice and claim are one atomic step, so there is no race to retry. It grants
only when more slots are free than older lines are waiting in other workers
(`queue.py`), and registers or refreshes the caller's line when it refuses.
"""

from __future__ import annotations

import asyncio
import time
import uuid
import weakref

import redis.asyncio as aredis
from redis.commands.core import AsyncScript

from pools import shared
from pools.leasing.base import Grant, LeaseRequest, Refusal, Ticket
from pools.leasing.roster import Roster
from pools.leasing.rule import LUA_ORDER

PREFIX = "grok2api:lease:"
STALE_MS = 3000  # a waiting line not refreshed for this long belongs to a dead worker

LEASE_LUA = LUA_ORDER + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local qkey, skey, lkey = KEYS[1], KEYS[2], KEYS[3]
local member, ttl, waiter = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local arrival, next_arrival, stale = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local width, base = 6, 6
local n = (#ARGV - base) / width

for _, dead in ipairs(redis.call('ZRANGEBYSCORE', skey, '-inf', now - stale)) do
  redis.call('ZREM', qkey, dead)
  redis.call('ZREM', skey, dead)
end
local ahead
if waiter == '' then
  ahead = redis.call('ZCARD', qkey)
else
  ahead = redis.call('ZCOUNT', qkey, '-inf', '(' .. arrival)
  local mine = redis.call('ZSCORE', qkey, waiter)
  if mine and tonumber(mine) < arrival then ahead = ahead - 1 end
end

local ids = {}
for i = 1, n do ids[i] = ARGV[base + (i - 1) * width + 1] end
local last = redis.call('HMGET', lkey, unpack(ids))

local free, best, best_order = 0, nil, nil
for i = 1, n do
  local at = base + (i - 1) * width
  local limit = tonumber(ARGV[at + 2])
  local count = redis.call('ZCOUNT', KEYS[3 + i], '(' .. now, '+inf')
  if count < limit then  -- rule step 5
    free = free + limit - count
    -- its last lease through Redis (any worker), else the snapshot's last use
    local used = tonumber(last[i]) or tonumber(ARGV[at + 6])
    local order = lease_order(tonumber(ARGV[at + 3]), tonumber(ARGV[at + 4]), count, tonumber(ARGV[at + 5]), used, i)
    if best == nil or less(order, best_order) then best, best_order = i, order end
  end
end

if best ~= nil and free > ahead then
  local akey = KEYS[3 + best]
  redis.call('ZREMRANGEBYSCORE', akey, '-inf', now)
  redis.call('ZADD', akey, now + ttl, member)
  redis.call('HSET', lkey, ids[best], now)
  if waiter ~= '' then
    if next_arrival > 0 then
      redis.call('ZADD', qkey, next_arrival, waiter)
      redis.call('ZADD', skey, now, waiter)
    else
      redis.call('ZREM', qkey, waiter)
      redis.call('ZREM', skey, waiter)
    end
  end
  return {tonumber(ids[best]), free}
end
if waiter ~= '' then
  redis.call('ZADD', qkey, arrival, waiter)
  redis.call('ZADD', skey, now, waiter)
end
return {0, free}
"""

RENEW_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) > now then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  return 1
end
redis.call('ZREM', KEYS[1], ARGV[1])
return 0
"""

WITHDRAW_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if tonumber(ARGV[2]) > 0 then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
  redis.call('ZADD', KEYS[2], now, ARGV[1])
else
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
end
return 1
"""


class RedisBackend:
    name = "redis"
    records_use_on_release = True  # keeps the lease at one Redis call: the use is counted at release
    poll_interval = 0.05

    def __init__(
        self, using: str = "default", ttl: float = 60.0, *, url: str | None = None, prefix: str = PREFIX,
        roster_max_age: float = 1.0,
    ) -> None:
        self.using = using
        self.ttl = ttl
        self.prefix = prefix
        self.roster = Roster(using, roster_max_age)
        self._url = url
        self._own: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # loop -> client, when `url` is ours
        self._scripts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # client -> scripts

    def client(self) -> aredis.Redis:
        """This event loop's client: the shared one (`REDIS_URL`), or our own for `url`."""
        if self._url is None:
            client = shared.async_redis()
            if client is None:
                raise RuntimeError("the Redis lease backend needs REDIS_URL")
            return client
        loop = asyncio.get_running_loop()
        if loop not in self._own:
            self._own[loop] = shared.connect_async(self._url)
        return self._own[loop]

    def _script(self, name: str) -> AsyncScript:
        client = self.client()
        scripts = self._scripts.get(client)
        if scripts is None:
            scripts = self._scripts[client] = {
                "lease": client.register_script(LEASE_LUA),
                "renew": client.register_script(RENEW_LUA),
                "withdraw": client.register_script(WITHDRAW_LUA),
            }
        return scripts[name]

    def _queue_keys(self, request: LeaseRequest) -> list[str]:
        return [f"{self.prefix}queue:{request.tier}:{request.mode}", f"{self.prefix}seen:{request.tier}:{request.mode}"]

    def _account_key(self, account_id: int) -> str:
        return f"{self.prefix}acct:{account_id}"

    async def acquire(self, request: LeaseRequest, ticket: Ticket | None) -> Grant | Refusal:
        candidates = await self.roster.eligible(request)
        if not candidates:
            return Refusal.NONE
        member = uuid.uuid4().hex
        now = time.time()
        args: list[str | int | float] = [
            member, int(self.ttl * 1000), ticket.member if ticket else "",
            ticket.arrival_ms if ticket else 0, ticket.next_arrival_ms if ticket else 0, STALE_MS,
        ]
        for c in candidates:
            args += [c.id, c.limit(request.default_limit), c.priority, c.rank, c.quota_left(request.mode, now),
                     int(c.last_used * 1000)]
        keys = [*self._queue_keys(request), f"{self.prefix}last", *(self._account_key(c.id) for c in candidates)]
        account_id, _free = await self._script("lease")(keys=keys, args=args)
        if not account_id:
            return Refusal.BUSY
        chosen = next(c for c in candidates if c.id == int(account_id))
        return Grant(member, chosen.id, chosen.token, chosen.tier)

    async def renew(self, grant: Grant) -> bool:
        renewed = await self._script("renew")(keys=[self._account_key(grant.account_id)],
                                              args=[grant.key, int(self.ttl * 1000)])
        return bool(renewed)

    async def release(self, grant: Grant) -> None:
        await self.client().zrem(self._account_key(grant.account_id), grant.key)

    async def withdraw(self, ticket: Ticket, request: LeaseRequest) -> None:
        await self._script("withdraw")(keys=self._queue_keys(request), args=[ticket.member, ticket.next_arrival_ms])

    async def in_flight(self) -> dict[int, int]:
        client = self.client()
        now_ms = int(time.time() * 1000)  # close enough for a report; leasing itself uses the Redis clock
        counts: dict[int, int] = {}
        async for key in client.scan_iter(match=f"{self.prefix}acct:*", count=500):
            n = await client.zcount(key, f"({now_ms}", "+inf")
            if n:
                counts[int(key.rsplit(":", 1)[1])] = n
        return counts

    def forget(self, account_id: int | None = None) -> None:
        self.roster.forget(account_id)

    def debit(self, account_id: int, mode: str, cost: int) -> None:
        self.roster.debit(account_id, mode, cost)
