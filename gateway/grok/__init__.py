"""Grok's wire protocol, and nothing else: the leaf every other part of the project stands on.

    client      `GrokClient` (chat, rate limits, probes, fetches) over `ClientConfig`
    transfer    HTTP transfers on reused curl handles (the only curl_cffi driver)
    errors      the `UpstreamError` hierarchy and the translations into it
    frames      NDJSON frames -> typed events (protocol §2.3)
    dialect     how a chat is asked and read back (`RestDialect`, `ChatAsk`, `Budget`)
    ratelimits  `POST /rest/rate-limits` counters (protocol §8.1)
    compat      the curl_cffi releases the private names in `transfer` were checked against

This package imports nothing else from the project: `gateway.service` and `pools`
use it, never the other way round. Protocol sections (§) are those of docs/protocol.md.
"""

from gateway.grok.client import ClientConfig, GrokClient, LineStream, Reply, close_sessions, own_session
from gateway.grok.dialect import Budget, ChatAsk, Dialect, EventReader, RestDialect
from gateway.grok.errors import (
    UpstreamAuthError,
    UpstreamBanned,
    UpstreamBlocked,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamProxyFailed,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
    classify_error_body,
    classify_inband_error,
    mask_proxy_url,
)
from gateway.grok.ratelimits import QuotaParseError, Reading, parse_rate_limits

__all__ = [
    "Budget", "ChatAsk", "ClientConfig", "Dialect", "EventReader", "GrokClient", "LineStream", "QuotaParseError",
    "Reading", "Reply", "RestDialect", "UpstreamAuthError", "UpstreamBanned", "UpstreamBlocked", "UpstreamError",
    "UpstreamProtocolError", "UpstreamProxyFailed", "UpstreamRateLimited", "UpstreamTimeout", "UpstreamUnavailable",
    "classify_error_body", "classify_inband_error", "close_sessions", "mask_proxy_url", "own_session",
    "parse_rate_limits",
]
