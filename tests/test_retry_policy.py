"""The retry policy, row by row (`gateway/retry.py`), with every attempt counted where it landed.

Accounts that should be tried first get a higher priority (and are added first), so
the order of attempts does not depend on the leasing tie-breaks.
"""

from __future__ import annotations

import logging

import openai
import pytest
from django.utils import timezone

from gateway import retry
from gateway.grok import (
    UpstreamAuthError,
    UpstreamBanned,
    UpstreamBlocked,
    UpstreamProtocolError,
    UpstreamProxyFailed,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.retry import Step, backoff_delay, next_step

pytestmark = pytest.mark.timeout(60)
HI = [{"role": "user", "content": "hi"}]


def _chats(fake_grok, token: str) -> int:
    return sum(1 for r in fake_grok.requests(token) if r.path.endswith("/conversations/new"))


def _cooling(account, mode: str) -> bool:
    """Cooling down: the account's mode (per-mode quotas), or the whole account."""
    now = timezone.now()
    if account.quotas.filter(mode=mode, cooldown_until__gt=now).exists():
        return True
    return account.status == "cooling" and account.cooldown_until is not None and account.cooldown_until > now


def _ask(client, **kwargs):
    return client.chat.completions.create(model="grok-chat-fast", messages=HI, **kwargs)


def _refused(client, **kwargs) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as info:
        _ask(client, **kwargs)
    return info.value


# --- through the gateway, against the fake ------------------------------------------------


def test_it_counts_a_401_against_the_account_and_tries_another(client, pool, fake_grok):
    pool.add("expired-1", priority=1)
    pool.add("good-1")
    assert _ask(client).choices[0].message.content == "You said: hi"
    assert (_chats(fake_grok, "expired-1"), _chats(fake_grok, "good-1")) == (1, 1)
    expired = pool.get("expired-1")
    assert expired.failure_count == 1 and expired.status == "expired"  # the default threshold is 1
    assert pool.get("good-1").failure_count == 0


def test_it_bans_a_blocked_user_and_tries_another(client, pool, fake_grok):
    pool.add("banned-1", priority=1)
    pool.add("good-1")
    assert _ask(client, stream=True)
    assert (_chats(fake_grok, "banned-1"), _chats(fake_grok, "good-1")) == (1, 1)
    banned = pool.get("banned-1")
    assert banned.status == "disabled" and "banned" in banned.last_error


def test_it_cools_a_rate_limited_account_and_tries_another(client, pool, fake_grok):
    pool.add("ratelimited-1", priority=1)
    pool.add("good-1")
    assert _ask(client).choices[0].message.content
    assert (_chats(fake_grok, "ratelimited-1"), _chats(fake_grok, "good-1")) == (1, 1)
    limited = pool.get("ratelimited-1")
    assert _cooling(limited, "fast") and limited.failure_count == 0


def test_it_answers_502_at_once_for_a_cloudflare_403_with_no_proxy_to_rotate(client, pool, fake_grok):
    pool.add("cfblocked-1", priority=1)
    pool.add("good-1")
    error = _refused(client)
    assert error.status_code == 502 and "cf_clearance" in error.body["message"]
    assert (_chats(fake_grok, "cfblocked-1"), _chats(fake_grok, "good-1")) == (1, 0)
    assert pool.get("cfblocked-1").failure_count == 0


def test_it_retries_a_listed_status_on_another_account(client, pool, fake_grok, runtime):
    runtime(retry_status_codes="503")
    pool.add("flaky-1", priority=1)
    pool.add("good-1")
    assert _ask(client).choices[0].message.content
    assert (_chats(fake_grok, "flaky-1"), _chats(fake_grok, "good-1")) == (1, 1)
    assert pool.get("flaky-1").failure_count == 1


def test_it_answers_502_at_once_for_a_5xx_not_in_the_list(client, pool, fake_grok, runtime):
    runtime(retry_status_codes="500,502")
    pool.add("flaky-1", priority=1)
    pool.add("good-1")
    error = _refused(client)
    assert error.status_code == 502 and error.body["code"] == "upstream_unavailable"
    assert (_chats(fake_grok, "flaky-1"), _chats(fake_grok, "good-1")) == (1, 0)


def test_it_retries_a_network_error_on_another_account(client, pool, fake_grok, runtime, farm):
    proxy = farm.proxy("static")
    proxy.hang_up_on = {"netfail-1"}  # the connection closes without a byte of answer
    runtime(proxy_mode="static", proxy_url=proxy.url)
    pool.add("netfail-1", priority=1)
    pool.add("good-1")
    assert _ask(client).choices[0].message.content == "You said: hi"
    assert [s.answered for s in proxy.seen("netfail-1")] == ["hung-up"]
    assert (_chats(fake_grok, "netfail-1"), _chats(fake_grok, "good-1")) == (0, 1)
    failed = pool.get("netfail-1")
    assert failed.failure_count == 1 and failed.status == "active"


def test_it_stops_after_max_attempts(client, pool, fake_grok, runtime):
    runtime(max_attempts=2)
    for i in range(4):
        pool.add(f"flaky-{i}")
    error = _refused(client)
    assert error.status_code == 502 and "after 2 attempt(s)" in error.body["message"]
    assert sum(_chats(fake_grok, f"flaky-{i}") for i in range(4)) == 2


def test_it_answers_429_with_the_soonest_reset_when_every_candidate_is_cooling(client, pool, fake_grok):
    pool.add("ratelimited-1")
    pool.add("ratelimited-2")
    error = _refused(client)
    assert error.status_code == 429
    assert 1 <= int(error.response.headers["Retry-After"]) <= 60  # the fake's Retry-After window
    assert (_chats(fake_grok, "ratelimited-1"), _chats(fake_grok, "ratelimited-2")) == (1, 1)


def test_it_answers_503_naming_the_tier_when_no_account_has_it(client, pool, fake_grok):
    pool.add("good-1", tier="basic")
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="grok-chat-expert", messages=HI)
    assert info.value.status_code == 503 and "super" in info.value.body["message"]
    assert _chats(fake_grok, "good-1") == 0


def test_it_logs_one_line_per_attempt_with_the_masked_token_and_proxy(client, pool, runtime, farm, caplog):
    proxy = farm.proxy("static")
    runtime(proxy_mode="static", proxy_url=proxy.url.replace("http://", "http://user:pw@"))
    pool.add("flaky-0123456789abcdefghijklmnop", priority=1)
    pool.add("good-0123456789abcdefghijklmnop")
    with caplog.at_level(logging.INFO, logger="gateway.retry"):
        _ask(client)
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.retry"]
    assert len(lines) == 2, lines
    assert lines[0].startswith("attempt=1/3 model=grok-chat-fast account=flaky-…mnop proxy=http://user:****@")
    assert "status=503 next=backoff" in lines[0]
    assert lines[1].startswith("attempt=2/3 model=grok-chat-fast account=good-0…mnop") and "result=ok" in lines[1]
    assert not any("abcdefghijklmnop" in line or ":pw@" in line for line in lines)


# --- the table itself -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "rotatable", "step"),
    [
        (UpstreamAuthError("401", status=401), True, Step.NEXT_ACCOUNT),
        (UpstreamBanned("blocked-user", status=403), True, Step.NEXT_ACCOUNT),
        (UpstreamRateLimited("429"), True, Step.NEXT_ACCOUNT),
        (UpstreamBlocked("cloudflare"), True, Step.NEXT_PROXY),
        (UpstreamBlocked("cloudflare"), False, Step.GIVE_UP),
        (UpstreamProxyFailed("proxy down"), True, Step.NEXT_PROXY),
        (UpstreamProxyFailed("proxy down"), False, Step.GIVE_UP),
        (UpstreamUnavailable("503", status=503), True, Step.BACKOFF),
        (UpstreamUnavailable("501", status=501), True, Step.GIVE_UP),
        (UpstreamUnavailable("connection reset"), True, Step.BACKOFF),
        (UpstreamTimeout("silence", phase="first_byte"), True, Step.GIVE_UP),
        (UpstreamProtocolError("garbage"), True, Step.GIVE_UP),
        (UpstreamProtocolError("teapot", status=418), True, Step.GIVE_UP),
        (UpstreamProtocolError("bad gateway body", status=502), True, Step.BACKOFF),
    ],
)
def test_it_maps_each_failure_to_its_next_step(exc, rotatable, step):
    assert next_step(exc, frozenset({500, 502, 503, 504}), rotatable=rotatable) is step


def test_it_backs_off_exponentially_with_jitter_up_to_a_cap():
    for retry_number in range(1, 8):
        ceiling = min(retry.BACKOFF_CAP, retry.BACKOFF_BASE * 2 ** (retry_number - 1))
        delays = {backoff_delay(retry_number) for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(delays) > 1  # jittered, not fixed
