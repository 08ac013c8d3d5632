"""What one phase of a run does: load at one concurrency, or N streams held open.

Both run the load generator (`bench.loadgen`) in its own process(es), one per
`PER_PROCESS` virtual users, and sample the servers' CPU and memory from /proc
around it. The same `Target` shape describes the gateway and the fake hit directly,
so the two paths get the same client, the same prompt and the same pacing.
"""

from __future__ import annotations

import base64
import json
import math
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import procstat, stats
from bench.servers import API_KEY, ROOT

PER_PROCESS = 250  # virtual users per load-generator process
MODEL = "grok-chat-fast"  # mode "fast" upstream; basic accounts serve it
UA = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/136 Safari/537.36"


@dataclass(frozen=True)
class Target:
    name: str  # "direct" or "gateway"
    port: int
    path: str
    kind: str  # "ndjson" | "sse" | "json" (see bench.loadgen)
    bodies: list[str]
    headers: list[dict[str, str]]
    expect: int  # answer tokens per response
    host: str = "127.0.0.1"
    source: dict[str, str] = field(default_factory=dict)  # how the request was built


def prompt(count: int, ms: float) -> str:
    return f"Benchmark prompt. [fake:pace={count}:{ms:g}]"


def _upstream_body(text: str) -> tuple[dict, str]:
    """The body the gateway itself sends upstream for a lone user message (its own builder when importable)."""
    try:
        from gateway.grok.dialect import ChatAsk, rest_body

        return rest_body(ChatAsk(mode="fast", prompt=text)), "gateway.grok.dialect.rest_body"
    except Exception:  # the dialect is being reworked; a minimal body the fake accepts keeps the run going
        return {"temporary": True, "modeId": "fast", "message": text}, "minimal fallback"


def _upstream_headers(base_url: str, token: str) -> tuple[dict[str, str], str]:
    try:
        from gateway.grok import ClientConfig, GrokClient

        client = GrokClient(ClientConfig(base_url=base_url, assets_url=base_url, impersonate="chrome136",
                                         user_agent=UA))
        headers, source = dict(client.headers(token)), "gateway.grok.client.GrokClient.headers"
    except Exception:  # same reason as above
        statsig = base64.b64encode(b"e:TypeError: Cannot read properties of undefined (reading 'bench')").decode()
        headers = {"User-Agent": UA, "x-statsig-id": statsig, "Cookie": f"sso={token}; sso-rw={token}"}
        source = "minimal fallback"
    # bench.wire writes these itself; the fake never compresses, so Accept-Encoding is harmless.
    headers = {k: v for k, v in headers.items() if k.lower() not in ("host", "content-length", "content-type")}
    return headers, source


def direct(fake_url: str, tokens: list[str], count: int, ms: float) -> Target:
    """The fake hit directly: the request the gateway would send, one token per virtual user (cycled)."""
    body, body_source = _upstream_body(prompt(count, ms))
    built = [_upstream_headers(fake_url, token) for token in tokens]
    port = int(fake_url.rsplit(":", 1)[1])
    return Target("direct", port, "/rest/app-chat/conversations/new", "ndjson", [json.dumps(body)] * len(tokens),
                  [h for h, _ in built], count, source={"body": body_source, "headers": built[0][1]})


def gateway(port: int, count: int, ms: float, *, stream: bool) -> Target:
    body = {"model": MODEL, "stream": stream, "messages": [{"role": "user", "content": prompt(count, ms)}]}
    return Target("gateway", port, "/v1/chat/completions", "sse" if stream else "json", [json.dumps(body)],
                  [{"Authorization": f"Bearer {API_KEY}"}], count)


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _specs(target: Target, concurrency: int, **bounds: Any) -> list[dict[str, Any]]:
    procs = max(1, math.ceil(concurrency / PER_PROCESS))
    start_at = time.time() + 0.4 + 0.15 * procs  # every process starts together, after its own startup
    shares = _split(concurrency, procs)
    limits = _split(bounds.pop("max_requests", 0), procs)
    specs, offset = [], 0
    for share, limit in zip(shares, limits, strict=True):
        n = len(target.bodies)
        # Each process gets the body/header sets of its own users, so direct tokens spread evenly.
        users = [(offset + i) % max(n, len(target.headers)) for i in range(share)]
        specs.append({
            "host": target.host, "port": target.port, "path": target.path, "kind": target.kind,
            "bodies": [target.bodies[u % n] for u in users],
            "headers": [target.headers[u % len(target.headers)] for u in users],
            "expect": target.expect, "concurrency": share, "max_requests": limit, "start_at": start_at,
            "first_user": offset, "all_users": concurrency,
            **bounds,
        })
        offset += share
    return specs


def _launch(specs: list[dict[str, Any]], tmp: Path, *, hold: bool = False) -> list[subprocess.Popen]:
    procs = []
    for i, spec in enumerate(specs):
        path = tmp / f"spec-{i}.json"
        path.write_text(json.dumps(spec))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "bench.loadgen", str(path)], cwd=ROOT, text=True,
            stdin=subprocess.PIPE if hold else subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        ))
    return procs


def _collect(procs: list[subprocess.Popen], timeout: float) -> list[dict[str, Any]]:
    parts = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"load generator failed ({proc.returncode}):\n{err[-2000:]}")
        parts.append(json.loads(lines[-1]))
    return parts


DB_FLUSH = 1.2  # seconds for PostgreSQL to publish its counters (see Backend.db_counters)


def load(target: Target, concurrency: int, *, duration: float, max_requests: int, deadline: float,
         server: list[int], upstream: list[int] | None = None,
         db: Callable[[], dict[str, int] | None] | None = None, stagger: float = 0.0) -> dict[str, Any]:
    """`concurrency` users issue requests back to back for `duration` s (at most `max_requests`).

    All users ask at the same instant, and answers of one length keep them in step: each
    level is then a train of herds. With `stagger` seconds (one answer's length) user i
    first waits i/concurrency of it, so requests arrive spread out, as from independent clients.

    `server` are the pids of whatever the client talks to, `upstream` the fake's when
    that is the gateway; their CPU is read before and after. `db` reads the database's
    commit and row-write counters, turned into figures per request.
    """
    specs = _specs(target, concurrency, duration=duration, max_requests=max_requests, deadline=deadline,
                   stagger=stagger)
    watched = {"server": server, "upstream": upstream or []}
    db_before = db() if db else None
    before = {name: procstat.sample(pids) for name, pids in watched.items()}
    with tempfile.TemporaryDirectory(prefix="grok2api-loadgen-") as tmp:
        parts = _collect(_launch(specs, Path(tmp)), timeout=deadline + 60)
    after = {name: procstat.sample(pids) for name, pids in watched.items()}
    summary = stats.summarise(parts)
    summary["concurrency"] = concurrency
    for name in watched:
        if watched[name]:
            cpu = after[name].cpu - before[name].cpu
            summary[f"{name}_cpu_s"] = round(cpu, 3)
            summary[f"{name}_cpu_s_per_1000"] = stats.server_cost(cpu, summary["requests"])
            summary[f"{name}_rss_mb"] = round(after[name].rss / 2**20, 1)
    if db is not None and db_before is not None and summary["requests"]:
        time.sleep(DB_FLUSH)
        db_after = db()
        if db_after is not None:
            for key in ("commits", "rows_written"):
                summary[f"db_{key}_per_request"] = round((db_after[key] - db_before[key]) / summary["requests"], 2)
    return summary


def hold(target: Target, streams: int, *, deadline: float, server: list[int], settle: float = 1.0) -> dict[str, Any]:
    """Hold `streams` paced streams open at once; the server's RSS then minus idle, per stream."""
    specs = _specs(target, streams, duration=deadline, max_requests=streams, deadline=deadline, hold=True)
    time.sleep(settle)
    idle = procstat.sample(server)
    with tempfile.TemporaryDirectory(prefix="grok2api-loadgen-") as tmp:
        procs = _launch(specs, Path(tmp), hold=True)
        opened = 0
        try:
            for proc in procs:
                assert proc.stdout is not None  # _launch pipes it
                line = proc.stdout.readline()
                if line.startswith("ready "):
                    opened += int(line.split()[1])
            time.sleep(settle)
            held = procstat.sample(server)
        finally:
            for proc in procs:
                if proc.poll() is None and proc.stdin is not None:
                    proc.stdin.write("\n")
                    proc.stdin.flush()
        parts = _collect(procs, timeout=60)
    errors = sum(sum(p["errors"].values()) for p in parts)
    delta = held.rss - idle.rss
    return {
        "streams": streams,
        "opened": opened,
        "errors": errors,
        "error_kinds": dict(sum((Counter(p["errors"]) for p in parts), Counter())),
        "idle_rss_mb": round(idle.rss / 2**20, 2),
        "held_rss_mb": round(held.rss / 2**20, 2),
        "per_stream_kb": round(delta / opened / 1024, 1) if opened else None,
        "idle_threads": idle.threads,
        "held_threads": held.threads,
        "processes": len(server),
        "loadgen_cpu_share_max": round(max((p["cpu_share"] for p in parts), default=0.0), 3),
    }
