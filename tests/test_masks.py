"""Masked tokens (admin, page titles, logs) tell accounts apart without giving the secret away."""

from __future__ import annotations

import hashlib

from pools.models import Account, mask_token

DEMO = ["demo-basic-1", "demo-basic-2", "demo-super-1", "demo-heavy-1"]
LONG = "eyJhbGciOiJIUzI1NiJ9.eyJzZXNzaW9uX2lkIjoiZGF2ZSJ9.ZGF2ZXNlY3JldHRva2VuMTIz"


def test_the_demo_accounts_mask_to_four_different_strings():
    masks = [mask_token(token) for token in DEMO]
    assert len(set(masks)) == 4, masks


def test_a_short_token_shows_at_most_two_leading_characters_and_not_its_end():
    for token in [*DEMO, "flaky-1", "abcdefgh", "ab", "x"]:
        masked = mask_token(token)
        shown = masked.split("…")[0]
        assert len(shown) <= 2 and token.startswith(shown), masked
        assert token[:3] not in masked and token[-3:] not in masked, masked


def test_a_short_token_shows_a_sha256_fingerprint():
    assert mask_token("demo-basic-1") == "de…" + hashlib.sha256(b"demo-basic-1").hexdigest()[:4]


def test_a_long_token_keeps_its_first_six_and_last_four_characters():
    assert mask_token(LONG) == "eyJhbG…MTIz"
    assert mask_token("a" * 23 + "Z").startswith("aaaaaa…") and mask_token("a" * 23 + "Z").endswith("aaaZ")


def test_the_same_token_always_masks_the_same():
    assert [mask_token(token) for token in DEMO] == [mask_token("".join(token)) for token in DEMO]
    assert Account(token="demo-basic-1").masked_token == mask_token("demo-basic-1")


def test_no_token_masks_to_nothing():
    assert mask_token("") == ""
