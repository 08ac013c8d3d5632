"""HTTP transfers on curl handles kept configured between requests.

curl_cffi's `AsyncSession` resets a handle after every transfer, so each request sets
some forty options again, the browser impersonation among them, and builds a request,
a response, two buffers, a queue, two events and a task around it: a quarter of the
gateway's CPU in our profiles (docs/benchmarks.md). Here the handle keeps what never
changes (impersonation, HTTP version, encodings, buffers) and a request sets only its
own options: URL, method and body, headers, proxy, timeouts and two callbacks. The
bytes go to the `Transfer` straight from curl's write callback, and a reader waits on
one future with a timer, not a task.

How many transfers run at once is `Slots`, a limit the runtime setting
`max_upstream_streams` moves while transfers run (`client._transfers` applies it).

Only the "curl_cffi internals" section below reaches past curl_cffi's documented API;
`compat` names the releases it was checked against.

`gateway.grok` is the only user: it turns what fails here (curl_cffi's
`RequestException` family) into the `UpstreamError` hierarchy.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import Literal, cast

from curl_cffi import AsyncCurl, Curl, CurlECode, CurlError, CurlHttpVersion, CurlInfo, CurlOpt, ffi
from curl_cffi import curl as curl_module
from curl_cffi.requests import exceptions as curl_exceptions
from curl_cffi.requests import impersonate as curl_impersonate
from curl_cffi.requests.exceptions import RequestException

# --- curl_cffi internals ---------------------------------------------------------------------
# From here to the end marker this module reaches past curl_cffi's documented API, and nowhere
# else. `compat.CURL_CFFI_SERIES` names the releases these were checked against;
# tests/test_private_api_contracts.py names the one that moved when an upgrade breaks them.

# Undocumented helpers, no public equivalent: the value curl_cffi's write callback passes on to
# libcurl to abort (any other value it replaces by the piece's length), the error-code -> exception
# mapping its sessions raise through, and the resolution of "chrome" to the newest Chrome target.
_ABORT = curl_module.CURL_WRITEFUNC_ERROR
_error_class = curl_exceptions.code2error
_latest_target = curl_impersonate.resolve_latest_browser_type


class _HttpCurl(Curl):
    """A curl handle for HTTP calls. curl_cffi gives every handle a zero-filled 128 KB
    WebSocket receive buffer up front, sized by the private class attribute overridden below:
    87 % of an open stream's memory in our measurements (docs/benchmarks.md), for a buffer no
    HTTP transfer reads."""

    _WS_RECV_BUFFER_SIZE = 64  # private: `Curl.__init__` allocates `_ws_recv_buffer` of this size
    shape: tuple[str, bool] | None = None  # (impersonation target, HTTP/1.1 only) it is set up for


# --- end of curl_cffi internals --------------------------------------------------------------

UPLOAD_BUFFER = 16 * 1024  # bytes: libcurl's minimum for CURLOPT_UPLOAD_BUFFERSIZE
ACCEPT_ENCODING = b"gzip, deflate, br"  # what curl_cffi asks for by default; curl decodes it
MAX_REDIRECTS = 30


def _error(exc: CurlError) -> RequestException:
    """curl_cffi's own exception class for a curl error code, as its sessions raise them."""
    message = str(exc)
    # `CurlError.code` is typed `int | CurlECode` while these take `CurlECode`: the value is a
    # libcurl code either way, and the mapping (keyed by an IntEnum) looks a plain int up the same.
    code = cast("CurlECode | Literal[0]", exc.code)
    return _error_class(code, message)(message, code)


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

    def _response_code(self) -> int:
        # getinfo's return type covers every CURLINFO; RESPONSE_CODE is a long, which it returns as int.
        return cast("int", self._curl.getinfo(CurlInfo.RESPONSE_CODE))

    def _on_header(self, line: bytes) -> int:
        self._header_lines.append(line)
        return len(line)

    def _on_body(self, chunk: bytes) -> int:
        if self._ended:  # aborted: tell curl to stop
            return _ABORT
        if not self.status:
            self.status = self._response_code()
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
            self.status = self._response_code()
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


class Slots:
    """How many transfers may run at once, a limit that can move while they run.

    `asyncio.Semaphore` fixes its count when it is made; this limit is a runtime setting
    (`max_upstream_streams`), so an operator's change must reach a worker's running loop.
    Raising the limit lets waiters start at once; lowering it lets no new transfer start
    until enough of those running have ended (none is stopped). Waiters start in arrival order.
    """

    __slots__ = ("_busy", "_limit", "_waiters")

    def __init__(self, limit: int) -> None:
        self._limit = max(1, limit)  # 0 would stall every request for good
        self._busy = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def limit(self) -> int:
        return self._limit

    @limit.setter
    def limit(self, limit: int) -> None:
        self._limit = max(1, limit)
        self._wake()

    @property
    def busy(self) -> int:
        """Slots taken: transfers running (and waiters woken but not yet resumed)."""
        return self._busy

    @property
    def waiting(self) -> int:
        return sum(not waiter.done() for waiter in self._waiters)

    async def acquire(self) -> None:
        if self._busy < self._limit and not self._waiters:
            self._busy += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # woken with a slot, then cancelled before it resumed: hand the slot on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        self._busy -= 1
        self._wake()

    def _wake(self) -> None:
        # A woken waiter takes its slot here, so a newcomer cannot take it before the waiter resumes.
        waiters = self._waiters
        while waiters and self._busy < self._limit:
            waiter = waiters.popleft()
            if not waiter.done():
                self._busy += 1
                waiter.set_result(None)


class Transfers:
    """The transfers of one event loop: one curl multi handle and the easy handles it reuses."""

    def __init__(self, *, limit: int = 1000, idle: int = 256) -> None:
        self.loop = asyncio.get_running_loop()
        self._multi = AsyncCurl(loop=self.loop)
        self._idle: list[_HttpCurl] = []
        self._keep = idle  # idle handles kept beyond this number are closed
        self.slots = Slots(limit)  # transfers at once; more wait their turn
        self.closed = False

    async def start(self, method: str, url: str, headers: dict[str, str], body: bytes | None = None, *,
                    impersonate: str, proxy: str = "", connect_timeout: float, lifetime: float) -> Transfer:
        """Send a request; the transfer runs until its end, `abort()` or `lifetime` seconds."""
        await self.slots.acquire()
        try:
            curl = self._take(impersonate, url.startswith("http://"))
            transfer = Transfer(self, curl)
            _prepare(curl, transfer, method, url, headers, body, proxy, connect_timeout, lifetime)
            done = self._multi.add_handle(curl)
        except BaseException:
            self.slots.release()
            raise
        done.add_done_callback(transfer._finished)
        return transfer

    def _take(self, impersonate: str, http1: bool) -> _HttpCurl:
        curl = self._idle.pop() if self._idle else _HttpCurl()  # curl_cffi's default CA bundle, as the multi's
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
        self.slots.release()
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
    target = _latest_target(impersonate)
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

    Through `Curl.setopt`: calling libcurl's setopt directly saved about one point of the
    worker's CPU at 500 streams (docs/benchmarks.md, session 4), within the noise of a run,
    not worth private names. Strings go in as bytes: for a `str`, `setopt` builds a set of
    file-path options on every call. `setopt` keeps the body and the header list alive for
    the transfer; `clean_handles_and_buffers` lets go of both when the handle goes back idle.
    """
    setopt = curl.setopt
    setopt(CurlOpt.URL, url.encode())
    if method == "POST":
        body = body or b""
        setopt(CurlOpt.POSTFIELDS, body)  # not copied by libcurl: `setopt` keeps a reference
        setopt(CurlOpt.POSTFIELDSIZE, len(body))
        setopt(CurlOpt.CUSTOMREQUEST, ffi.NULL)
    else:
        setopt(CurlOpt.HTTPGET, 1)
        setopt(CurlOpt.CUSTOMREQUEST, ffi.NULL if method == "GET" else method.encode())
    lines = [f"{name}: {value}".encode() for name, value in headers.items()]
    lines.append(b"Expect:")  # never wait for a 100 Continue
    setopt(CurlOpt.HTTPHEADER, lines)
    if proxy:
        tunnel = url.startswith("https://") and not proxy.startswith("socks")
        setopt(CurlOpt.PROXY, proxy.encode())
        setopt(CurlOpt.HTTPPROXYTUNNEL, int(tunnel))
    else:
        setopt(CurlOpt.PROXY, ffi.NULL)  # libcurl's default again: the environment's proxy, if any
        setopt(CurlOpt.HTTPPROXYTUNNEL, 0)
    setopt(CurlOpt.CONNECTTIMEOUT_MS, int(connect_timeout * 1000))
    setopt(CurlOpt.TIMEOUT_MS, int(lifetime * 1000))
    setopt(CurlOpt.HEADERFUNCTION, transfer._on_header)
    setopt(CurlOpt.WRITEFUNCTION, transfer._on_body)
