"""CPU seconds and resident memory of a process and its descendants, from /proc (Linux only)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Sample:
    pids: tuple[int, ...]
    cpu: float  # user + system seconds, summed over `pids`
    rss: int  # bytes, summed over `pids`
    threads: int  # OS threads, summed over `pids`


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def tree(root: int) -> list[int]:
    """`root` and every live descendant (the server's workers, a supervisor's children)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        if _stat(pid) is not None:
            found.append(pid)
            todo.extend(children.get(pid, []))
    return found


def started(pid: int) -> int | None:
    """The process's start time in ticks since boot: with the pid, it names one process for good."""
    fields = _stat(pid)
    return int(fields[19]) if fields is not None else None


def cpu_seconds(pid: int) -> float:
    fields = _stat(pid)
    if fields is None:
        return 0.0
    # utime and stime are fields 14 and 15 of stat(5): indexes 11 and 12 after the name.
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_bytes(pid: int) -> int:
    try:
        resident = Path(f"/proc/{pid}/statm").read_text().split()[1]
    except (OSError, IndexError):
        return 0
    return int(resident) * PAGE


def threads(pid: int) -> int:
    fields = _stat(pid)
    return int(fields[17]) if fields is not None else 0  # num_threads, field 20 of stat(5)


def sample(pids: list[int] | tuple[int, ...]) -> Sample:
    return Sample(tuple(pids), sum(cpu_seconds(p) for p in pids), sum(rss_bytes(p) for p in pids),
                  sum(threads(p) for p in pids))


def wait_quiet(pids: list[int], *, idle_share: float = 0.05,
               window: float = 0.5, timeout: float = 30.0, still_busy: Callable[[], bool] | None = None) -> float:
    """Wait until `pids` use less than `idle_share` of a core over `window` s (and `still_busy()` is
    false): the previous phase's streams are released and cleaned up. Returns the seconds waited."""
    start = time.monotonic()
    last = sample(pids).cpu
    while time.monotonic() - start < timeout:
        time.sleep(window)
        now = sample(pids).cpu
        if now - last < idle_share * window and not (still_busy and still_busy()):
            break
        last = now
    return round(time.monotonic() - start, 2)


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []
