"""The roster's eligibility answers: computed once per snapshot, and never served past a change."""

from __future__ import annotations

import time

from pools.leasing.base import LeaseRequest
from pools.leasing.roster import Candidate, QuotaView, Roster

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


def test_retries_and_ordered_answers_are_computed_every_time() -> None:
    roster = roster_of(candidate(1), candidate(2))
    retry = LeaseRequest(model_id="grok-chat-fast", tier="basic", mode="fast", cost=2, exclude=frozenset({1}))
    assert ids(roster._eligible(retry, ordered=False)) == [2]
    assert roster._eligible(REQUEST, ordered=True) is not roster._eligible(REQUEST, ordered=True)
