"""A minimal HTTP/1.1 server on asyncio streams, written for the fake upstream.

We do not use a framework here because the fake must control the wire exactly: each
NDJSON line leaves as its own chunk the moment it is produced, a stall is real
silence, and a "cut" drops the TCP connection without the terminating chunk.

Supported: keep-alive, Content-Length and chunked request bodies, `Expect:
100-continue`, fixed-length responses and chunked streamed responses made of steps
(a line, a pause, or a cut). A client that hangs up mid-stream is noticed within one
step, even during a long pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from urllib.parse import unquote

logger = logging.getLogger(__name__)

MAX_HEAD = 64 * 1024
DISCONNECT_CHECK = 0.25  # longest a pause goes without noticing that the client left
MAX_BODY = 80 * 1024 * 1024  # above grok's 64 MiB upload budget, so big uploads still reach the route


@dataclass
class Request:
    method: str
    path: str  # percent-decoded, without the query string
    query: str
    version: str
    headers: dict[str, str]  # lower-case names; repeated headers joined
    body: bytes = b""

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Pause:
    seconds: float


@dataclass(frozen=True)
class Cut:
    """Drop the connection here, without the zero-length chunk that ends the body."""


Step = bytes | Pause | Cut


@dataclass
class StreamResponse:
    steps: Iterable[Step]
    status: int = 200
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    delay_headers: float = 0.0  # silence before even the status line
    on_open: Callable[[], None] | None = None
    on_close: Callable[[str], None] | None = None  # "completed" | "disconnected" | "cut"


Reply = Response | StreamResponse
Handler = Callable[[Request], Awaitable[Reply]]


class BadRequestError(Exception):
    """Raised when the bytes on the connection are not an HTTP/1.x request we accept."""


class HttpServer:
    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task] = set()
        self.accepted = 0  # connections ever accepted: lets tests see keep-alive reuse

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._serve, host, port, backlog=1024)
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        # Python 3.11's wait_closed() does not wait for open connections: end them ourselves.
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self.accepted += 1
        conn = _Connection(reader, writer)
        try:
            while await self._one_exchange(conn):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # stop() cancels us. Python 3.11's stream protocol calls task.exception() on
            # the finished task and logs a traceback if it ended cancelled, so end quietly.
            pass
        finally:
            self._connections.discard(task)
            writer.close()

    async def _one_exchange(self, conn: _Connection) -> bool:
        """Serve one request; True when the connection stays open for the next."""
        try:
            request = await conn.read_request()
        except BadRequestError as exc:
            await conn.send(Response(400, f"bad request: {exc}".encode(), "text/plain"), keep_alive=False)
            return False
        if request is None:
            return False
        try:
            reply = await self._handler(request)
        except Exception:
            logger.exception("fakegrok handler failed on %s %s", request.method, request.path)
            reply = Response(500, b'{"code":13,"message":"fake internal error","details":[]}')
        if isinstance(reply, StreamResponse):
            return await conn.send_stream(reply, request) and request.keep_alive
        await conn.send(reply, request.keep_alive)
        return request.keep_alive


class _Connection:
    """One client connection, with our own read buffer.

    The buffer lets a watcher read from the socket while a response streams (to see
    EOF) without losing any bytes that belong to the next request.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buffer = bytearray()

    async def _fill(self) -> bool:
        data = await self.reader.read(65536)
        self.buffer += data
        return bool(data)

    async def _read_until(self, marker: bytes, limit: int) -> bytes | None:
        while (end := self.buffer.find(marker)) < 0:
            if len(self.buffer) > limit:
                raise BadRequestError("header section too large")
            if not await self._fill():
                if self.buffer:
                    raise BadRequestError("connection closed inside the request")
                return None
        data = bytes(self.buffer[:end])
        del self.buffer[: end + len(marker)]
        return data

    async def _read_exact(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not await self._fill():
                raise BadRequestError("connection closed inside the body")
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    async def read_request(self) -> Request | None:
        head = await self._read_until(b"\r\n\r\n", MAX_HEAD)
        if head is None:
            return None
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise BadRequestError(f"bad request line {request_line[:80]!r}")
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in header_lines:
            name, sep, value = line.partition(":")
            if not sep:
                raise BadRequestError(f"bad header line {line[:80]!r}")
            name, value = name.strip().lower(), value.strip()
            joiner = "; " if name == "cookie" else ", "
            headers[name] = f"{headers[name]}{joiner}{value}" if name in headers else value
        raw_path, _, query = target.partition("?")
        request = Request(method.upper(), unquote(raw_path), query, version, headers)
        if headers.get("expect", "").lower() == "100-continue":
            self.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await self.writer.drain()
        request.body = await self._read_body(headers)
        return request

    async def _read_body(self, headers: dict[str, str]) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = bytearray()
            while True:
                size_line = await self._read_until(b"\r\n", MAX_HEAD)
                try:
                    size = int((size_line or b"").split(b";")[0], 16)
                except ValueError as exc:
                    raise BadRequestError("bad chunk size") from exc
                if size == 0:
                    await self._read_until(b"\r\n", MAX_HEAD)  # no trailers expected
                    return bytes(body)
                if len(body) + size > MAX_BODY:
                    raise BadRequestError("body too large")
                body += await self._read_exact(size + 2)
                del body[-2:]
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError as exc:
            raise BadRequestError("bad content-length") from exc
        if not 0 <= length <= MAX_BODY:
            raise BadRequestError("bad content-length")
        return await self._read_exact(length)

    def _head(self, status: int, content_type: str, extra: dict[str, str], keep_alive: bool) -> bytes:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Unknown"
        lines = [
            f"HTTP/1.1 {status} {phrase}",
            f"Date: {formatdate(usegmt=True)}",
            "Server: fakegrok",
            f"Content-Type: {content_type}",
            f"Connection: {'keep-alive' if keep_alive else 'close'}",
            *(f"{name}: {value}" for name, value in extra.items()),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def send(self, response: Response, keep_alive: bool) -> None:
        extra = {**response.headers, "Content-Length": str(len(response.body))}
        self.writer.write(self._head(response.status, response.content_type, extra, keep_alive))
        self.writer.write(response.body)
        await self.writer.drain()

    async def _watch(self) -> None:
        # curl sends nothing while it waits for a response (no pipelining), so the only
        # thing this read can see is EOF or a reset: the client has gone.
        with contextlib.suppress(ConnectionError):
            while await self._fill():
                pass

    async def send_stream(self, response: StreamResponse, request: Request) -> bool:
        """Stream the steps; True when the body ended normally."""
        chunked = request.version == "HTTP/1.1"  # HTTP/1.0 clients get a close-delimited body
        keep_alive = request.keep_alive and chunked
        watcher = asyncio.create_task(self._watch())
        outcome = "disconnected"
        counted = False  # whether on_close has already run
        if response.on_open:
            response.on_open()
        try:
            if response.delay_headers and await _client_left(watcher, response.delay_headers):
                return False
            extra = {"Cache-Control": "no-cache", **response.headers}
            if chunked:
                extra["Transfer-Encoding"] = "chunked"
            self.writer.write(self._head(response.status, response.content_type, extra, keep_alive))
            await self.writer.drain()
            for step in response.steps:
                if watcher.done():
                    return False
                if isinstance(step, Pause):
                    if await _client_left(watcher, step.seconds):
                        return False
                elif isinstance(step, Cut):
                    self.writer.transport.abort()
                    outcome = "cut"
                    return False
                else:
                    self.writer.write(b"%x\r\n%s\r\n" % (len(step), step) if chunked else step)
                    await self.writer.drain()
            # Count the stream closed before its last byte can reach the client: a client that
            # starts its next request the moment it reads the end must never see both in flight.
            outcome, counted = "completed", True
            if response.on_close:
                response.on_close(outcome)
            if chunked:
                self.writer.write(b"0\r\n\r\n")
                await self.writer.drain()
            return keep_alive
        except ConnectionError:
            return False
        finally:
            # Wait for the watcher to really stop: the next request reads the same socket.
            watcher.cancel()
            await asyncio.wait({watcher})
            if response.on_close and not counted:
                response.on_close(outcome)


async def _client_left(watcher: asyncio.Task, seconds: float) -> bool:
    """Sleep `seconds`, answering True (early) if the client hangs up meanwhile.

    Plain sleeps in short slices: asyncio.wait() on the watcher would wake at once but
    costs several times more per pause, and paced benchmark streams pause per line.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (remaining := deadline - loop.time()) > 0:
        await asyncio.sleep(min(remaining, DISCONNECT_CHECK))
        if watcher.done():
            return True
    return watcher.done()
