"""The one client that talks to Grok: curl_cffi, async, streaming.

Every outbound call goes through `GrokClient`. HTTP statuses, in-band error
bodies and curl errors are translated here, once, into this hierarchy:

    UpstreamError                  anything that went wrong upstream
     ├── UpstreamAuthError         401 / invalid-credential 400: the account is invalid
     │    └── UpstreamBanned       403 `blocked-user`: the account is banned
     ├── UpstreamBlocked           403 Cloudflare challenge or anti-bot: change proxy / cf_clearance
     ├── UpstreamRateLimited       429 or "usage limit": cool the account down
     ├── UpstreamUnavailable       5xx, network, TLS, a cut transfer: retry elsewhere
     │    ├── UpstreamProxyFailed  the proxy in front of Grok failed (unreachable, refused, TLS): change proxy
     │    └── UpstreamTimeout      no first byte / idle gap / total time exceeded (ours)
     └── UpstreamProtocolError     an answer we cannot read

No other module catches a curl_cffi exception. Each request leaves through the
proxy, `cf_clearance` and user agent of its client's `ClientConfig` (one
`GrokClient` per route; the curl session underneath is shared per event loop).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import json
import logging
import random
import string
import uuid
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

from curl_cffi import Curl, CurlECode, CurlError, CurlHttpVersion, CurlOpt
from curl_cffi.requests import AsyncSession, Response
from curl_cffi.requests.exceptions import ConnectionError as CurlConnectionError
from curl_cffi.requests.exceptions import ProxyError, RequestException, SSLError
from curl_cffi.requests.streams import STREAM_END

logger = logging.getLogger(__name__)

CHAT_PATH = "/rest/app-chat/conversations/new"
RATE_LIMITS_PATH = "/rest/rate-limits"
UPLOAD_BUFFER = 16 * 1024  # bytes: libcurl's minimum for CURLOPT_UPLOAD_BUFFERSIZE
PROBE_TIMEOUT = 20.0  # seconds for a proxy probe or a proxy-pool fetch, connect included

# Body markers that decide what a 4xx means (protocol §11).
_CREDENTIAL_MARKERS = (
    "invalid-credentials", "bad-credentials", "failed to look up session id", "email-domain-rejected",
    "session not found", "account suspended", "token revoked", "token expired",
)
_BANNED_MARKERS = ("blocked-user", "user is blocked")
_CLOUDFLARE_MARKERS = ("just a moment", "challenge-platform", "__cf_chl", "cf-chl-", "cloudflare")


class UpstreamError(Exception):
    """Grok did not give us a usable answer."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class UpstreamAuthError(UpstreamError):
    """Grok rejected the account's credentials (401, or a 400 naming them)."""


class UpstreamBanned(UpstreamAuthError):
    """Grok says the account is blocked (`blocked-user`)."""


class UpstreamBlocked(UpstreamError):
    """Cloudflare or the anti-bot check refused the request: the IP or fingerprint, not the account."""

    def __init__(self, message: str, *, status: int | None = 403, kind: str = "cloudflare") -> None:
        super().__init__(message, status=status)
        self.kind = kind


class UpstreamRateLimited(UpstreamError):
    """The account hit its rate or usage limit for this mode."""

    def __init__(self, message: str, *, status: int | None = 429, retry_after: float | None = None) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class UpstreamUnavailable(UpstreamError):
    """5xx, a network or TLS failure, or a transfer cut short: worth retrying elsewhere."""


class UpstreamProxyFailed(UpstreamUnavailable):
    """The proxy in front of Grok failed: it did not resolve or connect, refused the tunnel, or broke TLS."""


class UpstreamTimeout(UpstreamUnavailable):
    """Grok sent nothing within one of our budgets (first byte, idle gap, total)."""

    def __init__(self, message: str, *, phase: str) -> None:
        super().__init__(message)
        self.phase = phase


class UpstreamProtocolError(UpstreamError):
    """Grok answered something that is not the protocol we speak."""


def classify_error_body(status: int, body: str, retry_after: float | None = None) -> UpstreamError:
    """Map an HTTP error status and its body to the hierarchy above."""
    text = body.lower()
    snippet = " ".join(body.split())[:200]
    if any(m in text for m in _BANNED_MARKERS):
        return UpstreamBanned(f"account is blocked by Grok: {snippet}", status=status)
    if status == 401 or (status == 400 and any(m in text for m in _CREDENTIAL_MARKERS)):
        return UpstreamAuthError(f"Grok rejected the account's sso token (HTTP {status})", status=status)
    if status == 403:
        if "anti-bot" in text:
            return UpstreamBlocked("Grok's anti-bot check rejected the request", kind="antibot")
        return UpstreamBlocked("Cloudflare blocked the request (challenge page)", kind="cloudflare")
    if status == 429:
        return UpstreamRateLimited(f"Grok rate limit: {snippet or 'too many requests'}", retry_after=retry_after)
    if status >= 500:
        return UpstreamUnavailable(f"Grok returned HTTP {status}", status=status)
    return UpstreamProtocolError(f"Grok returned HTTP {status}: {snippet}", status=status)


def classify_inband_error(message: str, code: object = None) -> UpstreamError:
    """An error that arrived inside a 200 stream, named like the HTTP status it stands for (§11.2)."""
    text = message.lower()
    if "usage limit" in text or "usage quota" in text or "rate limit" in text or "too many requests" in text:
        return UpstreamRateLimited(f"Grok rate limit: {message}", status=None)
    if code == 8:
        return UpstreamRateLimited(f"Grok rate limit: {message}", status=None)
    if any(m in text for m in _BANNED_MARKERS):
        return UpstreamBanned(f"account is blocked by Grok: {message}")
    if "anti-bot" in text or code == 7:
        return UpstreamBlocked(f"Grok's anti-bot check rejected the request: {message}", status=None, kind="antibot")
    if code == 16 or any(m in text for m in _CREDENTIAL_MARKERS):
        return UpstreamAuthError(f"Grok rejected the account: {message}")
    # Anything else stands for a 5xx: worth another account.
    return UpstreamUnavailable(f"Grok reported an error: {message}")


# With a proxy in use, curl connects to the proxy, so these failures are the proxy's.
_PROXY_CODES = {CurlECode.COULDNT_RESOLVE_PROXY, CurlECode.COULDNT_CONNECT, CurlECode.PROXY}


def _proxy_failure(exc: RequestException) -> bool:
    if isinstance(exc, ProxyError | SSLError):
        return True
    return isinstance(exc, CurlConnectionError) and getattr(exc, "code", None) in _PROXY_CODES


@contextmanager
def _translate(proxy: str = "") -> Iterator[None]:
    """Turn every curl_cffi failure into an `UpstreamUnavailable`, keeping the cause.

    When the request went through `proxy`, failures that happen between us and the
    proxy (resolve, connect, tunnel, TLS handshake) become `UpstreamProxyFailed`.
    """
    try:
        yield
    except RequestException as exc:
        if proxy and _proxy_failure(exc):
            raise UpstreamProxyFailed(f"proxy {mask_proxy(proxy)} failed: {exc}") from exc
        raise UpstreamUnavailable(f"network error talking to Grok: {exc}") from exc


def mask_proxy(url: str) -> str:
    """`http://user:****@host:port`: a proxy URL fit for logs and messages (the password never shows)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    userinfo, _, hostpart = rest.rpartition("@")
    return f"{scheme}://{userinfo.split(':', 1)[0]}:****@{hostpart}"


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


# The curl handles a request took, so a transfer can be aborted at once even when
# no byte arrives (curl only checks `quit_now` when data comes in).
_handles: contextvars.ContextVar[list[Curl]] = contextvars.ContextVar("curl_handles")


class _HttpCurl(Curl):
    """A curl handle for HTTP calls. curl_cffi gives every handle a zero-filled 128 KB
    WebSocket receive buffer up front: 87 % of an open stream's memory in our measurements
    (docs/benchmarks.md), for a buffer no HTTP transfer reads."""

    _WS_RECV_BUFFER_SIZE = 4096


class _Session(AsyncSession):
    async def pop_curl(self) -> Curl:
        curl = await self.pool.get()  # as AsyncSession.pop_curl (curl_cffi 0.16), with a lighter handle
        if curl is None:
            curl = _HttpCurl(cacert=self.acurl._cacert, debug=self.debug)
        holder = _handles.get(None)
        if holder is not None:
            holder.append(curl)
        return curl

    def abort(self, curls: list[Curl]) -> None:
        """Drop these transfers from the multi handle now; their connections close."""
        for curl in curls:
            with contextlib.suppress(CurlError):
                self.acurl.remove_handle(curl)


# One session per event loop (a session is bound to the loop it was made on).
_sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Session] = weakref.WeakKeyDictionary()


# A block that opened its own session (`own_session`) uses it instead of the loop's.
_own: contextvars.ContextVar[_Session | None] = contextvars.ContextVar("own_session", default=None)


def _new_session(config: ClientConfig) -> _Session:
    return _Session(
        impersonate=config.impersonate,
        # The default of 10 would silently queue the 11th concurrent stream.
        max_clients=config.max_clients,
        http_version=CurlHttpVersion.V1_1 if config.base_url.startswith("http://") else None,
        # No session-wide proxy: each request names its own (`ClientConfig.proxy_url`).
        # libcurl's default 64 KB upload buffer is allocated per transfer for a JSON body of
        # a few KB; its minimum, 16 KB, cut an open stream's memory by ~48 KB (docs/benchmarks.md).
        curl_options={CurlOpt.UPLOAD_BUFFERSIZE: UPLOAD_BUFFER},
        # No cookie jar: the session serves every account, so a cookie Grok sets for one (Cloudflare's
        # __cf_bm, a rotated sso) must not ride on the next account's request. Each request carries
        # exactly the cookies `GrokClient.headers` names.
        discard_cookies=True,
    )


def _session(config: ClientConfig) -> _Session:
    own = _own.get()
    if own is not None:
        return own
    loop = asyncio.get_running_loop()
    session = _sessions.get(loop)
    if session is None:
        session = _sessions[loop] = _new_session(config)
    return session


@asynccontextmanager
async def own_session(config: ClientConfig) -> AsyncIterator[None]:
    """Calls inside this block use a session of their own, closed on the way out.

    For work that runs on a short-lived loop (an admin action through
    `async_to_sync`), so no session outlives the loop it belongs to.
    """
    session = _new_session(config)
    marker = _own.set(session)
    try:
        yield
    finally:
        _own.reset(marker)
        await session.close()


async def close_sessions() -> None:
    """Close this loop's session (tests and shutdown)."""
    session = _sessions.pop(asyncio.get_running_loop(), None)
    if session is not None:
        await session.close()


class GrokClient:
    """Grok as seen from one route: `config` names the proxy, `cf_clearance` and user agent to use."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config

    @property
    def _proxy(self) -> str | None:
        return self.config.proxy_url or None

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

    @asynccontextmanager
    async def chat(self, token: str, payload: dict, *, first_byte_timeout: float, total_timeout: float
                   ) -> AsyncIterator[LineStream]:
        """POST a chat and yield a `LineStream` of its NDJSON lines as they arrive.

        Raises an `UpstreamError` before yielding when Grok answers an error
        status. Leaving the block stops the transfer at once, even mid-stream.
        """
        url = self.config.base_url + CHAT_PATH
        session = _session(self.config)
        curls: list[Curl] = []
        marker = _handles.set(curls)
        try:
            request = asyncio.ensure_future(session.request(
                "POST", url, headers=self.headers(token), data=json.dumps(payload), stream=True,
                timeout=(self.config.connect_timeout, total_timeout + 5), proxy=self._proxy,
            ))
        finally:
            _handles.reset(marker)
        try:
            done, _ = await asyncio.wait((request,), timeout=first_byte_timeout)
        except BaseException:  # our caller was cancelled (the client left): stop the transfer too
            await _abort(session, curls, request)
            raise
        if not done:
            await _abort(session, curls, request)
            raise UpstreamTimeout(
                f"Grok sent no response headers within {first_byte_timeout:g} s", phase="first_byte"
            )
        with _translate(self.config.proxy_url):
            response = request.result()
        try:
            if response.status_code != 200:
                raise await self._error_from(response)
            yield LineStream(response.queue)
        finally:
            if response.quit_now is not None:
                response.quit_now.set()
            await _abort(session, curls, response.astream_task)

    @staticmethod
    async def _error_from(response: Response) -> UpstreamError:
        try:
            with _translate():
                body = (await asyncio.wait_for(response.acontent(), 10))[:4096].decode("utf-8", "replace")
        except (UpstreamError, TimeoutError):
            body = ""
        retry_after = None
        raw = response.headers.get("retry-after")
        if raw and raw.strip().isdigit():
            retry_after = float(raw)
        return classify_error_body(response.status_code, body, retry_after)

    async def rate_limits(self, token: str, mode: str) -> dict:
        """`POST /rest/rate-limits` for one mode (§8.1); the pools issue builds quotas on it."""
        session = _session(self.config)
        with _translate(self.config.proxy_url):
            response = await session.post(
                self.config.base_url + RATE_LIMITS_PATH, headers=self.headers(token),
                data=json.dumps({"modelName": mode}), timeout=30, proxy=self._proxy,
            )
        if response.status_code != 200:
            raise classify_error_body(response.status_code, response.text)
        try:
            return response.json()
        except ValueError as exc:
            raise UpstreamProtocolError("rate-limits answer is not JSON") from exc

    async def probe(self, url: str = "") -> int:
        """Check that this route reaches Grok without being refused; returns the HTTP status.

        Sends one cheap request without an account (`POST /rest/rate-limits` by
        default, or a GET of `url`) through this client's proxy, with its
        `cf_clearance` and user agent. Any answer from behind Cloudflare counts,
        a 401 included. Raises `UpstreamBlocked` for a Cloudflare or anti-bot
        refusal, `UpstreamProxyFailed` when the proxy fails, `UpstreamUnavailable`
        for a 5xx or a network error.
        """
        session = _session(self.config)
        timeouts = (min(self.config.connect_timeout, PROBE_TIMEOUT), PROBE_TIMEOUT)
        with _translate(self.config.proxy_url):
            if url:
                response = await session.get(url, headers=self.headers(""), timeout=timeouts, proxy=self._proxy)
            else:
                response = await session.post(
                    self.config.base_url + RATE_LIMITS_PATH, headers=self.headers(""),
                    data=json.dumps({"modelName": "fast"}), timeout=timeouts, proxy=self._proxy,
                )
        status = response.status_code
        if status == 403 or status >= 500:
            error = classify_error_body(status, response.text)
            if isinstance(error, UpstreamBlocked | UpstreamUnavailable):
                raise error
        return status

    async def fetch_text(self, url: str) -> str:
        """GET `url` directly (no proxy) and return its body: a proxy-pool API, for instance.

        Raises `UpstreamUnavailable` on a network error or a status other than 200;
        the message names the host only (such URLs often carry an API key).
        """
        session = _session(self.config)
        host = urlsplit(url).netloc.rpartition("@")[2] or url[:40]
        try:
            response = await session.get(url, timeout=PROBE_TIMEOUT)
        except RequestException as exc:
            raise UpstreamUnavailable(f"could not fetch from {host}: {exc}") from exc
        if response.status_code != 200:
            raise UpstreamUnavailable(f"{host} answered HTTP {response.status_code}", status=response.status_code)
        return response.text


class LineStream:
    """The lines of one streaming answer, read straight from the queue curl's callbacks fill.

    `read(deadline)` returns every complete line that has arrived (at least one), so a
    burst of frames costs one wake-up; `[]` once the answer has ended; None when the
    loop's clock reaches `deadline` first (None: wait as long as it takes). Waiting
    costs a timer, not a task, and giving up on a wait loses nothing (the queue keeps
    what arrives later).
    """

    __slots__ = ("_ended", "_error", "_partial", "_queue")

    def __init__(self, queue: asyncio.Queue) -> None:
        self._queue = queue
        self._partial = b""
        self._ended = False
        self._error: RequestException | None = None  # raised once the lines before it are read

    async def read(self, deadline: float | None) -> list[bytes] | None:
        queue = self._queue
        lines: list[bytes] = []
        while not lines and not self._ended:
            if queue.empty():
                try:
                    async with asyncio.timeout_at(deadline):
                        chunk = await queue.get()
                except TimeoutError:
                    return None
                self._take(chunk, lines)
            while not self._ended and not queue.empty():
                self._take(queue.get_nowait(), lines)
        if not lines and self._error is not None:
            with _translate():
                raise self._error
        return lines

    def _take(self, chunk: object, lines: list[bytes]) -> None:
        if chunk is STREAM_END:
            self._ended = True
            if self._partial:
                lines.append(self._partial)
                self._partial = b""
            return
        if isinstance(chunk, RequestException):
            self._ended = True
            self._error = chunk
            return
        assert isinstance(chunk, bytes)
        if self._partial:
            chunk = self._partial + chunk
        *complete, self._partial = chunk.split(b"\n")
        lines.extend(line for line in complete if line.strip())

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        while lines := await self.read(None):
            for line in lines:
                yield line


async def _abort(session: _Session, curls: list[Curl], task: asyncio.Future | None) -> None:
    """Stop a transfer now, whatever state it is in, and wait for curl to let go of it."""
    if task is not None and not task.done():
        session.abort(curls)
        task.cancel()
    if task is not None:
        await asyncio.gather(task, return_exceptions=True)
