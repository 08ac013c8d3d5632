"""The run's picture: time to first token and chunks per second against concurrency, gateway vs direct.

Two log-log panels drawn with `bench.png` (no plotting library): on the left the
first-token latency (p50 solid, p99 dashed), on the right the content chunks per
second the client received, for the fake hit directly (black) and for each
gateway configuration measured.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

from bench.png import Canvas, Color

WIDTH, HEIGHT = 1200, 600
INK: Color = (40, 40, 40)
GRID: Color = (225, 225, 225)
DIRECT: Color = (0, 0, 0)
PALETTE: list[Color] = [(214, 39, 40), (31, 119, 180), (44, 160, 44), (148, 103, 189), (255, 127, 14),
                        (140, 86, 75), (227, 119, 194), (23, 190, 207)]

Series = tuple[str, Color, list[tuple[float, float]], int]  # label, colour, points, dash (0: solid)


def _points(levels: dict[str, Any], pick: Any) -> list[tuple[float, float]]:
    out = []
    for level, summary in levels.items():
        value = pick(summary)
        if value is not None and value > 0:
            out.append((float(level), float(value)))
    return sorted(out)


def _decades(lo: float, hi: float) -> tuple[float, float]:
    return 10 ** math.floor(math.log10(lo)), 10 ** math.ceil(math.log10(hi) + 1e-9)


def _label(value: float) -> str:
    if value >= 1000:
        return f"{value / 1000:g}K"
    return f"{value:g}"


def _panel(canvas: Canvas, box: tuple[int, int, int, int], title: str, series: list[Series],
           xs: list[float]) -> None:
    left, top, right, bottom = box
    canvas.text((left + right) // 2, top - 34, title, INK, align="center")
    values = [y for _, _, pts, _ in series for _, y in pts]
    if not values or not xs:
        canvas.text((left + right) // 2, (top + bottom) // 2, "NO DATA", INK, align="center")
        return
    xlo, xhi = min(xs), max(xs)
    if xlo == xhi:
        xlo, xhi = xlo / 2, xhi * 2
    ylo, yhi = _decades(min(values), max(values))

    def px(x: float) -> int:
        return round(left + (math.log10(x) - math.log10(xlo)) / (math.log10(xhi) - math.log10(xlo)) * (right - left))

    def py(y: float) -> int:
        return round(bottom - (math.log10(y) - math.log10(ylo)) / (math.log10(yhi) - math.log10(ylo)) * (bottom - top))

    few = math.log10(yhi / ylo) <= 2  # label 2 and 5 too when there is room
    decade = ylo
    while decade <= yhi * 1.0001:
        for k in (1, 2, 5):
            y = decade * k
            if ylo <= y <= yhi:
                canvas.line(left, py(y), right, py(y), GRID if k == 1 else (242, 242, 242))
                if k == 1 or few:
                    canvas.text(left - 8, py(y) - 7, _label(y), INK if k == 1 else (150, 150, 150), align="right")
        decade *= 10
    for x in xs:
        canvas.line(px(x), top, px(x), bottom, GRID)
        canvas.text(px(x), bottom + 10, _label(x), INK, align="center")
    canvas.text((left + right) // 2, bottom + 32, "CONCURRENT STREAMS", INK, align="center")
    canvas.line(left, top, left, bottom, INK)
    canvas.line(left, bottom, right, bottom, INK)
    for _, color, pts, dash in series:
        for (x0, y0), (x1, y1) in itertools.pairwise(pts):
            canvas.line(px(x0), py(y0), px(x1), py(y1), color, width=2, dash=dash)
        for x, y in pts:
            canvas.rect(px(x) - 3, py(y) - 3, px(x) + 3, py(y) + 3, color)


def chart(results: dict[str, Any]) -> bytes:
    canvas = Canvas(WIDTH, HEIGHT)
    direct = results.get("direct", {}).get("stream", {})
    configs = [c for c in results.get("configs", []) if c.get("stream")]
    named = [("direct", DIRECT, direct)] + [
        (c["name"], PALETTE[i % len(PALETTE)], c["stream"]) for i, c in enumerate(configs)
    ]
    latency: list[Series] = []
    throughput: list[Series] = []
    for label, color, levels in named:
        latency.append((label, color, _points(levels, lambda s: s["ttft_ms"]["p50"]), 0))
        latency.append((label, color, _points(levels, lambda s: s["ttft_ms"]["p99"]), 6))
        throughput.append((label, color, _points(levels, lambda s: s["chunks_per_s"]), 0))
    xs = sorted({float(level) for _, _, levels in named for level in levels})
    _panel(canvas, (110, 70, 560, 450), "TIME TO FIRST TOKEN, MS (P50 SOLID, P99 DASHED)", latency, xs)
    _panel(canvas, (700, 70, 1150, 450), "CONTENT CHUNKS PER SECOND", throughput, xs)
    x, y = 110, 530
    for label, color, _ in named:
        canvas.line(x, y + 7, x + 30, y + 7, color, width=3)
        canvas.text(x + 40, y, label, INK)
        x += 40 + canvas.text_width(label) + 40
        if x > WIDTH - 250:
            x, y = 110, y + 26
    canvas.text(WIDTH - 20, HEIGHT - 22, f"RUN {results.get('stamp', '')}", (130, 130, 130), align="right")
    return canvas.png()
