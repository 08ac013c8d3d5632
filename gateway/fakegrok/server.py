"""`FakeGrok`: the fake upstream's lifetime (on a loop or in its own thread) and the
test-facing view of its state."""

from __future__ import annotations

import asyncio
import threading
import time

from .http import HttpServer
from .routes import Routes
from .state import DEFAULT_WINDOW, RecordedRequest, State, TokenStats


class FakeGrok:
    """A fake grok.com (and assets host) on a real loopback socket.

    `start()`/`stop()` run it on the caller's event loop. `start_in_thread()` runs it on
    a private loop in a daemon thread, which suits pytest session fixtures whose tests
    each bring their own loop. State readers are safe from any thread.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._state = State()
        self._http = HttpServer(Routes(self._state))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def connections(self) -> int:
        """TCP connections accepted so far; a client that keeps connections alive adds few."""
        return self._http.accepted

    # -- lifetime -----------------------------------------------------------------------
    async def start(self) -> None:
        self.port = await self._http.start(self.host, self.port)
        self._loop = asyncio.get_running_loop()

    async def stop(self) -> None:
        await self._http.stop()
        self._loop = None

    def start_in_thread(self, timeout: float = 10.0) -> None:
        """Start on a private loop in a daemon thread; return once the port is listening."""
        if self._thread is not None:
            raise RuntimeError("FakeGrok is already running in a thread")
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:  # handed to the starting thread, which re-raises it
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name=f"fakegrok-{id(self):x}", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise TimeoutError("fakegrok did not start listening in time")
        if failure:
            self._thread = None
            raise failure[0]

    def stop_thread(self, timeout: float = 10.0) -> None:
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        asyncio.run_coroutine_threadsafe(self.stop(), loop).result(timeout)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        self._thread = None

    # -- state for tests ------------------------------------------------------------------
    def reset(self) -> None:
        """Clear request records, stream stats and quota counters."""
        self._state.reset()

    def requests(self, token: str | None = None) -> list[RecordedRequest]:
        return self._state.requests(token)

    def stats(self, token: str) -> TokenStats:
        return self._state.stats(token)

    def set_quota(
        self, token: str, mode: str, remaining: int, total: int | None = None, window: int = DEFAULT_WINDOW
    ) -> None:
        """Set one (token, mode) counter; `total` None keeps the current total (140 by default)."""
        self._state.set_quota(token, mode, remaining, total, window)

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Block until no stream is in flight; False on timeout. Never call it on the fake's own loop."""
        deadline = time.monotonic() + timeout
        while self._state.in_flight():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    # Same signature as wait_idle on purpose, so the two are interchangeable.
    async def await_idle(self, timeout: float = 5.0) -> bool:  # noqa: ASYNC109
        """`wait_idle` for async callers, on any loop."""
        deadline = time.monotonic() + timeout
        while self._state.in_flight():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.005)
        return True
