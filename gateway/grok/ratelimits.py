"""Grok's quota counters: `POST /rest/rate-limits` (protocol §8.1), read into a `Reading`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.grok.errors import UpstreamProtocolError

RATE_LIMITS_PATH = "/rest/rate-limits"


class QuotaParseError(UpstreamProtocolError, ValueError):
    """A rate-limits answer without the counters of either known shape."""


@dataclass(frozen=True, slots=True)
class Reading:
    """One mode's counters: `total` and `window` are None when Grok did not say."""

    remaining: int
    total: int | None
    window: int | None


def parse_rate_limits(body: Any) -> Reading:
    """(remaining, total, window) from either shape of §8.1.

    Current: `remainingQueries` / `totalQueries` / `windowSizeSeconds`. Older:
    `remainingTokens` / `totalTokens`. The fake answers the union; the current
    fields win when both are there. A total of 0 or less means "unknown".
    """
    if not isinstance(body, dict):
        raise QuotaParseError("rate-limits answer is not a JSON object")
    remaining = _first_count(body, "remainingQueries", "remainingTokens")
    if remaining is None:
        raise QuotaParseError("rate-limits answer has neither remainingQueries nor remainingTokens")
    total = _first_count(body, "totalQueries", "totalTokens")
    window = _first_count(body, "windowSizeSeconds")
    return Reading(
        remaining=max(remaining, 0),
        total=total if total and total > 0 else None,
        window=window if window and window > 0 else None,
    )


def _first_count(body: dict, *names: str) -> int | None:
    for name in names:
        value = body.get(name)
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int | float):
            return int(value)
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value.strip())
    return None
