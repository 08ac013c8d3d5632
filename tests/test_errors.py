"""Every failure a client can meet is an OpenAI-shaped error with the right status."""

from __future__ import annotations

import time

import httpx
import pytest
from django.utils import timezone

from tests.conftest import API_KEY
from tests.openai_spec import validate

pytestmark = pytest.mark.timeout(30)
AUTH = {"Authorization": f"Bearer {API_KEY}"}
HI = [{"role": "user", "content": "hi"}]


def _call(gateway: str, method: str = "POST", path: str = "/v1/chat/completions", **kwargs) -> httpx.Response:
    kwargs.setdefault("headers", AUTH)
    return httpx.request(method, gateway + path, timeout=30, **kwargs)


def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    validate("ErrorResponse", body)
    return body["error"]


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"messages": HI}, "model", "model"),
        ({"model": "grok-chat-fast"}, "messages", "messages"),
        ({"model": "grok-chat-fast", "messages": []}, "messages", "messages"),
        ({"model": "grok-chat-fast", "messages": [{"content": "x"}]}, "messages[0].role", "role"),
        ({"model": "grok-chat-fast", "messages": HI, "temperature": 7}, "temperature", "temperature"),
        ({"model": "grok-chat-fast", "messages": HI, "n": 2}, "n", "n=1"),
        ({"model": "grok-chat-fast", "messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]},
         "messages[0].role", "Tool"),
        ({"model": "grok-chat-fast", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]}, "messages[0].content[0]", "Image"),
        ({"model": "grok-chat-fast", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role", "role"),
    ],
)
def test_it_answers_400_naming_the_field(gateway, pool, body, param, words):
    pool.add("good-1")
    error = _error(_call(gateway, json=body), 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert words in error["message"]


def test_it_answers_400_for_a_body_that_is_not_json(gateway):
    error = _error(_call(gateway, content=b"{not json", headers={**AUTH, "Content-Type": "application/json"}), 400)
    assert error["code"] == "invalid_json"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}])
def test_it_answers_401_without_a_valid_key(gateway, headers):
    error = _error(_call(gateway, json={"model": "grok-chat-fast", "messages": HI}, headers=headers), 401)
    assert error["code"] == "invalid_api_key"
    _error(_call(gateway, "GET", "/v1/models", headers=headers), 401)


def test_it_answers_404_for_an_unknown_model(gateway, pool):
    pool.add("good-1")
    error = _error(_call(gateway, json={"model": "gpt-4o", "messages": HI}), 404)
    assert error["code"] == "model_not_found" and error["param"] == "model"


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/nope/deeper", "/v1", "/v1/", "/v1/nope", "/v1/models/",
                                  "/v1/models/grok-chat-fast/"])
def test_it_answers_404_for_unknown_routes(gateway, path):
    error = _error(_call(gateway, "GET", path), 404)
    assert error["code"] == "unknown_url"


@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/chat/completions"), ("DELETE", "/v1/models"),
                                              ("POST", "/v1/models/grok-chat-fast")])
def test_it_answers_405_for_a_wrong_method(gateway, method, path):
    error = _error(_call(gateway, method, path), 405)
    assert error["code"] == "method_not_allowed"


def test_it_answers_503_naming_the_tier_when_no_account_can_serve(gateway, pool):
    pool.add("good-1", tier="basic")
    for stream in (False, True):
        error = _error(_call(gateway, json={"model": "grok-chat-expert", "messages": HI, "stream": stream}), 503)
        assert "super" in error["message"] and "grok-chat-expert" in error["message"]


def test_it_answers_503_for_an_empty_pool(gateway):
    _error(_call(gateway, json={"model": "grok-chat-fast", "messages": HI}), 503)


def test_it_answers_429_with_retry_after_when_every_account_is_rate_limited(gateway, pool, fake_grok):
    pool.add("ratelimited-1")
    pool.add("ratelimited-2")
    response = _call(gateway, json={"model": "grok-chat-fast", "messages": HI, "stream": True})
    error = _error(response, 429)
    assert int(response.headers["Retry-After"]) >= 1
    assert error["type"] == "rate_limit_error"
    # Both accounts were tried and their fast mode is now cooling: the next call is refused without touching Grok.
    assert pool.get("ratelimited-1").quotas.get(mode="fast").cooldown_until > timezone.now()
    before = len(fake_grok.requests())
    again = _call(gateway, json={"model": "grok-chat-fast", "messages": HI})
    _error(again, 429)
    assert len(fake_grok.requests()) == before


def test_it_answers_502_naming_the_fix_for_a_cloudflare_block(gateway, pool):
    pool.add("cfblocked-1")
    error = _error(_call(gateway, json={"model": "grok-chat-fast", "messages": HI}), 502)
    assert "proxy" in error["message"].lower() and "cf_clearance" in error["message"].lower()
    assert pool.get("cfblocked-1").status == "active"  # not the account's fault


def test_it_answers_502_for_an_anti_bot_rejection(gateway, pool):
    pool.add("good-1")
    body = {"model": "grok-chat-fast", "messages": [{"role": "user", "content": "[fake:status=403-antibot]"}]}
    error = _error(_call(gateway, json=body), 502)
    assert error["code"] == "upstream_blocked"


def test_it_answers_502_when_grok_keeps_failing(gateway, pool, fake_grok):
    for i in range(3):
        pool.add(f"flaky-{i}")
    error = _error(_call(gateway, json={"model": "grok-chat-fast", "messages": HI, "stream": True}), 502)
    assert error["code"] == "upstream_unavailable"
    assert sum(1 for r in fake_grok.requests() if r.path.endswith("/new")) == 3  # max_attempts


def test_it_answers_504_when_grok_sends_nothing_in_time(gateway, pool, runtime):
    runtime(first_byte_timeout=0.5)
    pool.add("good-1")
    for stream in (False, True):
        body = {"model": "grok-chat-fast", "messages": [{"role": "user", "content": "[fake:stall=3]"}],
                "stream": stream}
        error = _error(_call(gateway, json=body), 504)
        assert error["code"] == "upstream_timeout"


def test_it_answers_413_for_an_oversized_body(gateway, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    body = {"model": "grok-chat-fast", "messages": [{"role": "user", "content": "x" * 5000}]}
    _error(_call(gateway, json=body), 413)


def test_it_answers_429_when_every_account_stays_busy_past_the_queue_timeout(gateway, pool, runtime, fake_grok):
    import threading  # the slow stream holds the only slot meanwhile

    runtime(account_max_concurrent=1, queue_timeout=0.3)
    pool.add("good-1")
    slow = {"model": "grok-chat-fast", "stream": True,
            "messages": [{"role": "user", "content": "[fake:pace=30:100]"}]}
    holder = threading.Thread(target=lambda: _call(gateway, json=slow))
    holder.start()
    try:
        deadline = time.monotonic() + 10
        while not fake_grok.stats("good-1").in_flight:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        response = _call(gateway, json={"model": "grok-chat-fast", "messages": HI})
        error = _error(response, 429)
        assert "busy" in error["message"] and int(response.headers["Retry-After"]) >= 1
    finally:
        holder.join(30)


def test_a_crash_in_a_view_answers_500_and_is_logged_once_with_its_traceback_and_request_id(gateway, pool, caplog):
    import logging

    # A row no form or import writes (an unknown tier): the leasing rule cannot rank it and raises.
    pool.add("corrupt-tier-1", tier="bogus")
    with caplog.at_level(logging.WARNING):
        response = _call(gateway, json={"model": "grok-chat-fast", "messages": HI},
                         headers={**AUTH, "X-Request-Id": "rid-crash-1"})
    error = _error(response, 500)
    assert error["type"] == "server_error" and "request id" in error["message"]
    assert response.headers["X-Request-Id"] == "rid-crash-1"
    # One line, not the gateway's and then Django's `django.request` for the same 500.
    (line,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert line.name == "gateway.api" and line.getMessage() == "unhandled error on POST /v1/chat/completions"
    assert line.exc_info and line.exc_info[0] is KeyError
    assert line.request_id == "rid-crash-1"


def _should_retry(response: httpx.Response) -> str | None:
    return response.headers.get("x-should-retry")


@pytest.mark.parametrize(("method", "path", "kwargs", "status"), [
    ("POST", "/v1/chat/completions", {"json": {"model": "grok-chat-fast"}}, 400),
    ("GET", "/v1/models", {"headers": {}}, 401),
    ("GET", "/v1/nope", {}, 404),
    ("GET", "/v1/models/gpt-9", {}, 404),
    ("DELETE", "/v1/models", {}, 405),
    ("POST", "/v1/chat/completions", {"json": {"model": "grok-chat-fast", "messages": HI}}, 503),  # empty pool
])
def test_errors_retrying_cannot_fix_say_so(gateway, method, path, kwargs, status):
    response = _call(gateway, method, path, **kwargs)
    _error(response, status)
    assert _should_retry(response) == "false"
    assert "Retry-After" not in response.headers


def test_it_answers_413_as_final(gateway, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    body = {"model": "grok-chat-fast", "messages": [{"role": "user", "content": "x" * 5000}]}
    response = _call(gateway, json=body)
    _error(response, 413)
    assert _should_retry(response) == "false"


def test_the_sdk_does_not_retry_an_empty_pool(gateway):
    import openai

    sent = []
    http = httpx.Client(event_hooks={"request": [sent.append]})
    sdk = openai.OpenAI(base_url=gateway + "/v1", api_key=API_KEY, max_retries=2, http_client=http)
    with pytest.raises(openai.APIStatusError) as info:
        sdk.chat.completions.create(model="grok-chat-fast", messages=HI)
    assert info.value.status_code == 503
    assert len(sent) == 1


def test_transient_failures_say_when_to_retry(gateway, pool):
    pool.add("ratelimited-1")
    response = _call(gateway, json={"model": "grok-chat-fast", "messages": HI})
    _error(response, 429)
    assert _should_retry(response) == "true" and int(response.headers["Retry-After"]) >= 1
    for i in range(3):
        pool.add(f"flaky-{i}")
    response = _call(gateway, json={"model": "grok-chat-fast", "messages": HI})
    assert _error(response, 502)["code"] == "upstream_unavailable"
    assert _should_retry(response) == "true" and int(response.headers["Retry-After"]) >= 1


def test_a_cloudflare_block_is_final(gateway, pool):
    pool.add("cfblocked-1")
    response = _call(gateway, json={"model": "grok-chat-fast", "messages": HI})
    _error(response, 502)
    assert _should_retry(response) == "false"


@pytest.mark.parametrize("stream", [False, True])
def test_a_network_error_is_told_in_the_gateways_words(gateway, pool, settings, caplog, stream):
    import logging

    settings.GROK_BASE_URL = "http://127.0.0.2:9"  # nothing listens there
    pool.add("good-1")
    with caplog.at_level(logging.WARNING, logger="gateway.retry"):
        response = _call(gateway, json={"model": "grok-chat-fast", "messages": HI, "stream": stream})
    error = _error(response, 502)
    assert error["code"] == "upstream_unavailable"
    assert "127.0.0.2:9" in error["message"] and "PROXY_URL" in error["message"]
    assert "curl" not in error["message"].lower() and "https://curl.se" not in response.text
    # curl's own text is kept for the operator.
    assert any("curl" in r.getMessage() for r in caplog.records if r.name == "gateway.retry")
