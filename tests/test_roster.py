"""The roster's eligibility answers: computed once per snapshot, and never served past a change."""

from __future__ import annotations

import time

from pools.leasing.base import LeaseRequest
from pools.leasing.roster import Roster
from pools.leasing.rule import Candidate, QuotaView

REQUEST = LeaseRequest(model_id="grok-chat-fast", tier="basic", mode="fast", cost=2)


def roster_of(*candidates: Candidate) -> Roster:
    roster = Roster()
    roster._install(list(candidates), generation=roster._generation)
    return roster


def candidate(pk: int, **quota: object) -> Candidate:
    c = Candidate(pk, f"tok-{pk}", "basic", 0, None, "active", None, 0.0)
    if quota:
        c.quotas["fast"] = QuotaView(**{"remaining": None, "cooldown_until": None, "resets_at": None, **quota})
    return c


def ids(found: list[Candidate]) -> list[int]:
    return sorted(c.id for c in found)


def test_an_unordered_answer_is_reused_until_the_snapshot_changes() -> None:
    roster = roster_of(candidate(1), candidate(2))
    first = roster._eligible(REQUEST, ordered=False)
    assert roster._eligible(REQUEST, ordered=False) is first  # no scan per lease
    roster._install([candidate(3)], generation=roster._generation)
    assert ids(roster._eligible(REQUEST, ordered=False)) == [3]


def test_an_answer_ends_when_a_cooldown_it_counted_on_ends() -> None:
    roster = roster_of(candidate(1), candidate(2, cooldown_until=time.time() + 0.2))
    assert ids(roster._eligible(REQUEST, ordered=False)) == [1]
    time.sleep(0.25)
    assert ids(roster._eligible(REQUEST, ordered=False)) == [1, 2]


def test_a_debit_that_leaves_too_little_for_a_cost_asked_ends_the_answer() -> None:
    roster = roster_of(candidate(1, remaining=3), candidate(2))
    assert ids(roster._eligible(REQUEST, ordered=False)) == [1, 2]
    roster.debit(1, "fast", 2)  # 1 left: no longer affords a cost of 2
    assert ids(roster._eligible(REQUEST, ordered=False)) == [2]


def test_retries_are_computed_every_time_and_first_attempts_share_one_answer_in_lease_order() -> None:
    roster = roster_of(candidate(1, remaining=5), candidate(2, remaining=9), candidate(3))
    retry = LeaseRequest(model_id="grok-chat-fast", tier="basic", mode="fast", cost=2, exclude=frozenset({1}))
    assert ids(roster._eligible(retry, ordered=False)) == [2, 3]
    assert roster._eligible(retry, ordered=True) is not roster._eligible(retry, ordered=True)
    answer = roster._eligible(REQUEST, ordered=True)
    assert [c.id for c in answer] == [3, 2, 1]  # unknown quota counts as plenty, then the most left
    assert roster._eligible(REQUEST, ordered=False) is answer


# --- the local backend's pick, against weighing every account ------------------------------


def test_the_local_pick_equals_weighing_every_account_through_a_run_of_leases_and_releases() -> None:
    """`_pick` weighs only what changed since the snapshot; it must choose what weighing all would."""
    import random

    from pools.leasing.local import LocalBackend

    rng = random.Random(5)
    now = time.time()
    pool = []
    for pk in range(1, 81):
        c = Candidate(pk, f"tok-{pk}", rng.choice(["basic", "super"]), rng.choice([0, 0, 0, 1]),
                      rng.choice([None, None, 1, 2]), "active", None, rng.choice([0.0, now - rng.uniform(1, 900)]))
        shape = rng.random()
        if shape < 0.3:
            c.quotas["fast"] = QuotaView(rng.randint(2, 50), None, now + 3600)
        elif shape < 0.4:
            c.quotas["fast"] = QuotaView(rng.randint(2, 50), None, now - 10)  # a window that passed: plenty
        pool.append(c)
    roster = roster_of(*pool)
    backend = LocalBackend(roster_max_age=3600)
    backend.roster = roster
    request = LeaseRequest(model_id="grok-chat-fast", tier="basic", mode="fast", cost=2, default_limit=2)
    held: list[tuple[int, str]] = []
    for step in range(600):
        answer = roster._eligible(request, ordered=True)
        wall = time.time()
        assert backend._pick(answer, request, wall) is backend._weigh(answer, request, wall), f"step {step}"
        chosen = backend._pick(answer, request, wall)
        if chosen is not None and rng.random() < 0.6:  # lease it, as `acquire` does
            key = f"k{step}"
            backend._held[chosen.id][key] = time.monotonic() + 60
            backend._last_used[chosen.id] = time.time()
            held.append((chosen.id, key))
        if held and rng.random() < 0.5:  # release one
            account_id, key = held.pop(rng.randrange(len(held)))
            backend._held[account_id].pop(key)
            if not backend._held[account_id]:
                del backend._held[account_id]
        if step % 150 == 149:  # a new snapshot that caught up with some uses
            for c in pool:
                c.last_used = max(c.last_used, backend._last_used.get(c.id, 0.0) if rng.random() < 0.7 else 0.0)
            roster._install(list(pool), generation=roster._generation)


def test_the_local_pick_rotates_through_equal_accounts_within_one_snapshot() -> None:
    from pools.leasing.local import LocalBackend

    roster = roster_of(*(candidate(pk) for pk in range(1, 11)))
    backend = LocalBackend(roster_max_age=3600)
    backend.roster = roster
    used = []
    for _ in range(10):  # lease and release one at a time, as sequential requests do
        wall = time.time()
        chosen = backend._pick(roster._eligible(REQUEST, ordered=True), REQUEST, wall)
        backend._last_used[chosen.id] = wall
        used.append(chosen.id)
    assert sorted(used) == list(range(1, 11))  # each once: the least recently used goes next
