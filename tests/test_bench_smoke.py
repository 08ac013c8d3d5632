"""The benchmark harness (`bench/`) runs end to end at tiny sizes and writes its outputs.

No timing is asserted anywhere: these tests check that the harness works (every
phase ran, every figure has its gateway, baseline and difference, the page and
its picture were written), not how fast anything is.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.loadgen import Tally
from bench.report import BEGIN, END
from bench.wire import HttpConnection

ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(300)
def test_it_runs_the_smoke_profile_and_writes_json_markdown_and_png(tmp_path: Path) -> None:
    docs = tmp_path / "benchmarks.md"
    docs.write_text(f"# Benchmarks\n\nWritten by hand above.\n\n{BEGIN}\nold tables\n{END}\n\nWritten by hand below.\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PYTEST_"))}
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", "--profile", "smoke", "--out", str(tmp_path), "--docs", str(docs)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=280,
    )
    assert result.returncode == 0, result.stderr[-4000:]

    [path] = tmp_path.glob("*.json")
    results = json.loads(path.read_text())
    assert set(results["direct"]["stream"]) == set(results["direct"]["stream_staggered"]) == {"1", "2"}
    assert results["direct"]["memory"]["opened"] == 2
    [config] = results["configs"]
    assert config["name"] == "embedded/uvicorn"
    assert config["error"] is None, config["error"]
    assert config["memory"]["opened"] == 2
    assert config["memory_again"]["opened"] == 2
    for kind in ("stream", "stream_staggered", "nonstream"):
        for level in ("1", "2"):
            summary = config[kind][level]
            assert summary["requests"] > 0
            assert summary["ok"] == summary["requests"], summary["error_kinds"]
            figures = config["compare"][kind][level]
            assert set(figures["total_p50_ms"]) == {"gateway", "baseline", "diff"}
            assert set(figures["chunks_per_s"]) == {"gateway", "baseline", "ratio"}
    assert set(config["compare"]["stream"]["1"]) >= {"ttft_p50_ms", "ttft_p95_ms", "ttft_p99_ms", "ttft_later_p99_ms"}
    assert config["stream"]["1"]["server_cpu_s_per_1000"] is not None
    assert results["leases"]["sqlite"]["levels"][0]["leases"] > 0

    text = docs.read_text()
    assert "Written by hand above." in text and "Written by hand below." in text
    assert "old tables" not in text
    assert "| embedded/uvicorn | 1 |" in text
    assert "arrive spread out" in text  # the staggered-arrival table
    assert (tmp_path / "benchmarks.png").read_bytes().startswith(PNG_SIGNATURE)


class _Transport:
    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


async def test_it_counts_sse_chunks_however_the_bytes_are_split() -> None:
    events = [b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n',
              b'data: {"choices":[{"delta":{"content":"tok0 "}}]}\n\n',
              b'data: {"choices":[{"delta":{"content":"tok1 "}}]}\n\ndata: [DONE]\n\n']
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"
    raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked
    conn = HttpConnection()
    conn.connection_made(_Transport())
    tally = Tally("sse", 0.0)
    request = asyncio.ensure_future(conn.request(b"POST / HTTP/1.1\r\n\r\n", tally))
    await asyncio.sleep(0)
    for i in range(len(raw)):  # one byte at a time: every boundary falls somewhere
        conn.data_received(raw[i : i + 1])
    await asyncio.wait_for(request, 1)
    assert (tally.status_code, tally.chunks, tally.complete) == (200, 2, True)
    assert tally.first is not None
    assert not conn.closed  # kept alive for the next request
