"""Async work started from sync admin code: a coroutine on an event loop of its own, in a thread.

    run_isolated(factory)   run `factory()` to completion and return its result
                            (an admin action on a handful of accounts waits for it)
    spawn(factory, name)    the same without waiting (a bulk task, "run job now")
    wait_idle(timeout)      join the spawned threads (tests)

Why a thread of its own: under ASGI an admin view runs in a thread asgiref binds
to the request. A loop started there whose code calls the async ORM would send
that work back to the very thread that is blocked waiting for the loop. A new
thread carries no such context; its ORM calls go to asgiref's shared sync thread.

At the end the loop's curl session is closed and the database connections the
work used are released, so nothing is left open when the loop is gone.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

from asgiref.sync import sync_to_async
from django.db import close_old_connections, connections

from gateway.grok import close_sessions

logger = logging.getLogger(__name__)
T = TypeVar("T")

_threads: set[threading.Thread] = set()
_guard = threading.Lock()


async def _isolated(factory: Callable[[], Awaitable[T]]) -> T:
    try:
        return await factory()
    finally:
        try:
            await close_sessions()
        except Exception:
            logger.warning("could not close the curl session of a background loop", exc_info=True)
        await sync_to_async(close_old_connections, thread_sensitive=True)()


def run_isolated(factory: Callable[[], Awaitable[T]], *, name: str = "admin-work") -> T:
    """Run the coroutine `factory()` makes on a new loop in a new thread; wait for it and return its result."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(_isolated(factory))
        except BaseException as exc:
            box["error"] = exc
        finally:
            connections.close_all()

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def spawn(factory: Callable[[], Awaitable[object]], *, name: str) -> threading.Thread:
    """Start `factory()` on a new loop in a daemon thread and return at once; failures are logged."""

    def target() -> None:
        try:
            asyncio.run(_isolated(factory))
        except Exception:
            logger.exception("background work %s failed", name)
        finally:
            connections.close_all()
            with _guard:
                _threads.discard(threading.current_thread())

    thread = threading.Thread(target=target, name=name, daemon=True)
    with _guard:
        _threads.add(thread)
    thread.start()
    return thread


def wait_idle(timeout: float | None = None) -> bool:
    """Join every thread `spawn` started; False if one is still running after `timeout` seconds."""
    with _guard:
        threads = list(_threads)
    for thread in threads:
        thread.join(timeout)
    return not any(thread.is_alive() for thread in threads)
