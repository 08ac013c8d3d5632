"""Folded stacks (py-spy's `raw` format) -> a markdown summary and an SVG flame graph.

A folded line is `frame;frame;…;leaf COUNT`, root first. py-spy writes a frame as
`function (package/module.py)` (with `--nolineno`), and with `--subprocesses` puts a
`process PID:"command"` frame at the root, which is dropped here. The summary says
where the busy samples went by area (event loop, ASGI server, middleware, ORM…),
by function (self and inclusive); the SVG is an icicle graph: the root on top,
callees below, each box as wide as its share of samples.
"""

from __future__ import annotations

import html
import re
from collections import Counter
from dataclasses import dataclass, field

# First match wins: the more specific paths come first.
AREAS: list[tuple[str, tuple[str, ...]]] = [
    ("middleware", ("django/middleware/", "/middleware.py", "whitenoise/", "grok2api/request_id")),
    ("django ORM / database", ("django/db/", "sqlite3/", "psycopg/", "psycopg_")),
    ("redis client", ("redis/",)),
    ("asgiref sync<->async", ("asgiref/",)),
    ("django request/response", ("django/core/handlers/", "django/http/", "django/urls/", "django/utils/")),
    ("django-ninja / pydantic", ("ninja/", "pydantic")),
    ("json", ("json/",)),
    ("logging", ("logging/",)),
    ("curl_cffi (upstream client)", ("curl_cffi/",)),
    ("gateway", ("gateway/",)),
    ("pools (leasing)", ("pools/",)),
    ("ASGI server", ("daphne/", "twisted/", "uvicorn/", "granian/", "h11/", "httptools/", "autobahn/")),
    ("event loop / threads", ("asyncio/", "selectors.py", "threading.py", "concurrent/")),
]


def area(frame: str) -> str:
    for name, needles in AREAS:
        if any(n in frame for n in needles):
            return name
    return "other"


def parse(text: str) -> Counter[tuple[str, ...]]:
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = tuple(f for f in stack.split(";") if f and not f.startswith(("process ", "thread ")))
        if frames:
            stacks[frames] += int(count)
    return stacks


# Where a stack leaves the machinery and enters a task or a thread-pool job.
ENTRY = ("Handle._run (asyncio/events.py)", "_WorkItem.run (concurrent/futures/thread.py)")


def _below_loop(frames: tuple[str, ...]) -> tuple[str, ...]:
    """The frames of the callback or job a sample was in; none when it was in the machinery itself."""
    for i, f in enumerate(frames):
        if f in ENTRY:
            return frames[i + 1 :]
    return ()


def _pct(n: int, total: int) -> str:
    return f"{100 * n / total:.1f} %" if total else "–"


def summary(stacks: Counter[tuple[str, ...]], title: str, top: int = 25) -> str:
    total = sum(stacks.values())
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    below: Counter[str] = Counter()
    area_self: Counter[str] = Counter()
    area_incl: Counter[str] = Counter()
    for frames, n in stacks.items():
        self_time[frames[-1]] += n
        area_self[area(frames[-1])] += n
        for f in set(frames):
            inclusive[f] += n
        for f in set(_below_loop(frames)):
            below[f] += n
        for a in {area(f) for f in frames}:
            area_incl[a] += n
    lines = [f"# {title}", "", f"{total} busy samples (idle threads excluded).", "",
             "## By area", "", "| area | self | inclusive |", "| --- | ---: | ---: |"]
    lines += [f"| {a} | {_pct(n, total)} | {_pct(area_incl[a], total)} |" for a, n in area_self.most_common()]
    lines += ["", f"## Top {top} functions by self time", "",
              "| function | self | inclusive |", "| --- | ---: | ---: |"]
    lines += [f"| `{f}` | {_pct(n, total)} | {_pct(inclusive[f], total)} |" for f, n in self_time.most_common(top)]
    lines += ["", f"## Top {top} functions by inclusive time, below the event loop and thread pool", "",
              "| function | inclusive | self |", "| --- | ---: | ---: |"]
    lines += [f"| `{f}` | {_pct(n, total)} | {_pct(self_time[f], total)} |" for f, n in below.most_common(top)]
    return "\n".join(lines) + "\n"


@dataclass
class _Node:
    name: str
    count: int = 0
    children: dict[str, _Node] = field(default_factory=dict)


COLORS = {name: color for (name, _), color in zip(AREAS, [
    "#e45756", "#f58518", "#ff9da6", "#eeca3b", "#72b7b2", "#54a24b", "#b279a2", "#9d755d", "#4c78a8",
    "#88d27a", "#bab0ac", "#a0cbe8", "#d8d8d8"], strict=True)}
ROW, WIDTH = 17, 1200


def svg(stacks: Counter[tuple[str, ...]], title: str) -> str:
    root = _Node("all")
    for frames, n in stacks.items():
        root.count += n
        node = root
        for f in frames:
            node = node.children.setdefault(f, _Node(f))
            node.count += n
    boxes: list[str] = []
    depth_max = 0

    def place(node: _Node, x: float, depth: int) -> None:
        nonlocal depth_max
        width = node.count / root.count * WIDTH if root.count else 0
        if width < 0.5:
            return
        depth_max = max(depth_max, depth)
        y = 30 + depth * ROW
        label = re.sub(r" \(.*\)$", "", node.name)
        color = COLORS.get(area(node.name), "#cccccc") if depth else "#999999"
        tip = html.escape(f"{node.name}: {node.count} samples, {100 * node.count / root.count:.1f} %")
        text = ""
        if width > 30:
            shown = html.escape(label[: int(width / 7)])
            text = f'<text x="{x + 3:.1f}" y="{y + 12}">{shown}</text>'
        boxes.append(f'<g><title>{tip}</title><rect x="{x:.1f}" y="{y}" width="{max(width - 0.5, 0.5):.1f}" '
                     f'height="{ROW - 1}" fill="{color}"/>{text}</g>')
        offset = x
        for child in sorted(node.children.values(), key=lambda c: c.name):
            place(child, offset, depth + 1)
            offset += child.count / root.count * WIDTH

    place(root, 0.0, 0)
    items = list(COLORS.items())
    legend_top = 30 + (depth_max + 1) * ROW + 14
    legend = "".join(
        f'<rect x="{10 + (i % 6) * 195}" y="{legend_top + (i // 6) * 18}" width="12" height="12" fill="{c}"/>'
        f'<text x="{26 + (i % 6) * 195}" y="{legend_top + (i // 6) * 18 + 10}">{html.escape(n)}</text>'
        for i, (n, c) in enumerate(items)
    )
    height = legend_top + ((len(items) + 5) // 6) * 18 + 8
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
            f'font-family="monospace" font-size="11"><rect width="100%" height="100%" fill="white"/>'
            f'<text x="10" y="18" font-size="14">{html.escape(title)}</text>{"".join(boxes)}{legend}</svg>\n')
