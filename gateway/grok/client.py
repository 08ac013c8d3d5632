"""The one client that talks to Grok: curl_cffi, async, streaming.

Every outbound call goes through `GrokClient`; what fails is raised as the
`gateway.grok.errors` hierarchy. Each request leaves through the proxy,
`cf_clearance` and user agent of its client's `ClientConfig` (one `GrokClient`
per route; the curl handles underneath, `gateway.grok.transfer`, are shared per
event loop).
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import json
import logging
import random
import string
import uuid
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

from curl_cffi.requests.exceptions import RequestException

from gateway.grok.errors import (
    UpstreamBlocked,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnavailable,
    classify_error_body,
    translate,
    upstream_error,
)
from gateway.grok.ratelimits import RATE_LIMITS_PATH, Reading, parse_rate_limits
from gateway.grok.transfer import Transfer, Transfers

logger = logging.getLogger(__name__)

CHAT_PATH = "/rest/app-chat/conversations/new"
PROBE_TIMEOUT = 20.0  # seconds for a proxy probe or a proxy-pool fetch, connect included


def statsig_id(constant: str = "") -> str:
    """`x-statsig-id` (§13.1): a configured constant, else the browser's fallback shape with fresh letters."""
    if constant:
        return constant
    if random.random() < 0.5:
        tag = "".join(random.choices(string.ascii_letters + string.digits, k=5))
        text = f"e:TypeError: Cannot read properties of null (reading 'children['{tag}']')"
    else:
        tag = "".join(random.choices(string.ascii_lowercase, k=10))
        text = f"e:TypeError: Cannot read properties of undefined (reading '{tag}')"
    return base64.b64encode(text.encode()).decode()


@dataclass(frozen=True, slots=True)
class ClientConfig:
    base_url: str
    assets_url: str
    impersonate: str
    user_agent: str
    statsig_id: str = ""
    cf_clearance: str = ""
    proxy_url: str = ""
    max_clients: int = 1000
    connect_timeout: float = 15.0


# One set of transfers per event loop (curl's multi handle is bound to the loop it was made on).
_loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Transfers] = weakref.WeakKeyDictionary()


# A block that opened its own transfers (`own_session`) uses them instead of the loop's.
_own: contextvars.ContextVar[Transfers | None] = contextvars.ContextVar("own_session", default=None)


def _transfers(config: ClientConfig) -> Transfers:
    transfers = _own.get()
    if transfers is None:
        loop = asyncio.get_running_loop()
        transfers = _loops.get(loop)
        if transfers is None:
            transfers = _loops[loop] = Transfers(limit=config.max_clients)
    # `max_clients` is a runtime setting: every start carries the current value, so a change
    # reaches this loop's running limit with the next request (one comparison when unchanged).
    if transfers.slots.limit != config.max_clients:
        transfers.slots.limit = config.max_clients
    return transfers


@asynccontextmanager
async def own_session(config: ClientConfig) -> AsyncIterator[None]:
    """Calls inside this block use transfers of their own, closed on the way out.

    For work that runs on a short-lived loop (an admin action through
    `async_to_sync`), so no curl handle outlives the loop it belongs to.
    """
    transfers = Transfers(limit=config.max_clients)
    marker = _own.set(transfers)
    try:
        yield
    finally:
        _own.reset(marker)
        await transfers.close()


async def close_sessions() -> None:
    """Close this loop's transfers (tests and shutdown)."""
    transfers = _loops.pop(asyncio.get_running_loop(), None)
    if transfers is not None:
        await transfers.close()


@dataclass(frozen=True, slots=True)
class Reply:
    """A whole answer to a short call."""

    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class GrokClient:
    """Grok as seen from one route: `config` names the proxy, `cf_clearance` and user agent to use."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config

    def headers(self, token: str, *, referer: str = "/") -> dict[str, str]:
        """The §1.3 headers of a browser tab on grok.com, with the account's cookies (none for "")."""
        origin = "https://grok.com"
        cookies = [f"sso={token}", f"sso-rw={token}"] if token else []
        if self.config.cf_clearance:
            cookies.append(f"cf_clearance={self.config.cf_clearance}")
        headers = {
            "Accept": "*/*",
            "Accept-Language": "zh-CN,zh;q=0.9,en;q=0.8",
            "Content-Type": "application/json",
            "User-Agent": self.config.user_agent,
            "Origin": origin,
            "Referer": origin + referer,
            "Priority": "u=1, i",
            "Sec-Fetch-Dest": "empty",
            "Sec-Fetch-Mode": "cors",
            "Sec-Fetch-Site": "same-origin",
            "Cache-Control": "no-cache",
            "Pragma": "no-cache",
            "x-xai-request-id": str(uuid.uuid4()),
            "x-statsig-id": statsig_id(self.config.statsig_id),
        }
        if cookies:
            headers["Cookie"] = "; ".join(cookies)
        return headers

    async def _start(self, method: str, url: str, headers: dict[str, str], body: bytes | None, *,
                     seconds: float, proxy: str) -> Transfer:
        config = self.config
        with translate(proxy):
            return await _transfers(config).start(
                method, url, headers, body, impersonate=config.impersonate, proxy=proxy,
                connect_timeout=min(config.connect_timeout, seconds), lifetime=seconds,
            )

    async def _call(self, method: str, url: str, headers: dict[str, str], body: bytes | None = None, *,
                    seconds: float, proxied: bool = True) -> Reply:
        """A short call, answered whole. Raises `UpstreamTimeout` after `seconds`."""
        proxy = self.config.proxy_url if proxied else ""
        transfer = await self._start(method, url, headers, body, seconds=seconds, proxy=proxy)
        try:
            with translate(proxy):
                data = await transfer.body(asyncio.get_running_loop().time() + seconds)
        except TimeoutError:
            raise UpstreamTimeout(f"no complete answer within {seconds:g} s", phase="total") from None
        finally:
            transfer.abort()
        return Reply(transfer.status, transfer.headers, data)

    @asynccontextmanager
    async def chat(self, token: str, payload: dict, *, first_byte_timeout: float, total_timeout: float
                   ) -> AsyncIterator[LineStream]:
        """POST a chat and yield a `LineStream` of its NDJSON lines as they arrive.

        Raises an `UpstreamError` before yielding when Grok answers an error
        status. Leaving the block stops the transfer at once, even mid-stream.
        """
        proxy = self.config.proxy_url
        transfer = await self._start(
            "POST", self.config.base_url + CHAT_PATH, self.headers(token), json.dumps(payload).encode(),
            seconds=total_timeout + 5, proxy=proxy,
        )
        try:
            with translate(proxy):
                started = await transfer.started(asyncio.get_running_loop().time() + first_byte_timeout)
            if not started:
                raise UpstreamTimeout(
                    f"Grok sent no response headers within {first_byte_timeout:g} s", phase="first_byte"
                )
            if transfer.status != 200:
                raise await self._error_from(transfer)
            yield LineStream(transfer)
        finally:
            transfer.abort()  # nothing when it has ended; else the client left, or we stop reading

    @staticmethod
    async def _error_from(transfer: Transfer) -> UpstreamError:
        try:
            with translate():
                raw = await transfer.body(asyncio.get_running_loop().time() + 10, limit=4096)
            body = raw.decode("utf-8", "replace")
        except (UpstreamError, TimeoutError):
            body = ""
        retry_after = None
        value = transfer.headers.get("retry-after")
        if value and value.strip().isdigit():
            retry_after = float(value)
        return classify_error_body(transfer.status, body, retry_after)

    async def rate_limits(self, token: str, mode: str) -> Reading:
        """`POST /rest/rate-limits` for one mode (§8.1): the account's counters for it."""
        reply = await self._call("POST", self.config.base_url + RATE_LIMITS_PATH, self.headers(token),
                                 json.dumps({"modelName": mode}).encode(), seconds=30)
        if reply.status != 200:
            raise classify_error_body(reply.status, reply.text)
        try:
            body = json.loads(reply.body)
        except ValueError as exc:
            raise UpstreamProtocolError("rate-limits answer is not JSON") from exc
        return parse_rate_limits(body)

    async def probe(self, url: str = "") -> int:
        """Check that this route reaches Grok without being refused; returns the HTTP status.

        Sends one cheap request without an account (`POST /rest/rate-limits` by
        default, or a GET of `url`) through this client's proxy, with its
        `cf_clearance` and user agent. Any answer from behind Cloudflare counts,
        a 401 included. Raises `UpstreamBlocked` for a Cloudflare or anti-bot
        refusal, `UpstreamProxyFailed` when the proxy fails, `UpstreamUnavailable`
        for a 5xx or a network error.
        """
        if url:
            reply = await self._call("GET", url, self.headers(""), seconds=PROBE_TIMEOUT)
        else:
            reply = await self._call("POST", self.config.base_url + RATE_LIMITS_PATH, self.headers(""),
                                     json.dumps({"modelName": "fast"}).encode(), seconds=PROBE_TIMEOUT)
        status = reply.status
        if status == 403 or status >= 500:
            error = classify_error_body(status, reply.text)
            if isinstance(error, UpstreamBlocked | UpstreamUnavailable):
                raise error
        return status

    async def fetch_text(self, url: str) -> str:
        """GET `url` directly (no proxy) and return its body: a proxy-pool API, for instance.

        Raises `UpstreamUnavailable` on a network error or a status other than 200;
        the message names the host only (such URLs often carry an API key).
        """
        host = urlsplit(url).netloc.rpartition("@")[2] or url[:40]
        try:
            reply = await self._call("GET", url, {}, seconds=PROBE_TIMEOUT, proxied=False)
        except UpstreamUnavailable as exc:
            raise UpstreamUnavailable(f"could not fetch from {host}: {exc.__cause__ or exc}") from exc
        if reply.status != 200:
            raise UpstreamUnavailable(f"{host} answered HTTP {reply.status}", status=reply.status)
        return reply.text


class LineStream:
    """The lines of one streaming answer, split from the body pieces as curl delivers them.

    `read(deadline)` returns every complete line that has arrived (at least one), so a
    burst of frames costs one wake-up; `[]` once the answer has ended; None when the
    loop's clock reaches `deadline` first (None: wait as long as it takes). Giving up
    on a wait loses nothing: what arrives later is kept for the next read.
    """

    __slots__ = ("_partial", "_transfer")

    def __init__(self, transfer: Transfer) -> None:
        self._transfer = transfer
        self._partial = b""

    async def read(self, deadline: float | None) -> list[bytes] | None:
        lines: list[bytes] = []
        while not lines:
            try:
                chunks = await self._transfer.read(deadline)
            except RequestException as exc:  # not `translate()`: a context manager per read costs
                raise upstream_error(exc) from exc
            if not chunks:
                if chunks is not None and self._partial:  # the answer ended without a last newline
                    lines.append(self._partial)
                    self._partial = b""
                    return lines
                return chunks
            data = b"".join(chunks)
            if self._partial:
                data = self._partial + data
            *complete, self._partial = data.split(b"\n")
            lines.extend(line for line in complete if line.strip())
        return lines

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        while lines := await self.read(None):
            for line in lines:
                yield line
