"""Proxy URLs as operators and proxy pools write them, normalised to what curl takes."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from gateway.grok import mask_proxy_url

SCHEMES = ("http", "https", "socks5", "socks5h")


def normalize_proxy_url(url: str) -> str:
    """`scheme://[user:password@]host[:port]` with a supported scheme; socks5 becomes socks5h.

    socks5h resolves host names at the proxy, so DNS lookups leave through it too.
    Raises ValueError naming what is wrong (the password never shows).
    """
    text = url.strip()
    shown = mask_proxy_url(text)
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise ValueError(f"proxy URL {shown!r} has no scheme: write http://, https://, socks5:// or socks5h://")
    scheme = scheme.lower()
    if scheme == "socks5":
        scheme = "socks5h"
    if scheme not in SCHEMES:
        raise ValueError(f"unsupported proxy scheme {scheme}:// in {shown!r}: use {', '.join(SCHEMES)}")
    rest = rest.rstrip("/")
    parts = urlsplit(f"{scheme}://{rest}")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError as exc:
        raise ValueError(f"proxy URL {shown!r} has an invalid port") from exc
    if not parts.hostname:
        raise ValueError(f"proxy URL {shown!r} has no host")
    if parts.path or parts.query or parts.fragment:
        raise ValueError(f"proxy URL {shown!r} must be scheme://[user:password@]host:port, with nothing after")
    return f"{scheme}://{rest}"


def parse_pool_answer(text: str) -> str:
    """The proxy URL in a proxy-pool answer: plain text (first line) or JSON `{"proxy": "…"}`.

    A bare `host:port`, which many pools answer, is taken as an http proxy.
    """
    body = text.strip()
    if body.startswith(("{", '"')):
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise ValueError("the proxy-pool URL answered JSON that does not parse") from exc
        value = data.get("proxy") if isinstance(data, dict) else data
        if not isinstance(value, str):
            raise ValueError('the proxy-pool URL answered JSON without "proxy": expected {"proxy": "host:port"}')
        body = value.strip()
    body = body.splitlines()[0].strip() if body else ""
    if not body:
        raise ValueError("the proxy-pool URL answered nothing")
    if "://" not in body:
        body = f"http://{body}"
    return normalize_proxy_url(body)
