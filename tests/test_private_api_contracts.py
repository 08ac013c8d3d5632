"""The private and undocumented parts of curl_cffi and Django the gateway relies on, one by one.

`gateway/grok/transfer.py` (its "curl_cffi internals" section) and `grok2api/api_handler.py`
reach past their libraries' documented APIs because it measurably paid (docs/benchmarks.md).
An upgrade may move any of these names without notice; these tests say which one moved, and
who used it for what, instead of a request failing deep inside the relay. The start-up guard
(`gateway.grok.compat`, system checks grok2api.E003/E004) refuses an untested release series.

When one fails after an upgrade: read the new release's code for that name, adapt its user
(or drop the optimisation), then add the release series to `CURL_CFFI_SERIES` / `DJANGO_SERIES`.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from importlib.metadata import version

import pytest
from curl_cffi import CurlOpt, ffi
from django.conf import settings
from django.http import HttpRequest, HttpResponse

from gateway.grok import compat, transfer
from grok2api import api_handler, checks

FUNCTION, COROUTINE, INT, PRESENT = "a function", "a coroutine function", "an int", "present"

# (dotted name, expected kind, who relies on it and for what)
CURL_CFFI = [
    ("curl_cffi.curl.Curl._WS_RECV_BUFFER_SIZE", INT,
     "transfer._HttpCurl sets it to 64: curl_cffi's 128 KB WebSocket buffer per handle was 87 % of a stream's memory"),
    ("curl_cffi.curl.CURL_WRITEFUNC_ERROR", INT,
     "transfer.Transfer._on_body returns it to abort; curl_cffi's write callback passes only it through"),
    ("curl_cffi.requests.exceptions.code2error", FUNCTION,
     "transfer._error raises curl_cffi's exception class for a curl error code, as its sessions do"),
    ("curl_cffi.requests.impersonate.resolve_latest_browser_type", FUNCTION,
     "transfer._shape resolves an impersonation target such as 'chrome' to the newest one"),
]
DJANGO = [
    ("django.core.handlers.base.BaseHandler._middleware_chain", PRESENT,
     "ApiHandler.load_middleware builds it and get_response_async calls it"),
    ("django.core.handlers.base.BaseHandler._view_middleware", PRESENT,
     "ApiHandler.load_middleware empties it (Django's _get_response_async walks it)"),
    ("django.core.handlers.base.BaseHandler._template_response_middleware", PRESENT,
     "ApiHandler.load_middleware empties it (Django's _get_response_async walks it)"),
    ("django.core.handlers.base.BaseHandler._exception_middleware", PRESENT,
     "ApiHandler.load_middleware empties it (process_exception_by_middleware walks it)"),
    ("django.core.handlers.base.BaseHandler._get_response_async", COROUTINE,
     "ApiHandler.load_middleware puts it at the bottom of the API middleware chain"),
    ("django.core.handlers.base.BaseHandler._get_response", FUNCTION,
     "ApiHandler.load_middleware puts it at the bottom of a sync chain (Django's own choice)"),
    ("django.core.handlers.base.BaseHandler.adapt_method_mode", FUNCTION,
     "ApiHandler.load_middleware adapts each middleware as Django does"),
    ("django.core.handlers.base.BaseHandler.get_response_async", COROUTINE,
     "ApiHandler replaces it: no thread hop to log an error response"),
    ("django.core.handlers.asgi.ASGIHandler.handle", COROUTINE,
     "ApiHandler replaces it: no signals, no thread per request"),
    ("django.core.handlers.asgi.ASGIHandler.read_body", COROUTINE, "ApiHandler.handle reads the body with it"),
    ("django.core.handlers.asgi.ASGIHandler.create_request", FUNCTION, "ApiHandler.handle builds the request with it"),
    ("django.core.handlers.asgi.ASGIHandler.run_get_response", COROUTINE, "ApiHandler._serve makes the answer with it"),
    ("django.core.handlers.asgi.ASGIHandler.send_response", COROUTINE,
     "ApiHandler.send_response extends it (EventStream is sent straight from its generator)"),
    ("django.core.handlers.asgi.ASGIHandler.listen_for_disconnect", COROUTINE,
     "ApiHandler._serve watches for the client leaving with it"),
    ("django.core.handlers.asgi.get_script_prefix", FUNCTION, "ApiHandler.handle sets the script prefix with it"),
    ("django.core.handlers.exception.convert_exception_to_response", FUNCTION,
     "ApiHandler.load_middleware wraps each layer of the chain in it, as Django does"),
    ("django.utils.log.request_logger", PRESENT, "ApiHandler.get_response_async asks it whether to log at all"),
    ("django.utils.log.log_response", FUNCTION,
     "ApiHandler.get_response_async logs error responses, gateway.api._unexpected logs a crash once, with it"),
]


def _resolve(dotted: str) -> object:
    """The object a dotted name stands for (the longest importable prefix, then attributes)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            found = getattr(found, name)
        return found
    raise ImportError(dotted)


def _kind_ok(found: object, kind: str) -> bool:
    if kind == INT:
        return isinstance(found, int)
    if kind == COROUTINE:
        return inspect.iscoroutinefunction(found)
    if kind == FUNCTION:
        return callable(found) and not inspect.iscoroutinefunction(found)
    return True


def _check(dotted: str, kind: str, user: str) -> None:
    distribution = dotted.split(".")[0].replace("django", "Django")
    where = f"{distribution} {version(distribution)}"
    try:
        found = _resolve(dotted)
    except (ImportError, AttributeError) as exc:
        pytest.fail(f"{dotted} is gone in {where} ({exc}). {user}: adapt it before upgrading.")
    if not _kind_ok(found, kind):
        pytest.fail(f"{dotted} is no longer {kind} in {where} (found {found!r}). {user}: adapt it before upgrading.")


@pytest.mark.parametrize(("dotted", "kind", "user"), CURL_CFFI, ids=[row[0] for row in CURL_CFFI])
def test_the_curl_cffi_internals_transfer_relies_on_are_there(dotted, kind, user):
    _check(dotted, kind, user)


@pytest.mark.parametrize(("dotted", "kind", "user"), DJANGO, ids=[row[0] for row in DJANGO])
def test_the_django_internals_the_api_handler_relies_on_are_there(dotted, kind, user):
    _check(dotted, kind, user)


def test_a_transfer_handle_allocates_the_small_websocket_buffer():
    curl = transfer._HttpCurl()
    try:
        size = ffi.sizeof(curl._ws_recv_buffer)
    finally:
        curl.close()
    assert size == transfer._HttpCurl._WS_RECV_BUFFER_SIZE == 64, (
        f"Curl.__init__ no longer sizes its WebSocket buffer from _WS_RECV_BUFFER_SIZE ({size} bytes): "
        "every curl handle holds 128 KB again (transfer._HttpCurl)."
    )


def test_curl_cffi_keeps_what_a_request_hands_to_libcurl_until_the_handle_is_cleaned():
    # libcurl does not copy CURLOPT_POSTFIELDS and keeps pointing at the header list: `Curl.setopt`
    # must hold both for the transfer (transfer._prepare counts on it) and free them in
    # `clean_handles_and_buffers` (transfer.Transfers._release counts on that).
    curl = transfer._HttpCurl()
    try:
        body = b'{"a": 1}'
        curl.setopt(CurlOpt.POSTFIELDS, body)
        curl.setopt(CurlOpt.HTTPHEADER, [b"A: 1", b"Expect:"])
        assert curl._body_handle is body, "Curl.setopt no longer keeps the POSTFIELDS body alive"
        assert curl._headers != ffi.NULL, "Curl.setopt no longer keeps the HTTPHEADER list"
        curl.clean_handles_and_buffers()
        assert curl._body_handle is None and curl._headers == ffi.NULL, "clean_handles_and_buffers frees less"
    finally:
        curl.close()


def test_curl_cffi_passes_our_abort_value_through_as_libcurl_documents_it():
    assert transfer._ABORT == 0xFFFFFFFF  # libcurl's CURL_WRITEFUNC_ERROR


def test_a_response_still_collects_the_closers_the_api_handler_runs():
    response = HttpResponse()
    assert isinstance(response._resource_closers, list), "HttpResponseBase._resource_closers moved"
    closed = []
    response._resource_closers.append(lambda: closed.append(True))
    api_handler._close(response)
    assert closed == [True] and response.closed


def test_log_response_logs_a_response_once(caplog):
    # gateway.api._unexpected logs a crash through it, so the handler's own call for the 500 is skipped.
    request, response = HttpRequest(), HttpResponse(status=500)
    logger = logging.getLogger("tests.contracts")
    from django.utils.log import log_response

    with caplog.at_level(logging.ERROR, logger="tests.contracts"):
        log_response("first", response=response, request=request, logger=logger)
        log_response("second", response=response, request=request, logger=logger)
    assert [r.getMessage() for r in caplog.records if r.name == "tests.contracts"] == ["first"], (
        "log_response no longer skips a response it has logged: every crash is logged twice"
    )


def test_the_api_handler_builds_an_async_chain_without_touching_settings():
    before = list(settings.MIDDLEWARE)
    handler = api_handler.ApiHandler()
    assert before == settings.MIDDLEWARE
    assert inspect.iscoroutinefunction(handler._middleware_chain)
    assert handler._view_middleware == handler._template_response_middleware == handler._exception_middleware == []


def test_the_installed_releases_are_the_supported_ones():
    assert compat.curl_cffi_problem() is None
    assert api_handler.django_problem() is None
    assert checks.check_versions(None) == []


def test_an_unsupported_release_is_refused_naming_what_is_supported_and_what_to_do():
    problem = compat.version_problem("curl_cffi", ("0.15", "0.14"), "0.15.2")
    assert problem is not None
    assert f"curl_cffi {version('curl_cffi')} is not a supported version" in problem
    assert "0.15.x, 0.14.x" in problem and "curl_cffi==0.15.2" in problem
    assert "tests/test_private_api_contracts.py" in problem
    missing = compat.version_problem("grok2api-no-such-distribution", ("1.0",), "1.0.0")
    assert missing is not None and "(not installed)" in missing
    # A series is a prefix of whole version parts: 5.2 admits 5.2.19, never 5.20.
    assert compat.version_problem("Django", ("5.2",), "5.2.19") is None
    assert compat.version_problem("Django", (version("Django").rsplit(".", 1)[0] + "0",), "x") is not None
