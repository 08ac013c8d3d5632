"""Real HTTP forward proxies on loopback for the proxy tests (stdlib asyncio, no dependencies).

`ProxyFarm` runs any number of named proxies, plus a proxy-pool endpoint, on one
private event loop in a daemon thread, so sync tests (with the gateway in its own
thread) and async tests can both use them:

    with ProxyFarm() as farm:
        a = farm.proxy("a")              # a.url == "http://127.0.0.1:PORT"
        a.blocked = True                 # answer everything with a Cloudflare 403 page
        a.hang_up_on = {"netfail-1"}     # drop requests of these sso tokens without an answer
        pool = farm.pool([a.url, "b.example:3128"])   # GET pool.url answers the next entry

A proxy forwards absolute-URI requests (`GET http://host:port/path HTTP/1.1`) to
their target and tags each with `X-Via-Proxy: <name>`, so the fake's recorded
headers show which proxy carried a request; the answer streams back as it arrives.
CONNECT opens a plain tunnel. Each proxy records what it saw (`seen`, `refused`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from gateway.fakegrok.replies import CLOUDFLARE_PAGE

HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-connection", "proxy-authorization", "proxy-authenticate",
    "te", "trailer", "upgrade",
}


@dataclass
class Seen:
    method: str
    target: str
    token: str | None  # the sso cookie, if any
    answered: str  # "forwarded" | "blocked" | "hung-up" | "tunnel"


def _token(headers: list[tuple[str, str]]) -> str | None:
    for name, value in headers:
        if name.lower() == "cookie":
            for pair in value.split(";"):
                key, _, val = pair.strip().partition("=")
                if key == "sso":
                    return val or None
    return None


class _Loopback:
    """Start and stop a test server on 127.0.0.1 (`port` 0 picks a free one)."""

    port: int
    _server: asyncio.Server | None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()


@dataclass
class ForwardProxy(_Loopback):
    name: str
    blocked: bool = False
    hang_up_on: set[str] = field(default_factory=set)
    port: int = 0
    _seen: list[Seen] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def seen(self, token: str | None = None) -> list[Seen]:
        with self._lock:
            return [s for s in self._seen if token is None or s.token == token]

    def refused(self) -> int:
        """Requests this proxy answered with the Cloudflare page itself."""
        return sum(1 for s in self.seen() if s.answered == "blocked")

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self._seen.append(seen)

    async def stop(self) -> None:
        await super().stop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while await self._exchange(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """One request from the client; True when the client connection stays open for another."""
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ", 2)
        headers = [tuple(part.strip() for part in line.split(":", 1)) for line in lines[1:] if ":" in line]
        token = _token(headers)
        if method == "CONNECT":
            self._record(Seen(method, target, token, "tunnel"))
            await self._tunnel(target, reader, writer)
            return False
        body = await _read_body(reader, headers)
        if token is not None and token in self.hang_up_on:
            self._record(Seen(method, target, token, "hung-up"))
            return False  # close without a byte of answer: the client sees an empty reply
        if self.blocked:
            self._record(Seen(method, target, token, "blocked"))
            writer.write(
                b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/html; charset=UTF-8\r\ncf-mitigated: challenge\r\n"
                + f"Content-Length: {len(CLOUDFLARE_PAGE)}\r\n\r\n".encode() + CLOUDFLARE_PAGE
            )
            await writer.drain()
            return True
        self._record(Seen(method, target, token, "forwarded"))
        await self._forward(method, target, version, headers, body, reader, writer)
        return False

    async def _forward(
        self, method: str, target: str, version: str, headers: list[tuple[str, str]], body: bytes,
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
    ) -> None:
        url = urlsplit(target)
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        up_reader, up_writer = await asyncio.open_connection(url.hostname, url.port or 80)
        try:
            kept = [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP and k.lower() != "content-length"]
            kept += [("X-Via-Proxy", self.name), ("Connection", "close"), ("Content-Length", str(len(body)))]
            up_writer.write(f"{method} {path} {version}\r\n".encode("latin-1"))
            up_writer.write("".join(f"{k}: {v}\r\n" for k, v in kept).encode("latin-1") + b"\r\n" + body)
            await up_writer.drain()
            # The answer's head, with the client told we close after it (one request per connection).
            response_head = await up_reader.readuntil(b"\r\n\r\n")
            status, *rest = response_head.decode("latin-1").split("\r\n")
            rest = [line for line in rest if line and line.split(":", 1)[0].strip().lower() not in HOP_BY_HOP]
            writer.write(("\r\n".join([status, *rest, "Connection: close"]) + "\r\n\r\n").encode("latin-1"))
            await writer.drain()
            await _pipe_until_either_ends(up_reader, writer, reader)
        finally:
            up_writer.close()

    async def _tunnel(self, target: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, _, port = target.rpartition(":")
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        try:
            await asyncio.gather(_copy(reader, up_writer), _copy(up_reader, writer))
        finally:
            up_writer.close()


async def _read_body(reader: asyncio.StreamReader, headers: list[tuple[str, str]]) -> bytes:
    fields = {k.lower(): v for k, v in headers}
    if "chunked" in fields.get("transfer-encoding", "").lower():
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                return body
            body += chunk[:-2]
    return await reader.readexactly(int(fields.get("content-length", "0") or 0))


async def _copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    with contextlib.suppress(ConnectionError, OSError):
        sink.close()


async def _until_eof(reader: asyncio.StreamReader) -> None:
    while await reader.read(65536):
        pass


async def _pipe_until_either_ends(
    upstream: asyncio.StreamReader, client: asyncio.StreamWriter, client_reader: asyncio.StreamReader
) -> None:
    """Stream the answer to the client as it arrives; stop when it ends or the client leaves."""
    answer = asyncio.ensure_future(_copy(upstream, client))
    left = asyncio.ensure_future(_until_eof(client_reader))
    try:
        await asyncio.wait((answer, left), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (answer, left):
            task.cancel()
        await asyncio.gather(answer, left, return_exceptions=True)


@dataclass
class PoolEndpoint(_Loopback):
    """`GET /` answers the next entry of `answers` (the last one repeats), as text or JSON."""

    answers: list[str]
    as_json: bool = False
    port: int = 0
    fetches: int = 0
    _server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/proxy?key=secret"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            answer = self.answers[min(self.fetches, len(self.answers) - 1)]
            self.fetches += 1
            body = (json.dumps({"proxy": answer}) if self.as_json else answer + "\n").encode()
            kind = "application/json" if self.as_json else "text/plain"
            writer.write(
                f"HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode() + body
            )
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


class ProxyFarm:
    """Named proxies and pool endpoints on one private loop in a daemon thread."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="proxy-farm", daemon=True)
        self._thread.start()
        self._servers: list[ForwardProxy | PoolEndpoint] = []

    def _run(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def proxy(self, name: str, *, blocked: bool = False) -> ForwardProxy:
        proxy = ForwardProxy(name, blocked=blocked)
        self._run(proxy.start())
        self._servers.append(proxy)
        return proxy

    def pool(self, answers: list[str], *, as_json: bool = False) -> PoolEndpoint:
        pool = PoolEndpoint(list(answers), as_json=as_json)
        self._run(pool.start())
        self._servers.append(pool)
        return pool

    def close(self) -> None:
        for server in self._servers:
            self._run(server.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> ProxyFarm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def via(request_headers: dict[str, str]) -> str | None:
    """Which test proxy carried a request the fake recorded (None: it came direct)."""
    return request_headers.get("x-via-proxy")


def chat_routes(fake_grok, token: str) -> list[str | None]:
    """Which proxy carried each chat request of `token`, as the fake recorded them (None: direct)."""
    return [via(r.headers) for r in fake_grok.requests(token) if r.path.endswith("/conversations/new")]
