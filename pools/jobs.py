"""Periodic jobs: registered here, run in every worker, once per interval cluster-wide.

Modules register their jobs with `@periodic(name, interval)`; `interval` reads the
runtime settings so an operator can change it in the admin. The runner (started
lazily on a worker's first request) takes a lock per job before running it, so
each job runs once per interval across all workers, and records the run in
`pools.models.JobRun` for the admin.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pools.settings import Runtime

JobFunc = Callable[[], Awaitable[str | None]]  # returns a short message for the admin


@dataclass(frozen=True)
class Job:
    name: str
    interval: Callable[[Runtime], float]  # seconds between runs; <= 0 disables the job
    func: JobFunc


JOBS: dict[str, Job] = {}


def periodic(name: str, interval: Callable[[Runtime], float]) -> Callable[[JobFunc], JobFunc]:
    def register(func: JobFunc) -> JobFunc:
        JOBS[name] = Job(name, interval, func)
        return func

    return register
