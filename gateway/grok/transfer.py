"""HTTP transfers on curl handles kept configured between requests.

curl_cffi's `AsyncSession` resets a handle after every transfer, so each request sets
some forty options again, the browser impersonation among them, and builds a request,
a response, two buffers, a queue, two events and a task around it: a quarter of the
gateway's CPU in our profiles (docs/benchmarks.md). Here the handle keeps what never
changes (impersonation, HTTP version, encodings, buffers) and a request sets only its
own options: URL, method and body, headers, proxy, timeouts and two callbacks. The
bytes go to the `Transfer` straight from curl's write callback, and a reader waits on
one future with a timer, not a task.

`gateway.grok` is the only user: it turns what fails here (curl_cffi's
`RequestException` family) into the `UpstreamError` hierarchy.
"""

from __future__ import annotations

import asyncio
import contextlib

from curl_cffi import Curl, CurlError, CurlHttpVersion, CurlInfo, CurlOpt
from curl_cffi._wrapper import ffi, lib
from curl_cffi.aio import AsyncCurl
from curl_cffi.curl import CURL_WRITEFUNC_ERROR
from curl_cffi.requests.exceptions import RequestException, code2error
from curl_cffi.requests.impersonate import resolve_latest_browser_type

UPLOAD_BUFFER = 16 * 1024  # bytes: libcurl's minimum for CURLOPT_UPLOAD_BUFFERSIZE
ACCEPT_ENCODING = b"gzip, deflate, br"  # what curl_cffi asks for by default; curl decodes it
MAX_REDIRECTS = 30


class _HttpCurl(Curl):
    """A curl handle for HTTP calls. curl_cffi gives every handle a zero-filled 128 KB
    WebSocket receive buffer up front: 87 % of an open stream's memory in our measurements
    (docs/benchmarks.md), for a buffer no HTTP transfer reads."""

    _WS_RECV_BUFFER_SIZE = 64
    shape: tuple[str, bool] | None = None  # (impersonation target, HTTP/1.1 only) it is set up for


def _error(exc: CurlError) -> RequestException:
    """curl_cffi's own exception class for a curl error code, as its sessions raise them."""
    message = str(exc)
    return code2error(exc.code, message)(message, exc.code)


class Transfer:
    """One request and its answer, as it arrives.

    The answer "starts" at its first body byte, or at its end when it has no body;
    `status` and `headers` are known from then on. `read()` hands over the body in
    the pieces curl delivered them.
    """

    __slots__ = (
        "_chunks", "_curl", "_deadline", "_ended", "_error", "_header_lines", "_loop", "_pool", "_timer", "_waiter",
        "status",
    )

    def __init__(self, pool: Transfers, curl: _HttpCurl) -> None:
        self._pool = pool
        self._curl = curl
        self._loop = pool.loop
        self._chunks: list[bytes] = []
        self._header_lines: list[bytes] = []
        self._waiter: asyncio.Future[bool] | None = None
        self._deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._ended = False
        self._error: RequestException | None = None
        self.status = 0

    # curl's side (callbacks run inside `socket_action`, on the loop)

    def _on_header(self, line: bytes) -> int:
        self._header_lines.append(line)
        return len(line)

    def _on_body(self, chunk: bytes) -> int:
        if self._ended:  # aborted: tell curl to stop
            return CURL_WRITEFUNC_ERROR
        if not self.status:
            self.status = self._curl.getinfo(CurlInfo.RESPONSE_CODE)
        self._chunks.append(chunk)
        self._wake()
        return len(chunk)

    def _finished(self, done: asyncio.Future) -> None:
        if self._pool.closed and not self._ended:
            self._error = RequestException("the gateway closed its upstream transfers")
        elif not done.cancelled():
            exc = done.exception()
            if isinstance(exc, CurlError):
                self._error = _error(exc)
            elif exc is not None:
                self._error = RequestException(f"transfer failed: {exc}")
        if not self.status:
            self.status = self._curl.getinfo(CurlInfo.RESPONSE_CODE)
        self._ended = True
        self._wake()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pool._release(self._curl)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    # the reader's side

    async def _wait(self, deadline: float | None) -> bool:
        """Until curl brings something (True) or the loop's clock reaches `deadline` (False)."""
        waiter = self._waiter = self._loop.create_future()
        self._deadline = deadline
        timer = self._timer
        if deadline is not None and (timer is None or timer.when() > deadline):
            # One timer per transfer, not one per wait: deadlines mostly move forward (an idle
            # gap counted from the last piece), so the armed timer fires early at worst and
            # re-arms itself for the deadline of the wait then in progress (`_check_deadline`).
            if timer is not None:
                timer.cancel()
            self._timer = self._loop.call_at(deadline, self._check_deadline)
        try:
            return await waiter
        finally:
            self._waiter = None

    def _check_deadline(self) -> None:
        self._timer = None
        waiter, deadline = self._waiter, self._deadline
        if waiter is None or waiter.done() or deadline is None:
            return  # no wait in progress: the next one arms a timer again
        if self._loop.time() >= deadline:
            waiter.set_result(False)
        else:
            self._timer = self._loop.call_at(deadline, self._check_deadline)

    async def started(self, deadline: float | None) -> bool:
        """Wait for the answer to start; False if `deadline` came first. Raises what
        failed before any body byte (connect, proxy, TLS, a cut before the body)."""
        while not self._chunks and not self._ended:
            if not await self._wait(deadline):
                return False
        if not self._chunks and self._error is not None:
            raise self._error
        return True

    async def read(self, deadline: float | None) -> list[bytes] | None:
        """The body pieces that have arrived (at least one); [] once the body has ended;
        None when `deadline` comes first. A failure is raised after the pieces before it."""
        while not self._chunks:
            if self._ended:
                if self._error is not None:
                    raise self._error
                return []
            if not await self._wait(deadline):
                return None
        chunks, self._chunks = self._chunks, []
        return chunks

    async def body(self, deadline: float | None, limit: int = 1 << 24) -> bytes:
        """The whole body (at most `limit` bytes are kept). Raises TimeoutError at `deadline`."""
        parts: list[bytes] = []
        size = 0
        while chunks := await self.read(deadline):
            for chunk in chunks:
                if size < limit:
                    parts.append(chunk)
                    size += len(chunk)
        if chunks is None:
            raise TimeoutError  # the caller owns the transfer and aborts it
        return b"".join(parts)[:limit]

    @property
    def headers(self) -> dict[str, str]:
        """The final answer's headers, names lowercased (the last of a repeated name wins)."""
        block: list[bytes] = []
        for line in self._header_lines:
            if line.startswith(b"HTTP/"):
                block = []  # a redirect, a 100 Continue or a proxy's CONNECT answer came before
            elif line.strip():
                block.append(line)
        headers: dict[str, str] = {}
        for line in block:
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        return headers

    def abort(self) -> None:
        """Stop the transfer now, whatever state it is in; its connection is closed."""
        if not self._ended:
            self._ended = True
            self._pool._abort(self._curl)


class Transfers:
    """The transfers of one event loop: one curl multi handle and the easy handles it reuses."""

    def __init__(self, *, limit: int = 1000, idle: int = 256) -> None:
        self.loop = asyncio.get_running_loop()
        self._multi = AsyncCurl(loop=self.loop)
        self._idle: list[_HttpCurl] = []
        self._keep = idle  # idle handles kept beyond this number are closed
        self._slots = asyncio.Semaphore(limit)  # transfers at once; more wait their turn
        self.closed = False

    async def start(self, method: str, url: str, headers: dict[str, str], body: bytes | None = None, *,
                    impersonate: str, proxy: str = "", connect_timeout: float, lifetime: float) -> Transfer:
        """Send a request; the transfer runs until its end, `abort()` or `lifetime` seconds."""
        await self._slots.acquire()
        try:
            curl = self._take(impersonate, url.startswith("http://"))
            transfer = Transfer(self, curl)
            _prepare(curl, transfer, method, url, headers, body, proxy, connect_timeout, lifetime)
            done = self._multi.add_handle(curl)
        except BaseException:
            self._slots.release()
            raise
        done.add_done_callback(transfer._finished)
        return transfer

    def _take(self, impersonate: str, http1: bool) -> _HttpCurl:
        curl = self._idle.pop() if self._idle else _HttpCurl(cacert=self._multi._cacert)
        shape = (impersonate, http1)
        if curl.shape != shape:
            _shape(curl, *shape)
        return curl

    def _abort(self, curl: _HttpCurl) -> None:
        # Dropping the handle from the multi handle cancels its future, whose callback releases it.
        if not self.closed:
            with contextlib.suppress(CurlError):  # already done: its callback is on its way
                self._multi.remove_handle(curl)

    def _release(self, curl: _HttpCurl) -> None:
        self._slots.release()
        curl.clean_handles_and_buffers()  # frees the header list; the next request sets its own
        if self.closed or len(self._idle) >= self._keep:
            curl.close()
        else:
            self._idle.append(curl)

    @property
    def idle(self) -> list[_HttpCurl]:
        """Handles waiting for their next request (tests look at them)."""
        return self._idle

    async def close(self) -> None:
        """Stop every transfer and free the handles."""
        self.closed = True
        await self._multi.close()  # ends open transfers: their callbacks release (and close) their handles
        await asyncio.sleep(0)
        while self._idle:
            self._idle.pop().close()


def _shape(curl: _HttpCurl, impersonate: str, http1: bool) -> None:
    """What a handle keeps from one request to the next: set once, or when the target changes."""
    curl.setopt(CurlOpt.ACCEPT_ENCODING, ACCEPT_ENCODING)
    # Plain http (the fake upstream) speaks HTTP/1.1; otherwise the impersonated browser's choice.
    curl.setopt(CurlOpt.HTTP_VERSION, CurlHttpVersion.V1_1 if http1 else CurlHttpVersion.NONE)
    target = resolve_latest_browser_type(impersonate)
    if curl.impersonate(target, default_headers=True) != 0:
        raise RequestException(f"curl cannot impersonate {impersonate!r}")
    # libcurl's default 64 KB upload buffer is allocated per transfer for a JSON body of
    # a few KB; its minimum, 16 KB, cut an open stream's memory by ~48 KB (docs/benchmarks.md).
    curl.setopt(CurlOpt.UPLOAD_BUFFERSIZE, UPLOAD_BUFFER)
    curl.setopt(CurlOpt.FOLLOWLOCATION, 1)
    curl.setopt(CurlOpt.MAXREDIRS, MAX_REDIRECTS)
    # A new connection when the proxy's credentials change, and no TLS session reused across proxies.
    curl.setopt(CurlOpt.PROXY_CREDENTIAL_NO_REUSE, 1)
    # No cookie engine at all: the handles serve every account, so a cookie Grok sets for one
    # (Cloudflare's __cf_bm, a rotated sso) must never ride on the next account's request.
    curl.shape = (impersonate, http1)


def _prepare(curl: _HttpCurl, transfer: Transfer, method: str, url: str, headers: dict[str, str],
             body: bytes | None, proxy: str, connect_timeout: float, lifetime: float) -> None:
    """The options of one request, each set every time (the handle still holds the last request's).

    Straight through libcurl's setopt: curl_cffi's `Curl.setopt` builds two dicts and a
    set to classify each option, a cost paid a dozen times per request (docs/benchmarks.md).
    """
    handle = curl._curl
    _set(handle, _URL, url.encode())
    if method == "POST":
        body = body or b""
        curl._body_handle = body  # not copied by libcurl: the handle keeps it until the transfer ends
        _set(handle, _POSTFIELDS, body)
        _set(handle, _POSTFIELDSIZE, ffi.new("long*", len(body)))
        _set(handle, _CUSTOMREQUEST, ffi.NULL)
    else:
        _set(handle, _HTTPGET, ffi.new("long*", 1))
        _set(handle, _CUSTOMREQUEST, ffi.NULL if method == "GET" else method.encode())
    lines = curl._headers  # freed when the handle goes back idle (`clean_handles_and_buffers`)
    for name, value in headers.items():
        lines = lib.curl_slist_append(lines, f"{name}: {value}".encode())
    curl._headers = lines = lib.curl_slist_append(lines, b"Expect:")  # never wait for a 100 Continue
    _set(handle, _HTTPHEADER, lines)
    if proxy:
        tunnel = url.startswith("https://") and not proxy.startswith("socks")
        _set(handle, _PROXY, proxy.encode())
        _set(handle, _HTTPPROXYTUNNEL, ffi.new("long*", int(tunnel)))
    else:
        _set(handle, _PROXY, ffi.NULL)  # libcurl's default again: the environment's proxy, if any
        _set(handle, _HTTPPROXYTUNNEL, ffi.new("long*", 0))
    _set(handle, _CONNECTTIMEOUT_MS, ffi.new("long*", int(connect_timeout * 1000)))
    _set(handle, _TIMEOUT_MS, ffi.new("long*", int(lifetime * 1000)))
    curl.setopt(CurlOpt.HEADERFUNCTION, transfer._on_header)
    curl.setopt(CurlOpt.WRITEFUNCTION, transfer._on_body)


_URL, _POSTFIELDS, _POSTFIELDSIZE, _CUSTOMREQUEST, _HTTPGET, _HTTPHEADER, _PROXY, _HTTPPROXYTUNNEL = (
    int(option) for option in (CurlOpt.URL, CurlOpt.POSTFIELDS, CurlOpt.POSTFIELDSIZE, CurlOpt.CUSTOMREQUEST,
                               CurlOpt.HTTPGET, CurlOpt.HTTPHEADER, CurlOpt.PROXY, CurlOpt.HTTPPROXYTUNNEL)
)
_CONNECTTIMEOUT_MS, _TIMEOUT_MS = int(CurlOpt.CONNECTTIMEOUT_MS), int(CurlOpt.TIMEOUT_MS)


def _set(handle: object, option: int, value: object) -> None:
    """`curl_easy_setopt` (curl_cffi's glue takes a long option as a `long*`)."""
    code = lib._curl_easy_setopt(handle, option, value)
    if code:
        message = f"curl refused option {CurlOpt(option).name} (libcurl error {code})"
        raise code2error(code, message)(message, code)
