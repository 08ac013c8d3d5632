"""Leases per second of the pool alone: `pools.selection.lease()` then `release()`, in a loop.

    DATABASE_URL=… REDIS_URL=… python -m bench.leases --seconds 2 --concurrency 1 --concurrency 16

Runs in its own Django-configured process (the backend is whatever the environment
configures: SQLite by default, PostgreSQL rows without REDIS_URL, Redis with it),
with accounts already imported by the harness. Prints one JSON line: per concurrency,
leases, leases/s, errors by exception type, and this process's CPU per lease.

`run_backends()` is the harness side: it starts that process once per backend.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import time
from collections import Counter
from typing import Any

from bench.servers import ROOT

MODEL = "grok-chat-fast"


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(seconds: float, concurrency: int) -> dict[str, Any]:
    from gateway.models import get_model
    from pools import selection

    model = get_model(MODEL)
    if model is None:
        raise RuntimeError(f"{MODEL} is not in the model catalogue")
    if hasattr(selection, "Outcome"):
        success = selection.Outcome.SUCCESS
    else:  # where the leasing rework keeps it
        from pools.leasing.base import Outcome

        success = Outcome.SUCCESS
    done = 0
    errors: Counter[str] = Counter()
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline and sum(errors.values()) < 1000:
            try:
                lease = await selection.lease(model)
            except Exception as exc:  # reported, not raised: one broken backend must not stop the run
                errors[f"{type(exc).__name__}: {str(exc)[:120]}"] += 1
                await asyncio.sleep(0.001)
                continue
            await lease.release(success)
            done += 1

    cpu0, wall0 = _cpu(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - wall0, _cpu() - cpu0
    return {
        "concurrency": concurrency,
        "leases": done,
        "seconds": round(wall, 3),
        "per_s": round(done / wall, 1) if wall else None,
        "client_cpu_us_per_lease": round(cpu / done * 1e6, 1) if done else None,
        "errors": dict(errors),
    }


async def _main(seconds: float, levels: list[int]) -> list[dict[str, Any]]:
    await measure(min(0.3, seconds), 1)  # warm-up: imports, connections, caches
    return [await measure(seconds, level) for level in levels]


def run_backends(backends: dict[str, dict[str, str]], seconds: float, levels: list[int]) -> dict[str, Any]:
    """One `python -m bench.leases` process per backend (name -> environment)."""
    out: dict[str, Any] = {}
    args = [f"--concurrency={level}" for level in levels]
    for name, env in backends.items():
        result = subprocess.run(
            [sys.executable, "-m", "bench.leases", f"--seconds={seconds}", *args], cwd=ROOT, env=env,
            capture_output=True, text=True, timeout=60 + seconds * len(levels) * 2,
        )
        lines = [line for line in result.stdout.splitlines() if line.startswith("[")]
        if result.returncode != 0 or not lines:
            out[name] = {"error": (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]}
        else:
            out[name] = {"levels": json.loads(lines[-1])}
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.leases", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, action="append", default=None)
    options = parser.parse_args()

    import django

    django.setup()
    print(json.dumps(asyncio.run(_main(options.seconds, options.concurrency or [1, 16]))), flush=True)
