"""Before the first byte, a failed account is set aside and the next one answers."""

from __future__ import annotations

import pytest
from django.utils import timezone

pytestmark = pytest.mark.timeout(30)
HI = [{"role": "user", "content": "hi"}]


def _chats(fake_grok, token: str) -> int:
    return sum(1 for r in fake_grok.requests(token) if r.path.endswith("/conversations/new"))


def test_it_rotates_past_an_expired_account_and_takes_it_out(client, pool, fake_grok):
    pool.add("expired-1")
    pool.add("good-1")
    for _ in range(3):
        assert client.chat.completions.create(model="grok-chat-fast", messages=HI).choices[0].message.content
    expired = pool.get("expired-1")
    assert expired.status == "expired" and expired.last_error
    assert _chats(fake_grok, "expired-1") == 1  # out of rotation after the first 401


def test_it_rotates_past_a_rate_limited_account_and_cools_it(client, pool, fake_grok):
    pool.add("ratelimited-1")
    pool.add("good-1")
    chunks = list(client.chat.completions.create(model="grok-chat-fast", messages=HI, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "You said: hi"
    cooling = pool.get("ratelimited-1").quotas.get(mode="fast")  # the cooldown is per mode now
    assert cooling.cooldown_until is not None and cooling.cooldown_until > timezone.now()


def test_it_marks_a_banned_account_and_moves_on(client, pool):
    pool.add("banned-1")
    pool.add("good-1")
    client.chat.completions.create(model="grok-chat-fast", messages=HI)
    banned = pool.get("banned-1")
    assert banned.status != "active" and "blocked" in banned.last_error.lower()


def test_it_retries_a_5xx_on_another_account(client, pool, fake_grok):
    pool.add("flaky-1")
    pool.add("good-1")
    assert client.chat.completions.create(model="grok-chat-fast", messages=HI).choices[0].message.content
    assert _chats(fake_grok, "flaky-1") == 1 and _chats(fake_grok, "good-1") == 1
    assert pool.get("flaky-1").failure_count == 1


@pytest.mark.parametrize("marker", ["[fake:inband-ratelimit]", "[fake:usage-limit]"])
def test_it_treats_an_in_band_rate_limit_before_any_text_like_a_429(client, pool, fake_grok, marker):
    pool.add("good-1")
    pool.add("good-2")
    with pytest.raises(Exception) as info:
        client.chat.completions.create(model="grok-chat-fast", messages=[{"role": "user", "content": marker}])
    assert getattr(info.value, "status_code", None) == 429
    for token in ("good-1", "good-2"):  # the cooldown is per mode now
        assert pool.get(token).quotas.get(mode="fast").cooldown_until > timezone.now()


def test_it_treats_an_in_band_anti_bot_error_like_a_403(client, pool):
    pool.add("good-1")
    with pytest.raises(Exception) as info:
        client.chat.completions.create(model="grok-chat-fast",
                                       messages=[{"role": "user", "content": "[fake:inband-antibot]"}])
    assert getattr(info.value, "status_code", None) == 502
    assert pool.get("good-1").status == "active"


def test_it_gives_up_after_max_attempts(client, pool, fake_grok, runtime):
    runtime(max_attempts=2)
    for i in range(4):
        pool.add(f"flaky-{i}")
    with pytest.raises(Exception) as info:
        client.chat.completions.create(model="grok-chat-fast", messages=HI)
    assert getattr(info.value, "status_code", None) == 502
    assert sum(_chats(fake_grok, f"flaky-{i}") for i in range(4)) == 2


def test_it_prefers_a_basic_account_for_a_basic_model(client, pool, fake_grok):
    pool.add("super-1", tier="super")
    pool.add("basic-1", tier="basic")
    for _ in range(2):
        client.chat.completions.create(model="grok-chat-fast", messages=HI)
    assert _chats(fake_grok, "basic-1") == 2 and _chats(fake_grok, "super-1") == 0
