"""A minimal HTTP/1.1 client on `asyncio.Protocol`: the load generator's wire.

One `HttpConnection` per virtual user, kept alive between requests. It parses just
enough HTTP/1.1 to time a response (status line, headers, then a Content-Length,
chunked or close-delimited body) and hands every piece of decoded body to the
caller's `Sink` from `data_received`, so a first token is timed when its bytes
reach the socket, not after a client library's buffering. No TLS, no redirects,
no pipelining: loopback benchmarks need none of them.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Sink(Protocol):
    def status(self, code: int) -> None: ...

    def body(self, data: bytes, now: float) -> None: ...


class _NoSink:
    """The sink between requests: the parser only runs while a request is open, so it receives nothing."""

    def status(self, code: int) -> None:
        pass

    def body(self, data: bytes, now: float) -> None:
        pass


class ConnectionClosed(Exception):
    """The server closed or reset the connection before the response ended."""


class BadResponse(Exception):
    """The server sent something this client cannot parse as HTTP/1.1."""


_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILER, _UNTIL_CLOSE, _IDLE = range(8)


class HttpConnection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buf = bytearray()
        self._state = _IDLE
        self._left = 0  # bytes left in the body (Content-Length) or in the current chunk
        self._keep_alive = True
        self._sink: Sink = _NoSink()
        self._done: asyncio.Future[None] | None = None

    # -- asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if self._state == _IDLE:
            return  # bytes outside a response: ignore (never seen on a sane server)
        self._buf += data
        try:
            self._parse(now)
        except (BadResponse, ValueError) as exc:
            self._fail(BadResponse(str(exc)))
            self.abort()

    def eof_received(self) -> bool:
        if self._state == _UNTIL_CLOSE:
            self._finish()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._state == _UNTIL_CLOSE:
            self._finish()
        elif self._state != _IDLE:
            self._fail(ConnectionClosed(str(exc or "connection closed mid-response")))

    # -- the client side --------------------------------------------------------------
    async def request(self, raw: bytes, sink: Sink) -> None:
        """Send one request and return once its response has been read to the end."""
        if self.closed or self.transport is None:
            raise ConnectionClosed("connection already closed")
        self._sink = sink
        self._state = _HEAD
        self._done = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        await self._done

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # -- parsing ----------------------------------------------------------------------
    def _parse(self, now: float) -> None:
        buf = self._buf
        while buf:
            state = self._state
            if state == _HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                self._head(bytes(buf[:end]))
                del buf[: end + 4]
            elif state in (_LENGTH, _CHUNK_DATA):
                take = min(self._left, len(buf))
                self._sink.body(bytes(buf[:take]), now)
                del buf[:take]
                self._left -= take
                if self._left == 0:
                    if state == _LENGTH:
                        self._finish()
                        return
                    self._state = _CHUNK_END
            elif state == _CHUNK_SIZE:
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                self._left = int(bytes(buf[:end]).split(b";")[0], 16)
                del buf[: end + 2]
                self._state = _CHUNK_DATA if self._left else _TRAILER
            elif state == _CHUNK_END:
                if len(buf) < 2:
                    return
                del buf[:2]
                self._state = _CHUNK_SIZE
            elif state == _TRAILER:
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                del buf[: end + 2]
                if end == 0:  # the empty line after the last chunk (and any trailers)
                    self._finish()
                    return
            elif state == _UNTIL_CLOSE:
                self._sink.body(bytes(buf), now)
                buf.clear()
            else:
                return

    def _head(self, head: bytes) -> None:
        status_line, *lines = head.decode("latin-1").split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise BadResponse(f"bad status line {status_line[:60]!r}")
        code = int(parts[1])
        if code == 100:
            return  # 100 Continue: the real head follows
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        self._sink.status(code)
        self._keep_alive = parts[0] == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        if code in (204, 304):
            self._finish()
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self._state = _CHUNK_SIZE
        elif "content-length" in headers:
            self._left = int(headers["content-length"])
            self._state = _LENGTH
            if self._left == 0:
                self._finish()
        else:
            self._keep_alive = False
            self._state = _UNTIL_CLOSE

    def _finish(self) -> None:
        self._state = _IDLE
        if not self._keep_alive:
            self.closed = True
            if self.transport is not None:
                self.transport.close()
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    def _fail(self, exc: Exception) -> None:
        self._state = _IDLE
        self.closed = True
        if self._done is not None and not self._done.done():
            self._done.set_exception(exc)


async def connect(host: str, port: int) -> HttpConnection:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(HttpConnection, host, port)
    return protocol


def build_request(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
