"""What the fake remembers: request records, stream stats, quotas, assets, conversations.

The server's event loop writes this while tests read it from their own thread, so
every access takes one threading.Lock and readers get copies, never live objects.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import uuid
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

DEFAULT_TOTAL = 140  # one number for every mode keeps tier inference out of the fake
DEFAULT_WINDOW = 7200
MAX_RECORDS = 20_000  # benchmarks send far more; keep memory flat


def user_id(token: str) -> str:
    """A stable account uuid for a token, so asset paths can be predicted in tests."""
    return str(uuid.UUID(bytes=hashlib.sha256(token.encode()).digest()[:16]))


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-case names
    raw_body: bytes
    json: Any  # the parsed body, or None when it is not JSON
    token: str | None  # the sso cookie value
    status: int | None = None  # filled in once the fake has answered


@dataclass
class TokenStats:
    in_flight: int = 0
    max_in_flight: int = 0
    started: int = 0
    completed: int = 0
    disconnected: int = 0
    cut: int = 0  # streams the fake itself dropped ([fake:cut])


@dataclass
class Quota:
    remaining: int
    total: int
    window: int


@dataclass(frozen=True)
class Asset:
    asset_id: str
    path: str  # relative, as grok returns it: users/<uid>/...
    owner: str  # the token that created it
    content_type: str
    body: bytes
    name: str


class State:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._epoch = 0
        self._records: deque[RecordedRequest] = deque(maxlen=MAX_RECORDS)
        self._request_counts: Counter[str] = Counter()
        self._stats: dict[str, TokenStats] = {}
        self._quotas: dict[tuple[str, str], Quota] = {}
        self._assets: dict[str, Asset] = {}
        self._conversations: dict[str, str] = {}

    def reset(self) -> None:
        """Forget records, stats and quotas. Assets and conversations stay downloadable."""
        with self._lock:
            self._epoch += 1
            self._records.clear()
            self._request_counts.clear()
            self._stats.clear()
            self._quotas.clear()

    # -- requests -------------------------------------------------------------------
    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._records.append(request)
            self._request_counts[request.token or ""] += 1

    def set_status(self, request: RecordedRequest, status: int) -> None:
        with self._lock:
            request.status = status

    def requests(self, token: str | None = None) -> list[RecordedRequest]:
        with self._lock:
            found = [r for r in self._records if token is None or r.token == token]
            return [dataclasses.replace(r, headers=dict(r.headers)) for r in found]

    # -- streams --------------------------------------------------------------------
    def stream_opened(self, token: str) -> int:
        """Count a new stream; returns the epoch to hand back to `stream_closed`."""
        with self._lock:
            stats = self._stats.setdefault(token, TokenStats())
            stats.started += 1
            stats.in_flight += 1
            stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
            return self._epoch

    def stream_closed(self, token: str, outcome: str, epoch: int) -> None:
        with self._lock:
            if epoch != self._epoch:
                return  # opened before a reset(): its counts were forgotten with it
            stats = self._stats.setdefault(token, TokenStats())
            stats.in_flight -= 1
            setattr(stats, outcome, getattr(stats, outcome) + 1)

    def stats(self, token: str) -> TokenStats:
        with self._lock:
            return dataclasses.replace(self._stats.get(token) or TokenStats())

    def in_flight(self) -> int:
        with self._lock:
            return sum(s.in_flight for s in self._stats.values())

    def snapshot(self) -> dict[str, dict[str, int]]:
        """Everything /_fake/stats reports, keyed by token ("" for requests without one)."""
        with self._lock:
            tokens = set(self._stats) | set(self._request_counts)
            return {
                token: {
                    **dataclasses.asdict(self._stats.get(token) or TokenStats()),
                    "requests": self._request_counts[token],
                }
                for token in sorted(tokens)
            }

    # -- quotas ---------------------------------------------------------------------
    def quota(self, token: str, mode: str) -> Quota:
        with self._lock:
            return dataclasses.replace(self._quota(token, mode))

    def _quota(self, token: str, mode: str) -> Quota:
        return self._quotas.setdefault((token, mode), Quota(DEFAULT_TOTAL, DEFAULT_TOTAL, DEFAULT_WINDOW))

    def set_quota(self, token: str, mode: str, remaining: int, total: int | None, window: int) -> None:
        with self._lock:
            current = self._quota(token, mode)
            self._quotas[(token, mode)] = Quota(remaining, current.total if total is None else total, window)

    def consume(self, token: str, mode: str, cost: int) -> Quota | None:
        """Take `cost` from the (token, mode) counter; None (and nothing taken) if too few remain."""
        with self._lock:
            quota = self._quota(token, mode)
            if quota.remaining < cost:
                return None
            quota.remaining -= cost
            return dataclasses.replace(quota)

    # -- assets and conversations --------------------------------------------------
    def add_asset(self, asset: Asset) -> None:
        with self._lock:
            self._assets[asset.path] = asset

    def asset(self, path: str) -> Asset | None:
        with self._lock:
            return self._assets.get(path)

    def assets_of(self, token: str) -> list[Asset]:
        with self._lock:
            return [a for a in self._assets.values() if a.owner == token]

    def delete_asset(self, token: str, asset_id: str) -> bool:
        with self._lock:
            doomed = [p for p, a in self._assets.items() if a.asset_id == asset_id and a.owner == token]
            for path in doomed:
                del self._assets[path]
            return bool(doomed)

    def add_conversation(self, conversation_id: str, token: str) -> None:
        with self._lock:
            self._conversations[conversation_id] = token

    def conversation_owner(self, conversation_id: str) -> str | None:
        with self._lock:
            return self._conversations.get(conversation_id)
