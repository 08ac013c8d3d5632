"""Numbers from raw load-generator output: percentiles, one phase's summary, gateway vs direct.

Latency differences are differences of percentiles (gateway p99 - direct p99), not
percentiles of per-request differences: the two paths serve different requests.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

QUANTILES = (50, 95, 99)


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _ms(values: list[float]) -> dict[str, float | None]:
    out: dict[str, float | None] = {f"p{q}": _round(percentile(values, q), 1000) for q in QUANTILES}
    out["mean"] = _round(sum(values) / len(values), 1000) if values else None
    out["n"] = len(values)
    return out


def _round(value: float | None, scale: float = 1.0, digits: int = 3) -> float | None:
    return None if value is None else round(value * scale, digits)


def summarise(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge the JSON of every load-generator process of one phase."""
    ttft = [x for p in parts for x in p["ttft"]]
    later = [x for p in parts for x in p.get("ttft_later", [])]
    total = [x for p in parts for x in p["total"]]
    errors: Counter[str] = Counter()
    for p in parts:
        errors.update(p["errors"])
    starts = [p["first_start"] for p in parts if p.get("first_start")]
    ends = [p["last_end"] for p in parts if p.get("last_end")]
    wall = (max(ends) - min(starts)) if starts and ends else 0.0
    requests = sum(p["requests"] for p in parts)
    ok = sum(p["ok"] for p in parts)
    chunks = sum(p["chunks"] for p in parts)
    return {
        "requests": requests,
        "ok": ok,
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "ttft_ms": _ms(ttft),
        "ttft_later_ms": _ms(later),
        "total_ms": _ms(total),
        "chunks": chunks,
        "wall_s": _round(wall),
        "chunks_per_s": _round(chunks / wall, digits=1) if wall else None,
        "requests_per_s": _round(ok / wall, digits=2) if wall else None,
        "loadgen": {
            "processes": len(parts),
            "cpu_s": [_round(p["cpu"]) for p in parts],
            "cpu_share_max": _round(max((p["cpu_share"] for p in parts), default=0.0)),
        },
    }


def server_cost(cpu_s: float, requests: int) -> float | None:
    """CPU seconds per 1 000 requests."""
    return _round(cpu_s / requests * 1000) if requests else None


def figure(gateway: float | None, baseline: float | None, *, ratio: bool = False) -> dict[str, float | None]:
    """One reported figure: the gateway's value, the baseline's, and their difference (or ratio)."""
    out: dict[str, float | None] = {"gateway": gateway, "baseline": baseline}
    if ratio:
        out["ratio"] = _round(gateway / baseline) if gateway is not None and baseline else None
    else:
        out["diff"] = _round(gateway - baseline) if gateway is not None and baseline is not None else None
    return out


def compare(gw: dict[str, Any], direct: dict[str, Any], *, stream: bool) -> dict[str, Any]:
    """Gateway phase vs the direct phase at the same concurrency."""
    out: dict[str, Any] = {}
    if stream:
        for q in QUANTILES:
            out[f"ttft_p{q}_ms"] = figure(gw["ttft_ms"][f"p{q}"], direct["ttft_ms"][f"p{q}"])
        if "ttft_later_ms" in gw and "ttft_later_ms" in direct:
            for q in QUANTILES:
                out[f"ttft_later_p{q}_ms"] = figure(gw["ttft_later_ms"][f"p{q}"], direct["ttft_later_ms"][f"p{q}"])
    for q in QUANTILES:
        out[f"total_p{q}_ms"] = figure(gw["total_ms"][f"p{q}"], direct["total_ms"][f"p{q}"])
    out["chunks_per_s"] = figure(gw["chunks_per_s"], direct["chunks_per_s"], ratio=True)
    out["requests_per_s"] = figure(gw["requests_per_s"], direct["requests_per_s"], ratio=True)
    out["errors"] = figure(gw["errors"], direct["errors"])
    out["server_cpu_s_per_1000"] = figure(gw.get("server_cpu_s_per_1000"), direct.get("server_cpu_s_per_1000"))
    return out
