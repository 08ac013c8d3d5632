"""One chat completion: lease an account, pick its proxy, ask Grok, retry before the first byte, stream.

`open_chat` runs the attempts; what each failure means and what the next attempt
does about it is the policy in `gateway.retry`. Every attempt logs one line
(`gateway.retry.log_attempt`) with the masked token and proxy.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

from django.conf import settings

from gateway.errors import RateLimited, ServiceUnavailable
from gateway.grok import (
    Budget,
    ChatAsk,
    Dialect,
    EventReader,
    GrokClient,
    RestDialect,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    classify_inband_error,
)
from gateway.grok.frames import Event, StreamError
from gateway.models import ModelSpec
from gateway.retry import Step, backoff_delay, log_attempt, next_step, outcome_for, to_openai
from gateway.stream import Piece, Renderer
from pools import proxies, quotas, selection
from pools.proxies import ProxyChoice, client_config
from pools.selection import Lease, Outcome
from pools.settings import Runtime, aget_runtime

__all__ = ["ChatSession", "open_chat"]

logger = logging.getLogger(__name__)

class _Timed:
    """Reads events under the three budgets; None is a heartbeat tick while waiting, [] the end."""

    __slots__ = ("_budget", "_deadline", "_events", "_loop", "_phase", "_total_deadline")

    def __init__(self, events: EventReader, budget: Budget, started: float) -> None:
        self._events = events
        self._budget = budget
        self._loop = asyncio.get_running_loop()
        self._total_deadline = started + budget.total
        self._deadline = started + budget.first_byte
        self._phase = "first_byte"

    async def next(self, tick: float | None = None) -> list[Event] | None:
        deadline = min(self._deadline, self._total_deadline)
        wake = deadline if tick is None else min(deadline, self._loop.time() + tick)
        events = await self._events.read(wake)
        now = self._loop.time()
        if events is None:
            if now >= deadline:
                raise self._timeout()
            return None
        self._deadline = now + self._budget.idle
        self._phase = "idle"
        return events

    def _timeout(self) -> UpstreamTimeout:
        if self._loop.time() >= self._total_deadline:
            return UpstreamTimeout(f"Grok's answer took longer than {self._budget.total:g} s", phase="total")
        if self._phase == "first_byte":
            return UpstreamTimeout(f"Grok sent nothing for {self._budget.first_byte:g} s", phase="first_byte")
        return UpstreamTimeout(f"Grok went silent for {self._budget.idle:g} s mid-answer", phase="idle")


class ChatSession:
    """One upstream answer on one leased account. Open with `start()`, read `batches()`, always `close()`."""

    def __init__(self, lease: Lease, dialect: Dialect, ask: ChatAsk, runtime: Runtime, *,
                 thinking_format: str | None = None) -> None:
        self.lease = lease
        self.ask = ask
        self.runtime = runtime
        # The request's own choice (`X-Thinking-Format`) wins over the runtime's; "none" hides the thinking.
        self.renderer = Renderer(
            thinking_format=thinking_format or runtime.thinking_format,
            show_thinking=runtime.show_thinking and thinking_format != "none",
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
        self._deferred: UpstreamError | None = None  # an in-band error that arrived behind text

    async def start(self) -> None:
        """Open the upstream stream and read until the first piece the client would see.

        Anything that fails here fails before the first byte, so the caller may retry.
        """
        budget = Budget(self.runtime.first_byte_timeout, self.runtime.idle_timeout, self.runtime.total_timeout)
        started = asyncio.get_running_loop().time()
        events = await self._stack.enter_async_context(self._dialect.open(self.lease.token, self.ask, budget))
        self._timed = _Timed(events, budget, started)
        while not self._buffer:
            batch = await self._timed.next()
            if batch is not None and not batch:
                raise UpstreamUnavailable("Grok returned an empty answer")
            self._take(batch or (), self._buffer)

    def _take(self, events: list[Event] | tuple, into: list[Piece]) -> None:
        for event in events:
            if isinstance(event, StreamError):
                error = classify_inband_error(event.message, event.code)
                if into:  # what arrived before the error is delivered first
                    self._deferred = error
                    return
                raise error
            piece = self.renderer.render(event)
            if piece:
                into.append(piece)

    async def batches(self) -> AsyncIterator[list[Piece] | None]:
        """The answer's pieces, as many at a time as arrived together; None means "still waiting"
        (send a heartbeat). Raises `OpenAIError`."""
        assert self._timed is not None, "start() first"
        tick = self.runtime.heartbeat_interval or None
        try:
            buffered, self._buffer = self._buffer, []
            yield buffered
            while True:
                if self._deferred is not None:
                    raise self._deferred
                events = await self._timed.next(tick)
                if events is None:
                    yield None
                    continue
                if not events:
                    break
                out: list[Piece] = []
                self._take(events, out)
                if out:
                    yield out
            tail = self.renderer.close()
            if tail:
                yield [tail]
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
            await self._stack.aclose()
        finally:
            await self.lease.release(self._outcome, reason=self._reason, retry_after=self._retry_after)
            if self._outcome is Outcome.RATE_LIMITED and not self._retry_after:
                # The 429 named no window: ask Grok when this mode resets (in the background).
                quotas.learn_reset_soon(self.lease.account_id, self.lease.mode)


async def open_chat(model: ModelSpec, prompt: str, *, temperature: float | None = None,
                    top_p: float | None = None, thinking_format: str | None = None) -> ChatSession:
    """A started `ChatSession` answering `prompt`, after as many attempts as the retry policy allows.

    `thinking_format` (`reasoning_content`, `think` or `none`) overrides the runtime setting for
    this answer; None keeps it. Raises `OpenAIError`."""
    ask = ChatAsk(mode=model.mode, prompt=prompt, temperature=temperature, top_p=top_p)
    runtime = await aget_runtime()
    limit = max(1, runtime.max_attempts)
    tried: set[int] = set()  # accounts that failed this request
    refused: set[int] = set()  # proxies that were refused during this request
    last: UpstreamError | None = None
    transient = 0
    for attempt in range(1, limit + 1):
        lease = await _lease(model, tried, last)
        choice = await _route(lease, refused, last)
        dialect = RestDialect(GrokClient(client_config(runtime, choice)))
        session = ChatSession(lease, dialect, ask, runtime, thinking_format=thinking_format)
        try:
            await session.start()
        except UpstreamError as exc:
            session.fail(exc)
            await session.close()
            last = exc
            step = next_step(exc, runtime.retry_status_codes, rotatable=bool(choice and choice.proxy_id))
            log_attempt(attempt, limit, model.id, lease, choice, step, exc)
            if step is Step.NEXT_PROXY:
                assert choice is not None and choice.proxy_id is not None
                await proxies.report_blocked(choice, str(exc))
                refused.add(choice.proxy_id)
            elif step is Step.GIVE_UP:
                break
            else:
                tried.add(lease.account_id)
            if step is Step.BACKOFF and attempt < limit:
                transient += 1
                await asyncio.sleep(backoff_delay(transient))  # jitter: don't stampede the next account
            continue
        except BaseException:
            await session.close()
            raise
        log_attempt(attempt, limit, model.id, lease, choice, None)
        await proxies.report_ok(choice)
        return session
    assert last is not None
    raise to_openai(last, model, attempt) from last


async def _lease(model: ModelSpec, tried: set[int], last: UpstreamError | None) -> Lease:
    try:
        return await selection.lease(model, exclude=tried)
    except selection.AllAccountsCooling as exc:
        raise RateLimited(
            f"Every account that can serve {model.id} is rate-limited; retry in {exc.retry_after} s.",
            retry_after=exc.retry_after,
        ) from exc
    except selection.PoolBusy as exc:
        raise RateLimited(
            f"Every account that can serve {model.id} is busy with other requests; retry in {exc.retry_after} s.",
            retry_after=exc.retry_after,
        ) from exc
    except selection.NoEligibleAccount as exc:
        if last is not None:
            raise to_openai(last, model, len(tried)) from last
        raise ServiceUnavailable(str(exc)) from exc


async def _route(lease: Lease, refused: set[int], last: UpstreamError | None) -> ProxyChoice | None:
    """The proxy for this attempt; without one, the lease goes back unused."""
    try:
        return await proxies.proxy_for(lease.account_id, exclude=refused)
    except proxies.NoProxyAvailable as exc:
        await lease.release(Outcome.CANCELLED)
        if refused and last is not None:
            raise to_openai(last, None) from last  # the proxies we had were refused: name the fix
        raise ServiceUnavailable(f"No proxy to reach Grok through: {exc}", code="no_proxy_available") from exc
    except BaseException:
        await lease.release(Outcome.CANCELLED)
        raise
