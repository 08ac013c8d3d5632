"""A route Cloudflare refuses is the proxy's fault, not the account's: the request moves to another proxy."""

from __future__ import annotations

import openai
import pytest
from curl_cffi import CurlECode
from curl_cffi.requests.exceptions import ConnectionError as CurlConnectionError
from curl_cffi.requests.exceptions import ProxyError, ReadTimeout, SSLError

from gateway.grok import UpstreamProxyFailed, UpstreamUnavailable, errors
from pools.models import Account, Proxy
from tests.proxy_server import via

pytestmark = pytest.mark.timeout(30)
HI = [{"role": "user", "content": "hi"}]


def _chats(fake_grok, token: str) -> list:
    return [r for r in fake_grok.requests(token) if r.path.endswith("/conversations/new")]


def test_it_rotates_to_another_proxy_on_a_cloudflare_403_without_charging_the_account(
    client, pool, fake_grok, runtime, farm
):
    runtime(proxy_mode="list")
    walled, open_ = farm.proxy("walled", blocked=True), farm.proxy("open")
    first = Proxy.objects.create(url=walled.url)
    second = Proxy.objects.create(url=open_.url)
    account = pool.add("good-1", proxy=first)

    answer = client.chat.completions.create(model="grok-chat-fast", messages=HI)

    assert answer.choices[0].message.content == "You said: hi"
    assert walled.refused() == 1  # attempt 1: refused by "Cloudflare" in front of the proxy's IP
    assert [via(r.headers) for r in _chats(fake_grok, "good-1")] == ["open"]  # attempt 2, through the other
    account.refresh_from_db()
    assert (account.status, account.failure_count, account.last_error) == ("active", 0, "")
    assert account.proxy_id == second.pk  # rebound to the proxy that works
    first.refresh_from_db()
    assert first.health == "failed" and first.failure_count == 1 and "Cloudflare" in first.last_error
    second.refresh_from_db()
    assert second.health == "ok"


def test_it_answers_502_naming_the_fix_when_no_other_proxy_is_left(client, pool, fake_grok, runtime, farm):
    runtime(proxy_mode="list")
    walled = farm.proxy("walled", blocked=True)
    Proxy.objects.create(url=walled.url)
    pool.add("good-1")
    pool.add("good-2")

    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="grok-chat-fast", messages=HI)

    assert info.value.status_code == 502
    message = info.value.body["message"].lower()
    assert "proxy" in message and "cf_clearance" in message
    assert walled.refused() == 1 and not _chats(fake_grok, "good-1") and not _chats(fake_grok, "good-2")
    assert set(Account.objects.values_list("status", "failure_count")) == {("active", 0)}


def test_it_answers_502_at_once_when_the_static_proxy_is_refused(client, pool, runtime, farm):
    walled = farm.proxy("walled", blocked=True)
    runtime(proxy_mode="static", proxy_url=walled.url)
    pool.add("good-1")
    pool.add("good-2")

    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="grok-chat-fast", messages=HI)

    assert info.value.status_code == 502 and info.value.body["code"] == "upstream_blocked"
    assert walled.refused() == 1  # one proxy: another account behind it fares no better
    assert set(Account.objects.values_list("status", "failure_count")) == {("active", 0)}


def test_it_rotates_past_a_proxy_that_does_not_answer(client, pool, fake_grok, runtime, farm):
    runtime(proxy_mode="list")
    gone = Proxy.objects.create(url="http://127.0.0.1:1")  # nothing listens there
    open_ = farm.proxy("open")
    Proxy.objects.create(url=open_.url)
    account = pool.add("good-1", proxy=gone)

    assert client.chat.completions.create(model="grok-chat-fast", messages=HI).choices[0].message.content

    assert [via(r.headers) for r in _chats(fake_grok, "good-1")] == ["open"]
    gone.refresh_from_db()
    assert gone.health == "failed" and "failed to connect" in gone.last_error.lower()
    account.refresh_from_db()
    assert account.failure_count == 0 and account.proxy.url == open_.url


def test_it_answers_503_naming_the_fix_when_the_list_has_no_usable_proxy(client, pool, fake_grok, runtime):
    runtime(proxy_mode="list")
    Proxy.objects.create(url="http://127.0.0.1:1", health="failed")
    pool.add("good-1")

    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="grok-chat-fast", messages=HI)

    assert info.value.status_code == 503 and info.value.body["code"] == "no_proxy_available"
    assert "1 failed" in info.value.body["message"] and "Test now" in info.value.body["message"]
    assert not _chats(fake_grok, "good-1")
    assert pool.get("good-1").failure_count == 0


def test_it_carries_each_proxys_own_clearance_and_user_agent(client, pool, fake_grok, runtime, farm):
    runtime(proxy_mode="list", cf_clearance="global-clearance")
    mine = farm.proxy("mine")
    Proxy.objects.create(url=mine.url, cf_clearance="solved-from-mine", user_agent="Mozilla/5.0 Mine")
    pool.add("good-1")

    client.chat.completions.create(model="grok-chat-fast", messages=HI)

    [request] = _chats(fake_grok, "good-1")
    assert "cf_clearance=solved-from-mine" in request.headers["cookie"]
    assert request.headers["user-agent"] == "Mozilla/5.0 Mine"


def test_it_falls_back_to_the_runtime_clearance_for_a_proxy_without_one(client, pool, fake_grok, runtime, farm):
    runtime(proxy_mode="list", cf_clearance="global-clearance")
    Proxy.objects.create(url=farm.proxy("plain").url)
    pool.add("good-1")

    client.chat.completions.create(model="grok-chat-fast", messages=HI)

    [request] = _chats(fake_grok, "good-1")
    assert "cf_clearance=global-clearance" in request.headers["cookie"]
    assert via(request.headers) == "plain"


@pytest.mark.parametrize(
    "error",
    [
        ProxyError("curl: (97) proxy handshake failed", CurlECode.PROXY),
        ProxyError("curl: (5) Could not resolve proxy", CurlECode.COULDNT_RESOLVE_PROXY),
        CurlConnectionError("curl: (7) Failed to connect", CurlECode.COULDNT_CONNECT),
        SSLError("curl: (35) TLS connect error", CurlECode.SSL_CONNECT_ERROR),
    ],
    ids=lambda e: type(e).__name__ + str(int(e.code)),
)
def test_it_blames_the_proxy_for_failures_between_us_and_it(error):
    with pytest.raises(UpstreamProxyFailed) as info, errors.translate("http://user:pw@127.0.0.2:9"):
        raise error
    assert "user:****@127.0.0.2" in str(info.value) and ":pw@" not in str(info.value)
    with pytest.raises(UpstreamUnavailable) as info, errors.translate(""):  # no proxy: Grok's side
        raise error
    assert type(info.value) is UpstreamUnavailable


def test_it_does_not_blame_the_proxy_for_a_read_timeout():
    with pytest.raises(UpstreamUnavailable) as info, errors.translate("http://127.0.0.2:9"):
        raise ReadTimeout("curl: (28) Operation timed out", CurlECode.OPERATION_TIMEDOUT)
    assert type(info.value) is UpstreamUnavailable
