"""Run sizes: `quick` (the default, under 2 minutes), `full` (everything) and `smoke` (the test's)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Profile:
    name: str
    modes: tuple[str, ...]  # embedded and/or scaleout
    servers: tuple[str, ...]  # ASGI servers to measure (those not installed are skipped)
    concurrency: tuple[int, ...]  # open streams per load level
    duration: float  # seconds each level issues requests
    max_requests: int  # cap per level (all processes together)
    deadline: float  # hard cap per level: what is still open is cut and counted
    pace_count: int  # answer tokens per response
    pace_ms: float  # milliseconds between two tokens
    hold_streams: int  # streams held open for the memory figure
    hold_pace_ms: float  # pace of the held streams (long enough to stay open)
    lease_seconds: float
    lease_concurrency: tuple[int, ...]
    tokens: int = 50  # accounts imported (and tokens the direct client cycles through)
    nonstream: bool = True

    @property
    def arrivals(self) -> tuple[tuple[str, float], ...]:
        """Streaming kinds and their stagger: all at once, then spread over one paced answer's length."""
        return (("stream", 0.0), ("stream_staggered", self.pace_count * self.pace_ms / 1000))

    def level_requests(self, concurrency: int) -> int:
        return max(self.max_requests, concurrency * 3)


PROFILES = {
    "quick": Profile(
        name="quick", modes=("embedded",), servers=("uvicorn",), concurrency=(1, 10, 100),
        duration=3.0, max_requests=2000, deadline=25.0, pace_count=20, pace_ms=20,
        hold_streams=100, hold_pace_ms=500, lease_seconds=1.5, lease_concurrency=(1, 16),
    ),
    "full": Profile(
        name="full", modes=("embedded", "scaleout"), servers=("daphne", "uvicorn", "granian"),
        concurrency=(1, 10, 100, 500), duration=10.0, max_requests=20000, deadline=60.0,
        pace_count=20, pace_ms=20, hold_streams=500, hold_pace_ms=500, lease_seconds=3.0,
        lease_concurrency=(1, 16, 64),
    ),
    "smoke": Profile(
        name="smoke", modes=("embedded",), servers=("uvicorn",), concurrency=(1, 2), duration=0.3,
        max_requests=3, deadline=20.0, pace_count=3, pace_ms=5, hold_streams=2, hold_pace_ms=200,
        lease_seconds=0.2, lease_concurrency=(1,), tokens=3,
    ),
}


def get(name: str, **overrides: Any) -> Profile:
    profile = PROFILES[name]
    changes = {k: v for k, v in overrides.items() if v is not None}
    return replace(profile, **changes) if changes else profile
