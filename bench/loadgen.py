"""The load generator: one process, asyncio, raw HTTP/1.1 (`bench.wire`), loopback only.

    python -m bench.loadgen SPEC.json     # prints one JSON line: what it measured

It imports nothing but the standard library and `bench.wire`, so its own cost stays
small and measurable: it reports its CPU seconds and its share of one core, and the
harness flags a run whose load generator came near a full core.

SPEC (written by `bench.scenarios`):
    host, port, path            where to send (always a loopback address)
    bodies, headers             one request body / header set per virtual user (cycled)
    kind                        "sse" (gateway stream), "json" (gateway non-stream) or
                                "ndjson" (the fake hit directly)
    expect                      answer tokens each response must carry
    concurrency                 virtual users, each on its own kept-alive connection
    max_requests, duration      bounds: stop issuing after either is reached
    deadline                    hard cap in seconds; what is still open then is cut
    start_at                    epoch seconds: every process of a phase starts together
    hold                        open `concurrency` streams, print "ready N", wait for a
                                line on stdin, then hang up on all of them

A first token is the first complete SSE event carrying a non-empty
`delta.content` (gateway) or the first complete NDJSON line carrying a non-empty
`token` (direct): the same moment on both paths, measured at the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import resource
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.wire import BadResponse, ConnectionClosed, HttpConnection, build_request, connect

MARKERS = {
    # kind: (event delimiter, content marker, empty-content marker, end-of-stream marker)
    "sse": (b"\n\n", b'"delta":{"content":"', b'"delta":{"content":""', b"data: [DONE]"),
    "ndjson": (b"\n", b'"token":"', b'"token":""', None),
}
TOKEN = re.compile(r"tok\d+ ")
LOOPBACK = ("127.", "::1", "localhost")


class Tally:
    """One response: status, first-token time, content chunks, completeness."""

    __slots__ = ("buf", "chunks", "complete", "first", "kind", "on_first", "parts", "start", "status_code")

    def __init__(self, kind: str, start: float, on_first: Callable[[], None] | None = None) -> None:
        self.kind = kind
        self.start = start
        self.first: float | None = None
        self.chunks = 0
        self.status_code = 0
        self.complete = kind == "ndjson"  # a direct stream is complete when its body ends
        self.buf = bytearray()
        self.parts: list[bytes] = []
        self.on_first = on_first

    def status(self, code: int) -> None:
        self.status_code = code

    def body(self, data: bytes, now: float) -> None:
        if self.kind == "json" or self.status_code != 200:
            self.parts.append(data)
            return
        delim, marker, empty, done = MARKERS[self.kind]
        buf = self.buf
        buf += data
        cut = buf.rfind(delim)
        if cut < 0:
            return
        cut += len(delim)
        events = bytes(buf[:cut])
        del buf[:cut]
        found = events.count(marker) - events.count(empty)
        if found > 0:
            if self.first is None:
                self.first = now
                if self.on_first is not None:
                    self.on_first()
            self.chunks += found
        if done is not None and done in events:
            self.complete = True

    def finish_json(self) -> None:
        """Non-stream: count the answer tokens in the one completion object."""
        if self.status_code != 200:
            return
        try:
            content = json.loads(b"".join(self.parts))["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            return
        self.chunks = len(TOKEN.findall(content or ""))
        self.complete = True


class Run:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.kind = spec["kind"]
        self.expect = int(spec["expect"])
        self.requests = [
            build_request(spec["host"], spec["port"], spec["path"], body.encode(), headers)
            for body, headers in zip(spec["bodies"], spec["headers"], strict=True)
        ]
        self.issued = 0
        self.ttft: list[float] = []
        self.ttft_later: list[float] = []  # each user's requests after its first (no connect, no herd)
        self.total: list[float] = []
        self.chunks = 0
        self.ok = 0
        self.errors: Counter[str] = Counter()
        self.open: set[Tally] = set()
        self.connections: list[HttpConnection] = []
        self.first_start: float | None = None
        self.last_end: float | None = None
        self.stop_at = 0.0

    def _take(self) -> bool:
        if self.issued >= self.spec["max_requests"] or time.perf_counter() >= self.stop_at:
            return False
        self.issued += 1
        return True

    async def user(self, index: int) -> None:
        raw = self.requests[index % len(self.requests)]
        conn: HttpConnection | None = None
        first = True
        stagger = self.spec.get("stagger", 0.0)
        if stagger:  # this user's phase among all of the level's users, over one answer's length
            await asyncio.sleep(stagger * (self.spec["first_user"] + index) / self.spec["all_users"])
        while self._take():
            if conn is None or conn.closed:
                try:
                    conn = await connect(self.spec["host"], self.spec["port"])
                except OSError as exc:
                    self.errors[f"connect:{type(exc).__name__}"] += 1
                    await asyncio.sleep(0.05)
                    continue
                self.connections.append(conn)
            tally = Tally(self.kind, time.perf_counter())
            self.first_start = self.first_start or time.time()
            self.open.add(tally)
            try:
                await conn.request(raw, tally)
            except (ConnectionClosed, BadResponse) as exc:
                self.errors["reset" if isinstance(exc, ConnectionClosed) else "bad_response"] += 1
                conn = None
                continue
            finally:
                self.open.discard(tally)
            self.settle(tally, time.perf_counter(), later=not first)
            first = False

    def settle(self, tally: Tally, end: float, *, later: bool = False) -> None:
        self.last_end = time.time()
        if tally.kind == "json":
            tally.finish_json()
        self.chunks += tally.chunks
        if tally.status_code != 200:
            self.errors[f"status_{tally.status_code}"] += 1
        elif not tally.complete:
            self.errors["incomplete"] += 1
        elif tally.chunks != self.expect:
            self.errors["short" if tally.chunks < self.expect else "long"] += 1
        else:
            self.ok += 1
            self.total.append(end - tally.start)
            if tally.first is not None:
                self.ttft.append(tally.first - tally.start)
                if later:
                    self.ttft_later.append(tally.first - tally.start)

    async def load(self) -> None:
        spec = self.spec
        self.stop_at = time.perf_counter() + spec["duration"]
        users = [asyncio.ensure_future(self.user(i)) for i in range(spec["concurrency"])]
        _, pending = await asyncio.wait(users, timeout=spec["deadline"])
        self.errors["deadline"] += len(self.open)
        for task in pending:
            task.cancel()
        for conn in self.connections:
            conn.abort()
        await asyncio.gather(*pending, return_exceptions=True)

    async def hold(self) -> int:
        """Open one long stream per user; once each has a first token, wait for stdin, then hang up."""
        spec = self.spec
        ready = asyncio.Event()
        held: list[Tally] = []
        opened = 0

        def first_token() -> None:
            nonlocal opened
            opened += 1
            if opened >= spec["concurrency"]:
                ready.set()

        async def one(index: int) -> None:
            try:
                conn = await connect(spec["host"], spec["port"])
            except OSError as exc:
                self.errors[f"connect:{type(exc).__name__}"] += 1
                return
            self.connections.append(conn)
            tally = Tally(self.kind, time.perf_counter(), on_first=first_token)
            held.append(tally)
            with contextlib.suppress(ConnectionClosed, BadResponse):
                await conn.request(self.requests[index % len(self.requests)], tally)

        tasks = [asyncio.ensure_future(one(i)) for i in range(spec["concurrency"])]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ready.wait(), spec["deadline"])
        opened = sum(t.first is not None for t in held)
        self.errors.update({f"status_{t.status_code}": 1 for t in held if t.status_code not in (0, 200)})
        self.errors["not_open"] += spec["concurrency"] - opened
        print(f"ready {opened}", flush=True)
        await _read_stdin_line()  # the harness says when it has measured the held streams
        for conn in self.connections:
            conn.abort()
        await asyncio.gather(*tasks, return_exceptions=True)
        return opened


async def _read_stdin_line() -> bytes:
    """One line from stdin without blocking the loop (the control pipe from bench.run)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return await reader.readline()


async def main(spec: dict[str, Any]) -> dict[str, Any]:
    if not str(spec["host"]).startswith(LOOPBACK):
        raise SystemExit(f"refusing to load {spec['host']}: the load generator talks to loopback only")
    delay = spec.get("start_at", 0) - time.time()
    if delay > 0:
        await asyncio.sleep(delay)
    run = Run(spec)
    before = resource.getrusage(resource.RUSAGE_SELF)
    wall0 = time.perf_counter()
    opened = await run.hold() if spec.get("hold") else None
    if opened is None:
        await run.load()
    wall = time.perf_counter() - wall0
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "requests": run.issued if opened is None else spec["concurrency"],
        "ok": run.ok,
        "errors": {k: v for k, v in run.errors.items() if v},
        "ttft": run.ttft,
        "ttft_later": run.ttft_later,
        "total": run.total,
        "chunks": run.chunks,
        "first_start": run.first_start,
        "last_end": run.last_end,
        "held": opened,
        "wall": wall,
        "cpu": cpu,
        "cpu_share": cpu / wall if wall else 0.0,
    }


if __name__ == "__main__":
    spec = json.loads(Path(sys.argv[1]).read_text())
    print(json.dumps(asyncio.run(main(spec))), flush=True)
