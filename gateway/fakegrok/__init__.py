"""A fake grok.com upstream for tests, the demo and benchmarks (see docs/protocol.md §15).

Behaviour is chosen by the sso token's prefix (`expired-`, `ratelimited-`, `banned-`,
`cfblocked-`, `flaky-`) and by `[fake:NAME=ARG]` markers in the chat prompt; see
`scenarios.py` for the markers.
"""

from .server import FakeGrok
from .state import RecordedRequest, TokenStats

__all__ = ["FakeGrok", "RecordedRequest", "TokenStats"]
