"""`python -m bench.run [--quick|--full] [--out DIR] [--docs FILE]`: the gateway against the fake hit directly.

One run starts the fake upstream in its own process, measures the direct baseline
(the same client reading the fake's NDJSON stream), then for each state store
(embedded: SQLite, one process; scale-out: PostgreSQL + Redis, 2 workers) and each
ASGI server installed (daphne, uvicorn, granian) starts the gateway, holds N
streams open to weigh them, and loads it at each concurrency, stream and non-stream.
Last, the pool's leases per second for each backend that state store offers.

Writes `DIR/<timestamp>.json` (default bench/results/) and regenerates the
generated section of `docs/benchmarks.md` with the PNG beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import leases, procstat, profiles, report, scenarios, stats
from bench.profiles import Profile
from bench.servers import MODES, ROOT, SERVERS, Backend, Fake, Gateway, installed, versions

T0 = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {message}", file=sys.stderr, flush=True)


def _brief(summary: dict[str, Any]) -> str:
    ttft = summary["ttft_ms"]["p50"]
    return (f"{summary['requests']} req, {summary['errors']} errors, ttft p50 {ttft} ms, total p50 "
            f"{summary['total_ms']['p50']} ms, {summary['chunks_per_s']} chunks/s, "
            f"loadgen cpu {summary['loadgen']['cpu_share_max']}")


def settle(pids: list[int], fake: Fake) -> float:
    """Before a level: the previous one's streams have ended upstream and the server has gone quiet."""
    return procstat.wait_quiet(pids, still_busy=lambda: fake.in_flight() > 0)


def hold_count(profile: Profile) -> int:
    """Tokens in a held stream: it must outlive the time it takes to open all of them."""
    return int((profile.deadline * 2 + 30) * 1000 / profile.hold_pace_ms) + 1


def run_direct(profile: Profile, fake: Fake, tokens: list[str]) -> dict[str, Any]:
    target = scenarios.direct(fake.url, tokens, profile.pace_count, profile.pace_ms)
    held = scenarios.direct(fake.url, tokens, hold_count(profile), profile.hold_pace_ms)
    server = [fake.pid]
    scenarios.load(target, 2, duration=0.5, max_requests=4, deadline=profile.deadline, server=server)
    out: dict[str, Any] = {"source": target.source, "stream": {}}
    say(f"direct: holding {profile.hold_streams} streams open")
    out["memory"] = scenarios.hold(held, profile.hold_streams, deadline=profile.deadline, server=server)
    for kind, stagger in profile.arrivals:
        out.setdefault(kind, {})
        for level in profile.concurrency:
            waited = settle(server, fake)
            summary = scenarios.load(target, level, duration=profile.duration,
                                     max_requests=profile.level_requests(level), deadline=profile.deadline,
                                     server=server, stagger=stagger)
            out[kind][str(level)] = summary | {"settle_s": waited}
            say(f"direct {kind} c={level}: {_brief(summary)}")
    return out


def run_config(profile: Profile, fake: Fake, backend: Backend, server: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": f"{backend.mode}/{server}", "mode": backend.mode, "server": server,
                             "stream": {}, "stream_staggered": {}, "nonstream": {}, "memory": None, "error": None}
    gw: Gateway | None = None
    try:
        with Gateway(server, backend, fake.url) as gw:
            entry["workers"], entry["processes"] = gw.workers, len(gw.pids())
            entry["command"] = " ".join(Path(a).name if a == sys.executable else a for a in gw.command())
            streaming = scenarios.gateway(gw.port, profile.pace_count, profile.pace_ms, stream=True)
            whole = scenarios.gateway(gw.port, profile.pace_count, profile.pace_ms, stream=False)
            held = scenarios.gateway(gw.port, hold_count(profile), profile.hold_pace_ms, stream=True)
            for target in (streaming, whole):  # first requests: imports, the curl session, caches
                warm = scenarios.load(target, 2, duration=0.5, max_requests=4, deadline=profile.deadline,
                                      server=gw.pids())
                if warm["errors"]:
                    entry.setdefault("warmup_errors", {}).update(warm["error_kinds"])
            say(f"{entry['name']}: holding {profile.hold_streams} streams open")
            entry["memory"] = scenarios.hold(held, profile.hold_streams, deadline=profile.deadline, server=gw.pids())
            # Again, now that the process has held N streams once (its curl handles and upstream
            # connections exist): what each open stream costs a server that has seen its peak before.
            entry["memory_again"] = scenarios.hold(held, profile.hold_streams, deadline=profile.deadline,
                                                   server=gw.pids())
            kinds = [(kind, streaming, stagger) for kind, stagger in profile.arrivals]
            kinds += [("nonstream", whole, 0.0)] if profile.nonstream else []
            for kind, target, stagger in kinds:
                for level in profile.concurrency:
                    waited = settle(gw.pids(), fake)
                    summary = scenarios.load(target, level, duration=profile.duration,
                                             max_requests=profile.level_requests(level), deadline=profile.deadline,
                                             server=gw.pids(), upstream=[fake.pid], db=backend.db_counters,
                                             stagger=stagger)
                    entry[kind][str(level)] = summary | {"settle_s": waited}
                    say(f"{entry['name']} {kind} c={level}: {_brief(summary)}")
            entry["alive_after"] = gw.proc is not None and gw.proc.poll() is None
    except Exception as exc:  # one configuration failing must not lose the others' figures
        entry["error"] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"
        say(f"{entry['name']} failed: {type(exc).__name__}: {str(exc)[:500]}")
    return entry


def compare(results: dict[str, Any]) -> None:
    """Every gateway figure next to the direct one at the same concurrency."""
    direct = results["direct"]
    # Non-stream requests are compared with the direct client streaming the same answer.
    baselines = {"stream": direct["stream"], "stream_staggered": direct.get("stream_staggered", {}),
                 "nonstream": direct["stream"]}
    for entry in results["configs"]:
        entry["compare"] = {
            kind: {level: stats.compare(s, base[level], stream=kind != "nonstream")
                   for level, s in entry.get(kind, {}).items() if level in base}
            for kind, base in baselines.items()
        }
        mem, dmem = entry.get("memory") or {}, direct.get("memory") or {}
        entry["compare"]["memory_per_stream_kb"] = stats.figure(mem.get("per_stream_kb"), dmem.get("per_stream_kb"))


def _git() -> dict[str, Any]:
    def git(*args: str) -> str:
        if shutil.which("git") is None:
            return ""
        result = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return result.stdout.strip() if result.returncode == 0 else ""

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}


def run(profile: Profile, out_dir: Path, docs: Path | None, label: str = "") -> Path:
    started = datetime.now(UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{stamp}.json"
    results: dict[str, Any] = {
        "schema": 1, "stamp": stamp, "started": started.isoformat(), "label": label, "profile": asdict(profile),
        "host": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg_before": procstat.loadavg()},
        "versions": versions(), "git": _git(), "direct": {}, "configs": [], "leases": {}, "notes": [],
        "setup_notes": {}, "json_path": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path),
    }
    tokens = [f"bench-{i:03d}" for i in range(1, profile.tokens + 1)]
    logs = Path(tempfile.mkdtemp(prefix="grok2api-bench-logs-"))
    try:
        with Fake(logs) as fake:
            fake.lift_quota(tokens)
            say(f"fake upstream on {fake.url} (pid {fake.pid}); direct baseline")
            results["direct"] = run_direct(profile, fake, tokens)
            for mode in profile.modes:
                with Backend(mode) as backend:
                    say(f"{mode}: migrate, import {len(tokens)} accounts, lift the in-flight limit")
                    backend.setup(fake.url, tokens)
                    results["setup_notes"][mode] = backend.notes
                    for server in profile.servers:
                        if not installed(server):
                            results["notes"].append(f"{server} is not installed: skipped")
                            continue
                        results["configs"].append(run_config(profile, fake, backend, server))
                    say(f"{mode}: leases per second")
                    results["leases"].update(leases.run_backends(
                        backend.lease_backends(fake.url), profile.lease_seconds, list(profile.lease_concurrency)))
    finally:
        results["host"]["loadavg_after"] = procstat.loadavg()
        results["elapsed_s"] = round(time.monotonic() - T0, 1)
        if results["direct"]:
            compare(results)
        path.write_text(json.dumps(results, indent=1))
        say(f"wrote {path}")
        shutil.rmtree(logs, ignore_errors=True)
    if docs is not None:
        report.write(results, docs)
        say(f"regenerated {docs} and {docs.with_suffix('.png').name}")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="profile", action="store_const", const="quick", help="the default, < 2 min")
    size.add_argument("--full", dest="profile", action="store_const", const="full", help="every scenario")
    size.add_argument("--profile", choices=sorted(profiles.PROFILES), help="quick, full or smoke (tests)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="where the JSON goes")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md",
                        help="the page to regenerate (its PNG goes beside it)")
    parser.add_argument("--no-docs", action="store_true", help="write the JSON only")
    parser.add_argument("--servers", help=f"comma-separated, from {', '.join(SERVERS)}")
    parser.add_argument("--modes", help=f"comma-separated, from {', '.join(MODES)}")
    parser.add_argument("--concurrency", help="comma-separated levels, e.g. 1,10,100,500")
    parser.add_argument("--pace", help="COUNT:MS, tokens per answer and milliseconds between them")
    parser.add_argument("--duration", type=float, help="seconds each level issues requests")
    parser.add_argument("--label", default="", help="a line printed above the tables (e.g. why the numbers)")
    args = parser.parse_args(argv)
    count, ms = (args.pace.split(":") if args.pace else (None, None))

    def split(value: str | None, cast: type = str) -> tuple | None:
        return tuple(cast(v) for v in value.split(",") if v) if value else None

    profile = profiles.get(
        args.profile or "quick", servers=split(args.servers), modes=split(args.modes),
        concurrency=split(args.concurrency, int), pace_count=int(count) if count else None,
        pace_ms=float(ms) if ms else None, duration=args.duration,
    )
    unknown = (set(profile.servers) - set(SERVERS)) | (set(profile.modes) - set(MODES))
    if unknown:
        parser.error(f"unknown server or mode: {', '.join(sorted(unknown))}")
    run(profile, args.out, None if args.no_docs else args.docs, label=args.label)


if __name__ == "__main__":
    main()
