"""One chat completion: lease an account, ask Grok, retry before the first byte, stream pieces.

Retry policy (only before anything has gone to the client):
401 / invalid credentials -> the account is expired, try another; 403 blocked-user
-> banned, try another; 429 / usage limit -> cool the account down, try another;
5xx, network errors, an empty answer -> try another; Cloudflare / anti-bot 403 ->
502 at once (another account on the same IP fares no better); our own timeouts
-> 504. At most `max_attempts` attempts.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

from django.conf import settings

from gateway.dialect import Budget, ChatAsk, Dialect, RestDialect
from gateway.errors import GatewayTimeout, OpenAIError, RateLimited, ServiceUnavailable, UpstreamFailed
from gateway.frames import Event, StreamError
from gateway.models import ModelSpec
from gateway.stream import Piece, Renderer
from gateway.upstream import (
    ClientConfig,
    GrokClient,
    UpstreamAuthError,
    UpstreamBanned,
    UpstreamBlocked,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
    classify_inband_error,
)
from pools import selection
from pools.selection import Lease, Outcome
from pools.settings import Runtime, aget_runtime

logger = logging.getLogger(__name__)

_END: list[Event] = []  # sentinel: the upstream stream ended


class _Timed:
    """Pulls frames under the three budgets; returns None as a heartbeat tick while waiting."""

    def __init__(self, frames: AsyncIterator[list[Event]], budget: Budget, started: float) -> None:
        self._frames = frames
        self._budget = budget
        self._loop = asyncio.get_running_loop()
        self._total_deadline = started + budget.total
        self._deadline = started + budget.first_byte
        self._phase = "first_byte"
        self._pending: asyncio.Task | None = None

    async def _pull(self) -> list[Event]:
        try:
            return await anext(self._frames)
        except StopAsyncIteration:
            return _END

    async def next(self, tick: float | None = None) -> list[Event] | None:
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._pull())
        deadline = min(self._deadline, self._total_deadline)
        wait = deadline - self._loop.time()
        if tick is not None:
            wait = min(wait, tick)
        done, _ = await asyncio.wait((self._pending,), timeout=max(wait, 0))
        if not done:
            if self._loop.time() >= deadline:
                raise self._timeout()
            return None
        task, self._pending = self._pending, None
        events = task.result()
        self._deadline = self._loop.time() + self._budget.idle
        self._phase = "idle"
        return events

    def _timeout(self) -> UpstreamTimeout:
        if self._loop.time() >= self._total_deadline:
            return UpstreamTimeout(f"Grok's answer took longer than {self._budget.total:g} s", phase="total")
        if self._phase == "first_byte":
            return UpstreamTimeout(f"Grok sent nothing for {self._budget.first_byte:g} s", phase="first_byte")
        return UpstreamTimeout(f"Grok went silent for {self._budget.idle:g} s mid-answer", phase="idle")

    async def aclose(self) -> None:
        if self._pending is not None and not self._pending.done():
            self._pending.cancel()
            await asyncio.gather(self._pending, return_exceptions=True)
        self._pending = None


class ChatSession:
    """One upstream answer on one leased account. Open with `start()`, read `pieces()`, always `close()`."""

    def __init__(self, lease: Lease, dialect: Dialect, ask: ChatAsk, runtime: Runtime) -> None:
        self.lease = lease
        self.ask = ask
        self.runtime = runtime
        self.renderer = Renderer(
            thinking_format=runtime.thinking_format,
            show_thinking=runtime.show_thinking,
            show_search=runtime.show_search_results,
            assets_url=settings.GROK_ASSETS_URL,
        )
        self._dialect = dialect
        self._stack = AsyncExitStack()
        self._timed: _Timed | None = None
        self._buffer: list[Piece] = []
        self._outcome = Outcome.CANCELLED
        self._reason = ""
        self._retry_after: float | None = None
        self._closed = False

    async def start(self) -> None:
        """Open the upstream stream and read until the first piece the client would see.

        Anything that fails here fails before the first byte, so the caller may retry.
        """
        budget = Budget(self.runtime.first_byte_timeout, self.runtime.idle_timeout, self.runtime.total_timeout)
        started = asyncio.get_running_loop().time()
        frames = await self._stack.enter_async_context(self._dialect.open(self.lease.token, self.ask, budget))
        self._timed = _Timed(frames, budget, started)
        while not self._buffer:
            events = await self._timed.next()
            if events is _END:
                raise UpstreamUnavailable("Grok returned an empty answer")
            self._take(events or (), self._buffer)

    def _take(self, events: list[Event] | tuple, into: list[Piece]) -> None:
        for event in events:
            if isinstance(event, StreamError):
                raise classify_inband_error(event.message, event.code)
            piece = self.renderer.render(event)
            if piece:
                into.append(piece)

    async def pieces(self) -> AsyncIterator[Piece | None]:
        """The answer's pieces; None means "still waiting" (send a heartbeat). Raises `OpenAIError`."""
        assert self._timed is not None, "start() first"
        tick = self.runtime.heartbeat_interval or None
        try:
            buffered, self._buffer = self._buffer, []
            for piece in buffered:
                yield piece
            while True:
                events = await self._timed.next(tick)
                if events is None:
                    yield None
                    continue
                if events is _END:
                    break
                out: list[Piece] = []
                self._take(events, out)
                for piece in out:
                    yield piece
            tail = self.renderer.close()
            if tail:
                yield tail
            self._outcome = Outcome.SUCCESS
        except UpstreamError as exc:
            self.fail(exc)
            logger.warning("upstream failed mid-answer on account %s: %s", self.lease.masked_token, exc)
            raise to_openai(exc, None) from exc

    def usage(self) -> dict:
        return self.renderer.usage(self.ask.prompt)

    def fail(self, exc: UpstreamError) -> None:
        self._outcome, self._retry_after = outcome_for(exc)
        self._reason = str(exc)

    async def close(self) -> None:
        """Stop the upstream transfer and release the lease; safe to call twice, survives cancellation."""
        if self._closed:
            return
        self._closed = True
        await asyncio.shield(self._close())

    async def _close(self) -> None:
        try:
            if self._timed is not None:
                await self._timed.aclose()
            await self._stack.aclose()
        finally:
            await self.lease.release(self._outcome, reason=self._reason, retry_after=self._retry_after)


def outcome_for(exc: UpstreamError) -> tuple[Outcome, float | None]:
    if isinstance(exc, UpstreamBanned):
        return Outcome.BANNED, None
    if isinstance(exc, UpstreamAuthError):
        return Outcome.EXPIRED, None
    if isinstance(exc, UpstreamRateLimited):
        return Outcome.RATE_LIMITED, exc.retry_after
    if isinstance(exc, UpstreamBlocked):
        return Outcome.CANCELLED, None  # the IP was refused, not the account
    return Outcome.FAILURE, None


def _retryable(exc: UpstreamError) -> bool:
    if isinstance(exc, UpstreamTimeout | UpstreamBlocked):
        return False
    return isinstance(exc, UpstreamAuthError | UpstreamRateLimited | UpstreamUnavailable)


def to_openai(exc: UpstreamError, model: ModelSpec | None, attempts: int = 1) -> OpenAIError:
    """The client-facing error for an upstream failure that we are not going to retry."""
    if isinstance(exc, UpstreamTimeout):
        return GatewayTimeout(f"Upstream timeout: {exc}. Raise the {exc.phase} timeout if answers are slow.")
    if isinstance(exc, UpstreamBlocked):
        return UpstreamFailed(
            f"Grok refused the request from this gateway ({exc}). Route it through a proxy (PROXY_URL) "
            "or set CF_CLEARANCE to a cf_clearance cookie solved from the same IP and user agent.",
            code="upstream_blocked",
        )
    if isinstance(exc, UpstreamRateLimited):
        return RateLimited(f"Every account tried is rate-limited by Grok: {exc}", retry_after=exc.retry_after or 60)
    if isinstance(exc, UpstreamAuthError):
        name = model.id if model else "this model"
        return ServiceUnavailable(
            f"No usable account for {name}: Grok rejected {attempts} account(s) ({exc}). "
            "Import fresh sso tokens with `manage.py import_tokens`."
        )
    if isinstance(exc, UpstreamUnavailable):
        return UpstreamFailed(f"Grok is unavailable after {attempts} attempt(s): {exc}", code="upstream_unavailable")
    return UpstreamFailed(f"Grok answered something this gateway cannot read: {exc}", code="upstream_protocol_error")


def client_config(runtime: Runtime) -> ClientConfig:
    return ClientConfig(
        base_url=settings.GROK_BASE_URL,
        assets_url=settings.GROK_ASSETS_URL,
        impersonate=runtime.impersonate,
        user_agent=runtime.user_agent,
        statsig_id=runtime.statsig_constant,
        cf_clearance=runtime.cf_clearance,
        proxy_url=runtime.proxy_url if runtime.proxy_mode == "static" else "",
        max_clients=runtime.max_upstream_streams,
    )


async def open_chat(model: ModelSpec, ask: ChatAsk) -> ChatSession:
    """A started `ChatSession`, after as many attempts as the retry policy allows. Raises `OpenAIError`."""
    runtime = await aget_runtime()
    dialect = RestDialect(GrokClient(client_config(runtime)))
    tried: set[int] = set()
    last: UpstreamError | None = None
    for attempt in range(1, max(1, runtime.max_attempts) + 1):
        try:
            lease = await selection.lease(model, exclude=tried)
        except selection.AllAccountsCooling as exc:
            raise RateLimited(
                f"Every account that can serve {model.id} is rate-limited; retry in {exc.retry_after} s.",
                retry_after=exc.retry_after,
            ) from exc
        except selection.NoEligibleAccount as exc:
            if last is not None:
                raise to_openai(last, model, len(tried)) from last
            raise ServiceUnavailable(str(exc)) from exc
        tried.add(lease.account_id)
        session = ChatSession(lease, dialect, ask, runtime)
        try:
            await session.start()
            return session
        except UpstreamError as exc:
            session.fail(exc)
            await session.close()
            last = exc
            logger.warning(
                "attempt %d/%d for %s failed on account %s: %s",
                attempt, runtime.max_attempts, model.id, lease.masked_token, exc,
            )
            if not _retryable(exc):
                raise to_openai(exc, model, len(tried)) from exc
            await asyncio.sleep(random.uniform(0.05, 0.2) * attempt)  # jitter: don't stampede the next account
        except BaseException:
            await session.close()
            raise
    assert last is not None
    raise to_openai(last, model, len(tried)) from last
